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
    flow to end), and of what the network says about resolvers. Calls happen on the packet
    loop: keep them cheap, never raise. `NullObserver` does nothing for each: subclass it to
    watch only some."""

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
        """A device showed a JA4 that is not in its set (`Device.ja4`)."""

    def client_hello(self, flow: Flow, device: Device | None, ts: float) -> None:
        """A flow's TLS or QUIC ClientHello was decoded (its SNI and ALPN are set)."""

    def resolvers_offered(self, addresses: tuple[str, ...], ts: float) -> None:
        """Resolvers the network handed out (DHCP, DHCPv6, Router Advertisements)."""

    def gateway_addresses(self, addresses: list[str]) -> None:
        """The gateway's own addresses (`Pipeline.set_gateway_addresses`), not per packet."""

    def upload_progress(self, flow: Flow, device: Device | None, new: int, ts: float) -> None:
        """A live flow's upload grew by `new` bytes (conntrack counters)."""


class NullObserver:
    """An `Observer` that is told everything and does nothing."""

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

    def client_hello(self, flow: Flow, device: Device | None, ts: float) -> None:
        pass

    def resolvers_offered(self, addresses: tuple[str, ...], ts: float) -> None:
        pass

    def gateway_addresses(self, addresses: list[str]) -> None:
        pass

    def upload_progress(self, flow: Flow, device: Device | None, new: int, ts: float) -> None:
        pass
