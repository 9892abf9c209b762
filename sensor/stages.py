"""The stages after the flow table, wired in the one direction of the data path:

    flows ─▶ enrich ─▶ detect ─▶ alerts ─▶ sinks (report, event log, journal, Alertmanager)

`Stages` is what the packet loop talks to: it is the pipeline's `Sink` (ended flows, devices)
and its `Observer` (outbound plaintext as soon as it is decoded). `analyze` and the daemon build
the same `Stages`; only the output sink differs.
"""

from __future__ import annotations

import logging

from sensor.enrich.stage import Enricher
from sensor.model import Device, Flow, HttpRequest
from sensor.pipeline import Sink

log = logging.getLogger(__name__)


class Stages:
    def __init__(self, enricher: Enricher | None, output: Sink) -> None:
        self.enricher = enricher
        self.output = output
        self.failures = 0

    # --- Sink: ended flows and devices ----------------------------------------------------------

    def flow(self, flow: Flow) -> None:
        if self.enricher is not None:
            try:
                self.enricher.annotate_flow(flow)
            except Exception:  # one broken enricher must not lose the flow record
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
        pass

    def dns_query(self, flow: Flow, device: Device | None, qname: str, ts: float) -> None:
        pass

    def payload(self, flow: Flow, device: Device | None, data: bytes, ts: float) -> None:
        pass
