"""``devices``: the LAN devices with series of their own, and the ``device`` label they carry.

A device label is the owner's name, else the DHCP host name, else the MAC, with anything shaped
like an identifier masked (`sensor.metrics.cardinality.safe_label`); identifier values,
redacted values and keyed hashes are never read. ``vendor`` (the device's maker), ``model`` and
``kind`` are only on ``phonehome_device_info``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from prometheus_client.core import InfoMetricFamily

from sensor.metrics.cardinality import OTHER, UNKNOWN, safe_label
from sensor.metrics.families import Carries, Families, gauge, str_of
from sensor.metrics.views import EnricherView, PipelineView

if TYPE_CHECKING:
    from sensor.model import Device

MAX_NAME_HINTS: Final = 4096
"""Device names remembered from alerts (`Devices.note`)."""

Identity = tuple[str, str, str, str]
"""(vendor, model, kind, name); "" name when none is known."""


class Devices:
    """Who each device key (a MAC) is: identified from the pipeline's device table, afresh
    when what identification rests on changed, and named from what the alert stage knew."""

    def __init__(
        self,
        pipeline: Callable[[], PipelineView | None],
        enricher: Callable[[], EnricherView | None],
    ) -> None:
        self.pipeline = pipeline
        self.enricher = enricher
        self._names: OrderedDict[str, str] = OrderedDict()
        """MAC -> device name the alert stage knew (DeviceRef.name), for the device label."""
        self._identity: dict[str, tuple[tuple[object, ...], Identity]] = {}

    def note(self, mac: str | None, name: str | None) -> str:
        """The table key of an alert's device, noting the name it came with (called under
        the accounting's lock)."""
        if not mac:
            return ""
        if name:
            names = self._names
            names[mac] = name
            names.move_to_end(mac)
            if len(names) > MAX_NAME_HINTS:
                names.popitem(last=False)
        return mac

    def families(self, macs: set[str], carries: Carries) -> Families:
        """``phonehome_device_info`` for `macs` (the devices with series of their own), and
        the device table's size."""
        info = InfoMetricFamily(
            "phonehome_device",
            "A LAN device with series of its own: name, MAC and what it seems to be",
        )
        labels = self.labels(macs)
        for mac in sorted(macs):
            vendor, model, kind, _ = self.identity_of(mac)
            info.add_metric(
                [],
                {
                    "device": labels[mac],
                    "mac": mac,
                    "vendor": vendor,
                    "model": model,
                    "kind": kind,
                },
            )
        yield info
        pipeline = self.pipeline()
        if pipeline is not None:
            yield gauge(
                "phonehome_devices", "LAN devices the pipeline knows", len(pipeline.devices)
            )
            yield carries.counter(
                "pipeline",
                pipeline,
                "phonehome_devices_dropped",
                "Devices not tracked because the device table was full",
                pipeline.devices_dropped,
            )

    def labels(self, keys: Iterable[str]) -> dict[str, str]:
        """The `device` label per device key: owner name, else host name, else the MAC; names
        shared by several devices (or equal to "other"/"unknown") get the MAC appended."""
        base: dict[str, str] = {}
        for key in keys:
            if key == "":
                base[key] = UNKNOWN
            elif key == OTHER:
                base[key] = OTHER
            else:
                name = safe_label(self.identity_of(key)[3])
                base[key] = name or key
        count: dict[str, int] = {}
        for v in base.values():
            count[v] = count.get(v, 0) + 1
        out: dict[str, str] = {}
        for key, v in base.items():
            if key not in ("", OTHER) and v != key and (count[v] > 1 or v in (OTHER, UNKNOWN)):
                v = f"{v} ({key})"
            out[key] = v
        return out

    def identity_of(self, mac: str) -> Identity:
        """(vendor, model, kind, name) of a device, "" name when none is known."""
        pipeline = self.pipeline()
        dev = pipeline.devices.get(mac) if pipeline is not None else None
        hint = self._names.get(mac, "")
        if dev is None:
            return (UNKNOWN, UNKNOWN, UNKNOWN, hint)
        # Identified afresh when what it rests on changed: the enricher's `extra` can be
        # older than the device's last User-Agent.
        fp = (dev.hostname, dev.dhcp_vendor_class, dev.dhcp_params, len(dev.user_agents))
        cached = self._identity.get(mac)
        if cached is not None and cached[0] == fp:
            ident = cached[1]
        else:
            ident = self._identify(dev)
            if len(self._identity) >= 4 * MAX_NAME_HINTS:
                self._identity.clear()
            self._identity[mac] = (fp, ident)
        vendor, model, kind, name = ident
        return (
            safe_label(vendor) or UNKNOWN,
            safe_label(model) or UNKNOWN,
            safe_label(kind) or UNKNOWN,
            name or hint,
        )

    def _identify(self, dev: Device) -> Identity:
        enricher = self.enricher()
        identifier = enricher.devices if enricher is not None else None
        if identifier is not None:
            try:
                i = identifier.identify(dev)
                return (i.vendor or "", i.model or "", i.kind or "", i.name or "")
            except ValueError:
                pass
        x = dev.extra
        return (
            str_of(x.get("vendor")),
            str_of(x.get("model")),
            str_of(x.get("kind")),
            str_of(x.get("name")) or dev.hostname or "",
        )
