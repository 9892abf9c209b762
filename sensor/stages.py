"""The stages after the flow table, wired in the one direction of the data path:

    flows ─▶ enrich ─▶ detect ─▶ alerts ─▶ sinks (report, event log, journal, Alertmanager)

`Stages` is what the packet loop talks to: it is the pipeline's `FlowSink` (ended flows,
devices) and its `Observer` (outbound plaintext as soon as it is decoded). It hands what the
detector observes to the alert stage's one way in, `AlertStage.observe`; the detector knows
nothing of the alert stage. Whoever needs the alert stage (the daemon's policy events, the
metrics, the status) finds it here, as `Stages.alerts`. `analyze` and the daemon build the same
`Stages`; only the outputs differ.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from sensor.alerts import AlertStage
from sensor.config import Config
from sensor.detect.bypass import BypassDetector
from sensor.detect.stage import Detector, load_or_create_key, read_key
from sensor.enrich import doh
from sensor.enrich.relays import VPN, vpn_protocol
from sensor.enrich.stage import Enricher
from sensor.fingerprints import SavedSets
from sensor.model import Alert, Device, Flow, HttpRequest, Observation
from sensor.sinks import AlertSink
from sensor.visibility import account

log = logging.getLogger(__name__)


class Output(Protocol):
    """Where enriched records go (the analyze report, later the metrics)."""

    def flow(self, flow: Flow) -> None: ...

    def device(self, device: Device) -> None: ...


class AlertWriter(Protocol):
    """A report writer's way in for alerts (sensor.report's sinks)."""

    def alert(self, alert: Alert) -> None: ...


class ReportAlerts:
    """An alert sink that hands alerts to a report writer."""

    def __init__(self, report: AlertWriter) -> None:
        self.report = report

    def send(self, alert: Alert) -> None:
        self.report.alert(alert)

    def close(self) -> None:
        pass


class Stages:
    def __init__(
        self,
        enricher: Enricher | None,
        output: Output,
        detector: Detector | None = None,
        alerts: AlertStage | None = None,
        bypass: BypassDetector | None = None,
    ) -> None:
        self.enricher = enricher
        self.output = output
        self.detector = detector
        self.alerts = alerts
        """Where the detectors' Observations go (None: nowhere, e.g. without a detector)."""
        self.bypass = bypass
        self.devices: Mapping[str, Device] = {}
        """The pipeline's device table (set once the pipeline exists)."""
        self.fingerprints: SavedSets | None = None
        """The devices' JA4 sets from before a restart (the daemon's; None in `analyze`)."""
        self.failures = 0
        self.notes: list[str] = []
        """What the reader of a report should know about how it was made (a throwaway key)."""
        self.key_source = "install"
        """"install" (the daemon's identity key) or "throwaway" (this run only)."""
        self.vpn_protocols = True
        """Mark flows that open with a VPN handshake as relay "vpn" (relays.vpn_protocols)."""

    def _device(self, mac: str | None) -> Device | None:
        return self.devices.get(mac) if mac else None

    def _observe(self, observations: Iterable[Observation]) -> None:
        alerts = self.alerts
        if alerts is not None:
            for obs in observations:
                alerts.observe(obs)

    # --- FlowSink: ended flows and devices ------------------------------------------------------

    def flow(self, flow: Flow) -> None:
        if self.bypass is not None:  # before the record is written: it carries dns_bypass
            self.bypass.check(flow, self._device(flow.device_mac), flow.last_seen)
        if self.enricher is not None:
            try:
                dst = self.enricher.annotate_flow(flow)
                vis = flow.extra.get("visibility")
                device = self._device(flow.device_mac)
                if device is not None and isinstance(vis, str):
                    account(device, flow, vis)
                if self.detector is not None:
                    self._observe(self.detector.flow_end(flow, self._device(flow.device_mac), dst))
            except Exception:  # one broken stage must not lose the flow record
                self.failures += 1
                log.exception("enriching flow %s failed", flow.uid)
        self.output.flow(flow)

    def device(self, device: Device) -> None:
        if self.enricher is not None:
            try:
                self.enricher.annotate_device(device)
            except Exception:
                self.failures += 1
                log.exception("identifying device %s failed", device.mac)
        self.output.device(device)

    # --- Observer: outbound plaintext -----------------------------------------------------------

    def http_request(self, flow: Flow, device: Device | None, req: HttpRequest, ts: float) -> None:
        if self.detector is not None:
            self._observe(self.detector.http_request(flow, device, req, ts))

    def dns_query(self, flow: Flow, device: Device | None, qname: str, ts: float) -> None:
        if self.bypass is not None:
            self.bypass.dns_query(flow, device, qname, ts)
        if self.detector is not None:
            self._observe(self.detector.dns_query(flow, device, qname, ts))

    def client_hello(self, flow: Flow, device: Device | None, ts: float) -> None:
        """A flow's TLS or QUIC ClientHello was decoded (its SNI and ALPN are set)."""
        if self.bypass is not None:
            self.bypass.check(flow, device, ts)

    def resolvers_offered(self, addresses: tuple[str, ...], ts: float) -> None:
        """Resolvers the network handed out (DHCP, DHCPv6, Router Advertisements)."""
        if self.bypass is not None:
            self.bypass.resolvers_offered(addresses, ts)

    def gateway_addresses(self, addresses: list[str]) -> None:
        if self.bypass is not None:
            self.bypass.gateway_addresses(addresses)

    def payload(self, flow: Flow, device: Device | None, data: bytes, ts: float) -> None:
        if flow.relay is None and self.vpn_protocols:
            protocol = vpn_protocol(flow.proto, flow.dst_port, data)
            if protocol is not None:
                flow.relay = VPN
                flow.extra["vpn_protocol"] = protocol
        if self.detector is not None:
            self._observe(self.detector.payload(flow, device, data, ts))

    def upload_progress(self, flow: Flow, device: Device | None, new: int, ts: float) -> None:
        """A live flow's upload grew by `new` bytes (conntrack counters)."""
        if self.detector is not None and self.enricher is not None:
            dst = self.enricher.place(flow)
            self._observe(self.detector.upload_progress(flow, device, dst, ts))

    def fingerprint(self, flow: Flow, device: Device | None, ja4: str, ts: float) -> None:
        """A device showed a JA4 new to its set (the pipeline's `Device.ja4`)."""
        saved = self.fingerprints
        if saved is not None and device is not None:
            saved.changed = True
            if device.ja4_since is None and saved.adopt(device, ja4):
                return  # shown before the daemon restarted: not new
        if self.detector is not None:
            self._observe(self.detector.fingerprint(flow, device, ja4, ts))

    def tick(self, ts: float) -> None:
        if self.alerts is not None:
            self.alerts.tick(ts)
        if self.detector is not None:
            self.detector.tick(ts)

    def close(self) -> None:
        if self.detector is not None:
            self.detector.close()
        if self.alerts is not None:
            self.alerts.close()


