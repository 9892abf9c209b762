"""What the packet loop (sensor.pipeline) hands its results to: ended flows and devices
(`FlowSink`), and outbound plaintext as soon as it is decoded (`Observer`). `sensor.stages`
implements both; `analyze` and the tests use `NullObserver` where nothing watches."""

from __future__ import annotations

from typing import Protocol

from sensor.model import Device, Flow, HttpRequest


class FlowSink(Protocol):
    """Where the pipeline's ended flows and devices go (`sensor.stages.Stages`, report writers).
    Not an alert sink (`sensor.sinks.AlertSink`)."""

    def flow(self, flow: Flow) -> None: ...

    def device(self, device: Device) -> None: ...


class Observer(Protocol):
    """Told of outbound plaintext as soon as it is decoded (detection must not wait for the
    flow to end). Calls happen on the packet loop: keep them cheap, never raise."""

    def http_request(
        self, flow: Flow, device: Device | None, req: HttpRequest, ts: float
    ) -> None: ...

    def dns_query(self, flow: Flow, device: Device | None, qname: str, ts: float) -> None: ...

    def payload(self, flow: Flow, device: Device | None, data: bytes, ts: float) -> None:
        """The first bytes (within the inspection budget) that the LAN device sent on a flow
        that is neither TLS, QUIC, HTTP nor DNS."""

    def tick(self, ts: float) -> None:
        """Time passes (packet time, at every flow-table sweep)."""

    def fingerprint(self, flow: Flow, device: Device, ja4: str, ts: float) -> None:
        """A device showed a JA4 that is not in its set (`Device.ja4`). Optional: an observer
        without this method is not told."""


class NullObserver:
    def http_request(self, flow: Flow, device: Device | None, req: HttpRequest, ts: float) -> None:
        pass

    def dns_query(self, flow: Flow, device: Device | None, qname: str, ts: float) -> None:
        pass

    def payload(self, flow: Flow, device: Device | None, data: bytes, ts: float) -> None:
        pass

    def tick(self, ts: float) -> None:
        pass

    def fingerprint(self, flow: Flow, device: Device, ja4: str, ts: float) -> None:
        pass
