"""Metrics: bytes per device by how much of their destination the sensor can see.

``phonehome_device_visibility_bytes_total{device, visibility, direction}``: the same bytes as
``phonehome_upload_bytes_total`` / ``phonehome_download_bytes_total`` of the flows that leave
the site, by visibility class (sensor.visibility: ``dns``, ``tls``, ``quic``, ``http``,
``ech``, ``relay``, ``none``) and ``direction`` ``up`` or ``down``. The exporter (sensor.metrics)
counts them where it counts the traffic table, as deltas of live flows and the rest of ended
ones, so a flow that changes class mid-way (its relay or name learned later) moves its later
bytes only. Cardinality: the exporter's device bound (`max_devices`, the rest
``device="other"``) times at most 7 classes times 2 directions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Protocol

from prometheus_client.core import CounterMetricFamily

from sensor.metrics.views import EnricherView
from sensor.model import Flow
from sensor.visibility import VISIBILITIES, classify

_CLASSES: Final = frozenset(VISIBILITIES)
NAME: Final = "phonehome_device_visibility_bytes"


class _Table(Protocol):
    """sensor.metrics.Table (a device-bounded counter table), as used here."""

    def add(
        self, device: str, labels: Sequence[str], amounts: Sequence[float], weight: float
    ) -> None: ...

    def snapshot(self) -> list[tuple[str, tuple[str, ...], tuple[float, ...]]]: ...


class VisibilityCounter:
    """Bytes per (device, visibility class), up and down. Not thread-safe: the exporter calls
    it under its lock."""

    def __init__(self, table: _Table) -> None:
        self.table = table
        """Two columns (up, down), one label (the class)."""

    def add(self, device: str, visibility: str | None, up: float, down: float) -> None:
        if visibility is None or (up <= 0 and down <= 0):
            return
        if visibility not in _CLASSES:
            visibility = "none"
        self.table.add(device, (visibility,), (max(up, 0), max(down, 0)), up + down)

    def snapshot(self) -> list[tuple[str, tuple[str, ...], tuple[float, ...]]]:
        return self.table.snapshot()


def family(
    rows: Sequence[tuple[str, tuple[str, ...], tuple[float, ...]]], names: Mapping[str, str]
) -> CounterMetricFamily:
    """The counter family of a `VisibilityCounter.snapshot`, devices labelled by `names`."""
    fam = CounterMetricFamily(
        NAME,
        "Bytes LAN devices exchanged with destinations beyond the site (IP length), by how "
        "much of the destination the sensor can see: named by dns/tls/quic/http, hidden by "
        "ech, through a relay, or none",
        labels=["device", "visibility", "direction"],
    )
    for dev, (vis,), (up, down) in rows:
        fam.add_metric([names[dev], vis, "up"], up)
        fam.add_metric([names[dev], vis, "down"], down)
    return fam


def visibility_of(enricher: EnricherView | None, flow: Flow) -> str | None:
    """A flow's class: the one enrichment wrote into an ended flow's record, else the
    enricher's verdict now (a live flow; None: it stays on the site), else the bare rule."""
    x = flow.extra
    if "country" in x:  # enriched by the stages
        v = x.get("visibility")
        return v if isinstance(v, str) else None
    if enricher is not None:
        return enricher.visibility(flow)
    return classify(flow)