def build(
    cfg: Config, output: Output, alert_sinks: list[AlertSink], *, record: bool = True
) -> Stages:
    """Load the data files and the install key, and wire enrich -> detect -> alerts.

    Without `record` nothing on disk is created or changed: the install key is used when it
    can be read (else a throwaway key, said in `notes`), learned identifiers are not saved
    and the geo cache is not written."""
    state = Path(cfg.paths.state_dir)
    enricher = Enricher.load(cfg, write_cache=record)
    key_path = Path(cfg.detect.key_file) if cfg.detect.key_file else state / "identity.key"
    persistent = state.is_dir() or cfg.detect.key_file is not None
    notes: list[str] = []
    if not record:
        key, note = read_key(key_path)
        if note is not None and persistent:
            notes.append(note)
        throwaway = note is not None
        persistent = False
    elif persistent:
        key, persistent = load_or_create_key(key_path)
        throwaway = not persistent
    else:
        key = secrets.token_bytes(32)
        throwaway = True
    alerts = AlertStage(cfg.alerts, alert_sinks)
    learned = state / "learned.json" if persistent else None
    detector = Detector(cfg, key, enricher, learned)
    resolvers, errors = doh.load(state / "data")
    enricher.errors += errors
    bypass = BypassDetector(
        cfg.dns_bypass, resolvers, alerts.observe, enricher, cfg.site.lan_networks
    )
    stages = Stages(enricher, output, detector, alerts, bypass)
    stages.notes = notes
    stages.vpn_protocols = cfg.relays.vpn_protocols
    stages.key_source = "throwaway" if throwaway else "install"
    return stages
