"""``traffic``, ``exposures`` and the delivered alerts: the counters the exporter keeps itself,
per device and destination, bounded (`sensor.metrics.cardinality.Table`).

Counters stay monotonic across flow eviction
--------------------------------------------
Bytes are attributed as deltas. Per live flow (by uid) the exporter remembers how many bytes it
has already counted; each scrape adds what the flow sent since to the flow's current label set,
and `Accounting.flow_ended` adds the remainder and forgets the flow. So a counter only ever
grows, a flow's bytes are counted exactly once even when its labels change mid-flow (its server
name learned later, say), and the state is bounded by the flow table plus the series bounds. A
scrape copies the flow table without a lock (one C-level `list()` under the GIL) and takes the
lock only in short slices to apply deltas, so the packet loop never waits for more than a
slice; flows that end while a scrape runs are settled by `flow_ended` alone.

Where a flow goes
-----------------
An ended flow carries its destination (the enrichment stage wrote it into `Flow.extra`). A
live flow has none yet: it is placed by the enrichment stage's own `destination`, from the one
destination cache the packet loop fills too. Nothing here outlives a scrape but the label text
made from a destination's fields; within a scrape, flows to one destination are placed once.
Destination families label the `party` (the organisation behind the server name; "unknown"
for servers reached without a name, whose hosting side the `provider` label and the alerts
still tell).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from prometheus_client.core import CounterMetricFamily

from sensor.alerts import RULES
from sensor.metrics.cardinality import OTHER, UNKNOWN, Table, safe_label, vocab
from sensor.metrics.collectors.devices import Devices
from sensor.metrics.families import Families, copy_items, copy_values, gauge
from sensor.metrics.settings import MetricsConfig
from sensor.metrics.views import EnricherView, PipelineView
from sensor.metrics.visibility import VisibilityCounter, visibility_of
from sensor.metrics.visibility import family as visibility_family
from sensor.model import ENCODINGS, IDENTIFIER_KINDS, Alert, Flow, Observation
from sensor.sinks import LogLimiter

if TYPE_CHECKING:
    from sensor.model import Destination

APPLY_SLICE: Final = 256
"""Live flows settled per hold of the lock during a scrape (about a millisecond)."""
MAX_LABEL_MEMO: Final = 4096
"""Destinations' label texts remembered (parties x providers x regions x countries seen)."""

_KINDS: Final = frozenset(IDENTIFIER_KINDS)
_ENCODINGS: Final = frozenset(ENCODINGS)
_RULES: Final = frozenset(RULES)

Labels = tuple[str, str, str, str]
"""(party, provider, cloud_region, dst_country)"""
_UNPLACED: Final[Labels] = (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)


