"""Settings of what the sensor sees through encryption: ``[dns_bypass]`` (sensor.detect.bypass)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DnsBypassConfig:
    """Settings section ``[dns_bypass]``."""

    allowed_resolvers: tuple[str, ...] = ()
    """Addresses or prefixes of resolvers that are the network's own besides those DHCP and
    RAs hand out and the gateway's addresses (a resolver configured statically on devices)."""
    plain_dns: bool = True
    """Report plain DNS (port 53) to other resolvers as a bypass (protocol "dns")."""

    def validate(self) -> None:
        for i, text in enumerate(self.allowed_resolvers):
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(
                    f"allowed_resolvers[{i}]: not an IP address or prefix: {text!r}"
                ) from None
