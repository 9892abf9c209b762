"""How much of a flow's destination the sensor can see (`model.Visibility`).

`classify` is the one rule, first match wins:

1. ``relay``: the flow goes into a known relay (`Flow.relay`: iCloud Private Relay, Tor, a
   VPN): whatever the device asked for is hidden on the far side;
2. ``ech``: the hello carried Encrypted Client Hello and no DNS answer named the flow (its
   outer name is a cover, never the destination);
3. the flow's name source: ``dns``, ``tls`` (SNI), ``quic`` (SNI of an Initial), ``http``
   (Host); a plain DNS exchange (to port 53) is ``dns`` too: its questions are in the clear;
4. ``none``: no name at all.

Traffic that stays on the LAN (or goes to multicast/broadcast) is not about where data goes
and has no visibility class (`Locality`). Per device, `account` adds a flow's bytes to the
device record: bytes per class and bytes per relay. Pure functions of the records.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final, get_args

from sensor.model import Device, Flow, Visibility

VISIBILITIES: Final[tuple[Visibility, ...]] = get_args(Visibility)
"""Every class, in the order dashboards show them."""
DNS_PORT: Final = 53
LOCALITY_CACHE: Final = 16_384
"""Addresses whose locality is remembered; all are forgotten when it is full."""
MAX_RELAYS_PER_DEVICE: Final = 32
"""Relay names kept per device record; more fold into "other" (names come from config and
data, so this is only a bound)."""


def classify(flow: Flow) -> Visibility:
    """The flow's visibility class (see the module docstring)."""
    if flow.relay:
        return "relay"
    if flow.ech and not (flow.name_source == "dns" and flow.server_name):
        return "ech"
    if flow.server_name and flow.name_source is not None:
        return flow.name_source
    if flow.dst_port == DNS_PORT:
        return "dns"
    return "none"


class Locality:
    """Whether a destination is on the LAN (the configured prefixes), multicast, broadcast,
    link-local, loopback or unspecified: traffic that does not leave the site."""

    def __init__(self, lan_networks: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in lan_networks]
        self._cache: dict[str, bool] = {}

    def __call__(self, ip: str) -> bool:
        hit = self._cache.get(ip)
        if hit is not None:
            return hit
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        local = (
            addr.is_multicast
            or addr.is_link_local
            or addr.is_loopback
            or addr.is_unspecified
            or ip == "255.255.255.255"
            or self._in_lan(addr)
        )
        if len(self._cache) >= LOCALITY_CACHE:
            self._cache.clear()
        self._cache[ip] = local
        return local

    def _in_lan(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(addr.version == n.version and addr in n for n in self.networks)


def account(device: Device, flow: Flow, visibility: str) -> None:
    """Add the flow's bytes to the device record: ``visibility_bytes`` {class: {up, down}}
    and, for a relay, ``relay_bytes`` {relay: {up, down}}."""
    _add(device.extra, "visibility_bytes", visibility, flow.bytes_up, flow.bytes_down)
    if flow.relay:
        table = device.extra.get("relay_bytes")
        key = flow.relay
        if isinstance(table, dict) and key not in table and len(table) >= MAX_RELAYS_PER_DEVICE:
            key = "other"
        _add(device.extra, "relay_bytes", key, flow.bytes_up, flow.bytes_down)


def _add(extra: dict[str, object], field: str, key: str, up: int, down: int) -> None:
    table = extra.get(field)
    if not isinstance(table, dict):
        table = extra[field] = {}
    cell = table.get(key)
    if not isinstance(cell, dict):
        cell = table[key] = {"up": 0, "down": 0}
    cell["up"] += up
    cell["down"] += down