class Accounting:
    """The exporter's own counters: bytes and flows per device and destination, identifier
    exposures, delivered alerts. Fed by hooks on the packet loop and, for live flows, at each
    scrape."""

    def __init__(
        self,
        cfg: MetricsConfig,
        pipeline: Callable[[], PipelineView | None],
        enricher: Callable[[], EnricherView | None],
        devices: Devices,
        limiter: LogLimiter,
    ) -> None:
        self.pipeline = pipeline
        self.enricher = enricher
        self.devices = devices
        self.limiter = limiter
        self.lock = threading.Lock()
        """Guards the tables, live-flow state and the device names (short holds)."""
        self.traffic = Table(
            3,
            (cfg.top_vendors, None, None, cfg.top_countries),
            cfg.max_devices,
            cfg.max_series_per_device,
        )
        """(party, provider, cloud_region, dst_country) -> [bytes up, bytes down, flows]."""
        self.exposures = Table(
            1,
            (None, None, cfg.top_countries, cfg.top_vendors),
            cfg.max_devices,
            cfg.max_series_per_device,
        )
        """(identifier, encoding, dst_country, party) -> [exposures]."""
        self.alerts = Table(1, (None, None), cfg.max_devices, cfg.max_series_per_device)
        """(rule, severity) -> [alerts delivered]."""
        self.visible = Table(2, (None,), cfg.max_devices, cfg.max_series_per_device)
        """(visibility class) -> [bytes up, bytes down] (sensor.metrics.visibility)."""
        self.visibility = VisibilityCounter(self.visible)
        self._live: dict[str, list[int]] = {}
        """uid -> [bytes up counted, bytes down counted, scrape generation last seen]."""
        self._ended_during: set[str] | None = None
        """Flows ended while a scrape is under way (it must not count them again)."""
        self._pipeline: object = None
        """The pipeline `_live` belongs to (its flow uids)."""
        self._generation = 0
        self._label_memo: dict[tuple[str | None, ...], Labels] = {}
        """A destination's fields -> their label text (safe_label is a few regex passes)."""

    # --- hooks (called on the packet loop) ----------------------------------------------------

    def flow_ended(self, flow: Flow) -> None:
        """A flow left the table (idle, evicted, ended): count what it sent since the last
        scrape. Call with the enriched record (the daemon's output sink). Never raises."""
        try:
            labels = self._flow_labels(flow)
            vis = visibility_of(self.enricher(), flow)
            dev = flow.device_mac or ""
            up, down = flow.bytes_up, flow.bytes_down
            with self.lock:
                if self._ended_during is not None:
                    self._ended_during.add(flow.uid)
                seen = self._live.pop(flow.uid, None)
                if seen is None:
                    # A continuation (a connection whose flow left the table while open) was
                    # counted as a flow when it began.
                    n = 0 if "continued_from" in flow.extra else 1
                    self.traffic.add(dev, labels, (up, down, n), up + down)
                    self.visibility.add(dev, vis, up, down)
                else:
                    du, dd = max(0, up - seen[0]), max(0, down - seen[1])
                    if du or dd:
                        self.traffic.add(dev, labels, (du, dd, 0), du + dd)
                        self.visibility.add(dev, vis, du, dd)
        except Exception as exc:
            self.limiter.warning("flow_ended", "metrics: counting an ended flow failed: %r", exc)

    def observation(self, obs: Observation) -> None:
        """Every Observation the alert stage receives, before suppression and the rate bound:
        identifier ones are counted as exposures. Never raises."""
        if obs.what != "identifier":
            return
        try:
            labels = (
                vocab(obs.identifier, _KINDS),
                vocab(obs.encoding, _ENCODINGS),
                safe_label(obs.dst.country) or UNKNOWN,
                safe_label(obs.dst.party) or UNKNOWN,
            )
            with self.lock:
                dev = self.devices.note(obs.device.mac, obs.device.name)
                self.exposures.add(dev, labels, (1,), 1.0)
        except Exception as exc:
            self.limiter.warning("observation", "metrics: counting an exposure failed: %r", exc)

    def alert(self, alert: Alert) -> None:
        """An alert delivered to the sinks. Never raises."""
        try:
            labels = (vocab(alert.rule, _RULES), alert.severity)
            with self.lock:
                dev = self.devices.note(alert.device.mac, alert.device.name)
                self.alerts.add(dev, labels, (1,), 1.0)
        except Exception as exc:
            self.limiter.warning("alert", "metrics: counting an alert failed: %r", exc)

    # --- collectors ---------------------------------------------------------------------------

    def traffic_families(self) -> Families:
        self._settle_live()
        with self.lock:
            rows = self.traffic.snapshot()
            vis_rows = self.visibility.snapshot()
        names = self.devices.labels({d for d, _, _ in rows} | {d for d, _, _ in vis_rows})
        labels = ["device", "party", "provider", "cloud_region", "dst_country"]
        up = CounterMetricFamily(
            "phonehome_upload_bytes",
            "Bytes LAN devices sent (IP length), by destination",
            labels=labels,
        )
        down = CounterMetricFamily(
            "phonehome_download_bytes",
            "Bytes LAN devices received (IP length), by origin",
            labels=labels,
        )
        flows: dict[tuple[str, str, str], float] = {}
        for dev, key, (b_up, b_down, n) in rows:
            name = names[dev]
            up.add_metric([name, *key], b_up)
            down.add_metric([name, *key], b_down)
            fkey = (name, key[0], key[3])
            flows[fkey] = flows.get(fkey, 0.0) + n
        yield up
        yield down
        fam = CounterMetricFamily(
            "phonehome_flows",
            "Flows seen (counted when first seen), by device, party and country",
            labels=["device", "party", "dst_country"],
        )
        for fkey, n in flows.items():
            fam.add_metric(list(fkey), n)
        yield fam
        yield visibility_family(vis_rows, names)
        yield gauge(
            "phonehome_metrics_tracked_flows",
            "Live flows whose counted bytes the exporter remembers",
            len(self._live),
        )

    def exposure_families(self) -> Families:
        with self.lock:
            rows = self.exposures.snapshot()
        names = self.devices.labels({d for d, _, _ in rows})
        fam = CounterMetricFamily(
            "phonehome_identifier_exposures",
            "Identifiers seen leaving in cleartext (every sighting, suppressed repeats too)",
            labels=["device", "identifier", "encoding", "dst_country", "party"],
        )
        for dev, key, (n,) in rows:
            fam.add_metric([names[dev], *key], n)
        yield fam

    def alert_families(self) -> Families:
        with self.lock:
            rows = self.alerts.snapshot()
        names = self.devices.labels({d for d, _, _ in rows})
        fam = CounterMetricFamily(
            "phonehome_alerts",
            "Alerts delivered to the sinks",
            labels=["rule", "severity", "device"],
        )
        for dev, (rule, severity), (n,) in rows:
            fam.add_metric([rule, severity, names[dev]], n)
        yield fam

    def macs(self) -> set[str]:
        """The devices with series of their own in any table."""
        with self.lock:
            return {
                m
                for t in (self.traffic, self.exposures, self.alerts, self.visible)
                for m in t.rows
                if m not in ("", OTHER)
            }

    # --- live flows ---------------------------------------------------------------------------

    def _settle_live(self) -> None:
        """Count what live flows sent since the last scrape (see the module docstring)."""
        pipeline = self.pipeline()
        with self.lock:
            if pipeline is not self._pipeline:
                self._live.clear()  # another pipeline: its uids are new
                self._pipeline = pipeline
            self._ended_during = set()
            self._generation += 1
            gen = self._generation
        try:
            if pipeline is None:
                return
            rows = self._read_live(pipeline, gen)
            for i in range(0, len(rows), APPLY_SLICE):
                with self.lock:
                    ended = self._ended_during or set()
                    live = self._live
                    add = self.traffic.add
                    add_vis = self.visibility.add
                    for uid, dev, labels, up, down, vis, n in rows[i : i + APPLY_SLICE]:
                        if uid in ended:
                            continue
                        seen = live.get(uid)
                        if seen is None:
                            live[uid] = [up, down, gen]
                            add(dev, labels, (up, down, n), up + down)
                            add_vis(dev, vis, up, down)
                            continue
                        du, dd = up - seen[0], down - seen[1]
                        seen[2] = gen
                        if du > 0 or dd > 0:
                            du, dd = max(du, 0), max(dd, 0)
                            seen[0] += du
                            seen[1] += dd
                            add(dev, labels, (du, dd, 0), du + dd)
                            add_vis(dev, vis, du, dd)
        finally:
            with self.lock:
                self._ended_during = None
            # Flows gone from the table whose end never reached us (a hook not wired, a failed
            # sink): forgotten after a few scrapes, so the state stays bounded.
            stale = [u for u, seen in copy_items(self._live) if seen[2] < gen - 2]
            for i in range(0, len(stale), APPLY_SLICE):
                with self.lock:
                    for u in stale[i : i + APPLY_SLICE]:
                        seen = self._live.get(u)
                        if seen is not None and seen[2] < gen - 2:
                            del self._live[u]

    def _read_live(
        self, pipeline: PipelineView, gen: int
    ) -> list[tuple[str, str, Labels, int, int, str | None, int]]:
        """(uid, device, labels, bytes up, bytes down, visibility class, 1 or 0 for a
        continuation) of the live flows that sent something since they were last counted; the
        others are only marked as still live."""
        entries = copy_values(pipeline.flows.entries)
        enricher = self.enricher()
        live = self._live  # read without the lock: dict.get is atomic; only this thread adds
        out: list[tuple[str, str, Labels, int, int, str | None, int]] = []
        append = out.append
        places: dict[tuple[str, int, str | None], Labels] = {}
        """Destinations placed in this scrape (flows share them), dropped after it."""
        for e in entries:
            f = e.flow
            up, down = e.up.counted_bytes, e.down.counted_bytes
            seen = live.get(f.uid)
            if seen is not None and seen[0] == up and seen[1] == down:
                seen[2] = gen
                continue
            vis = visibility_of(enricher, f)
            name = None if vis == "relay" else f.server_name  # a relay's name is no party
            where = (f.dst_ip, f.dst_port, name)
            labels = places.get(where)
            if labels is None:
                labels = places[where] = self._place(enricher, *where)
            n = 0 if "continued_from" in f.extra else 1
            append((f.uid, f.device_mac or "", labels, up, down, vis, n))
        return out

    def _place(self, enricher: EnricherView | None, ip: str, port: int, name: str | None) -> Labels:
        """A live flow's labels, from the enrichment stage's destination (its cache)."""
        if enricher is None:
            return _UNPLACED
        try:
            d = enricher.destination(ip, port, name)
        except Exception as exc:
            self.limiter.warning("resolve", "metrics: placing %s failed: %r", ip, exc)
            return _UNPLACED
        return self._labels_of(d)

    def _labels_of(self, d: Destination) -> Labels:
        key = (d.party, d.provider, d.region, d.country)
        hit = self._label_memo.get(key)
        if hit is None:
            hit = _labels(*key)
            if len(self._label_memo) >= MAX_LABEL_MEMO:
                self._label_memo.clear()
            self._label_memo[key] = hit
        return hit

    def _flow_labels(self, flow: Flow) -> Labels:
        x = flow.extra
        if "country" in x:  # enriched by the stages
            return _labels(x.get("party"), x.get("provider"), x.get("region"), x.get("country"))
        enricher = self.enricher()
        if enricher is None:
            return _UNPLACED
        try:
            d = enricher.destination(flow.dst_ip, flow.dst_port, flow.server_name)
        except Exception:
            return _UNPLACED
        return _labels(d.party, d.provider, d.region, d.country)


def _labels(party: object, provider: object, region: object, country: object) -> Labels:
    return (
        safe_label(party) or UNKNOWN,
        safe_label(provider) or UNKNOWN,
        safe_label(region) or UNKNOWN,
        safe_label(country) or UNKNOWN,
    )
