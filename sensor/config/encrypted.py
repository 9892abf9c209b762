"""Settings of what the sensor sees through encryption: ``[dns_bypass]`` (sensor.detect.bypass)
and ``[relays]`` (sensor.enrich.relays)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from sensor.config.common import dotted


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


@dataclass(frozen=True, slots=True)
class RelaysConfig:
    """Settings section ``[relays]``."""

    vpn_lists: dict[str, str] = field(default_factory=dict)
    """The owner's VPN endpoint lists: name -> file (one address or prefix a line, "#"
    comments; or a JSON array). A flow to an address in one is relay "vpn:<name>"."""
    vpn_protocols: bool = True
    """Mark flows whose first bytes are a WireGuard or OpenVPN client handshake as relay
    "vpn" (weaker evidence than a list: any server can speak them)."""

    def validate(self) -> None:
        for name in self.vpn_lists:
            if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,31}", name):
                raise ValueError(
                    f"{dotted('vpn_lists', name)}: a name is 1-32 of a-z, 0-9, '.', '_', '-' "
                    "(it becomes part of the relay name and a metric label)"
                )
