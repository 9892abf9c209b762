"""DNS bypass: a device resolving names with a resolver the network did not hand out.

The network's resolvers are what its DHCPv4 (option 6), DHCPv6 (option 23) and Router
Advertisements (RDNSS) hand out as the sensor sees them, the gateway's own addresses, and
``dns_bypass.allowed_resolvers``; a destination inside ``site.lan_networks`` is the network's
own too (a Pi-hole, the router's LAN address in a capture without DHCP). Any protocol to one of
those is no bypass: Android's automatic Private DNS tries DoT to exactly the resolvers DHCP
gave, and Chrome upgrades a known DoH provider handed out by DHCP to DoH to the same one.

Anything else is, when the flow shows it is DNS (`classify`, pure):
- DoQ: ALPN "doq" (or a draft "doq-i…"), or UDP port 853;
- DoT: ALPN "dot", or TCP port 853;
- DoH: an SNI that is a listed public resolver's name (or a name under one), or, with no
  SNI, a listed resolver's address on port 443 (sensor.enrich.doh);
- plain DNS (reported as protocol "dns"): UDP/TCP port 53, only once the network's resolvers
  are known (else every query of a capture without DHCP would count) and unless
  ``dns_bypass.plain_dns`` is off.

Canary names (`CANARIES`) a device asks for are noted on its record (``dns_canaries``): they
say what its software is deciding about encrypted DNS or relays. The sensor never queries them.

`BypassDetector` sets ``Flow.dns_bypass`` and hands one "dns_bypass" Observation per flow to
the alert stage, whose rule ``dns_bypass`` decides (sensor.alerts).
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from sensor.config.encrypted import DnsBypassConfig as DnsBypassConfig  # [dns_bypass]
from sensor.enrich.doh import ResolverList
from sensor.model import Destination, Device, DeviceRef, DnsBypass, Flow, Observation

if TYPE_CHECKING:
    from sensor.enrich.stage import Enricher

log = logging.getLogger(__name__)

CANARIES: Final[dict[str, str]] = {
    "use-application-dns.net": "Firefox asks before turning DoH on (RFC-less canary: an "
    "NXDOMAIN answer keeps it off)",
    "mask.icloud.com": "iCloud Private Relay asks before relaying (no answer keeps it off)",
    "mask-h2.icloud.com": "iCloud Private Relay (HTTP/2 fallback) asks before relaying",
    "_dns.resolver.arpa": "Discovery of Designated Resolvers (RFC 9462): the device looks for "
    "the network's own encrypted resolver",
}
"""Names whose query says what a device is about to do with its DNS, and why it matters."""
MAX_NETWORK_RESOLVERS: Final = 256
"""Resolvers learned from DHCP and RAs; the least recently handed out go first."""

_DOQ_ALPN: Final = "doq"
_DOT_ALPN: Final = "dot"


def _doq_alpn(alpn: Iterable[str]) -> bool:
    return any(a == _DOQ_ALPN or a.startswith(_DOQ_ALPN + "-i") for a in alpn)


def classify(
    proto: str,
    dst_ip: str,
    dst_port: int,
    sni: str | None,
    alpn: tuple[str, ...],
    doh: ResolverList,
    via: str = "sni",
) -> DnsBypass | None:
    """What DNS a flow carries, if it visibly is DNS: protocol, resolver, evidence. Pure; the
    caller decides whether the resolver is the network's own. `sni` is the name the flow
    went to, as its ClientHello said (`via` "sni") or as the device looked it up ("dns")."""
    listed = doh.host(sni)
    name = listed or sni or doh.address(dst_ip) or dst_ip
    if _doq_alpn(alpn):
        return DnsBypass("doq", name, f"alpn={','.join(alpn)}")
    if _DOT_ALPN in alpn:
        return DnsBypass("dot", name, "alpn=dot")
    if dst_port == 853:
        evidence = f"{proto}/853" + (f",{via}={sni}" if sni else "")
        return DnsBypass("doq" if proto == "udp" else "dot", name, evidence)
    if dst_port == 53:
        return DnsBypass("dns", doh.address(dst_ip) or dst_ip, f"{proto}/53")
    if listed is not None:
        return DnsBypass("doh", listed, f"{via}={sni}" + (f",alpn={alpn[0]}" if alpn else ""))
    if (sni is None or via != "sni") and dst_port == 443:
        at = doh.address(dst_ip)
        if at is not None:
            return DnsBypass("doh", at, "doh-list-address" + (f",alpn={alpn[0]}" if alpn else ""))
    return None


class NetworkResolvers:
    """The resolvers the network hands out: learned (DHCP, RA), the gateway's, configured."""

    def __init__(
        self,
        allowed: Iterable[str] = (),
        lan_networks: Iterable[str] = (),
        max_learned: int = MAX_NETWORK_RESOLVERS,
    ) -> None:
        self.allowed = [ipaddress.ip_network(a, strict=False) for a in allowed]
        self.lan = [ipaddress.ip_network(n, strict=False) for n in lan_networks]
        self.learned: OrderedDict[str, float] = OrderedDict()
        """Address -> when it was last handed out (packet time)."""
        self.gateway: frozenset[str] = frozenset()
        self.max_learned = max_learned

    def handed_out(self, addresses: Iterable[str], ts: float) -> None:
        for text in addresses:
            try:
                addr = str(ipaddress.ip_address(text))
            except ValueError:
                continue
            self.learned[addr] = ts
            self.learned.move_to_end(addr)
            if len(self.learned) > self.max_learned:
                self.learned.popitem(last=False)

    def adopt(self, other: NetworkResolvers) -> None:
        """What another instance learned (a reload builds new stages)."""
        for addr, ts in other.learned.items():
            self.handed_out((addr,), ts)
        self.gateway = self.gateway | other.gateway

    @property
    def known(self) -> bool:
        """Whether the sensor knows any of the network's resolvers (plain DNS elsewhere is
        only a bypass then)."""
        return bool(self.learned or self.gateway or self.allowed)

    def contains(self, ip: str) -> bool:
        if ip in self.learned or ip in self.gateway:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.is_loopback or addr.is_link_local:
            return True  # the gateway's own, whatever the configuration says
        return any(addr in net for net in (*self.allowed, *self.lan))

    def describe(self) -> list[str]:
        return sorted(set(self.learned) | self.gateway | {str(n) for n in self.allowed})


class BypassDetector:
    """Flows and queries in, ``Flow.dns_bypass``, device canaries and Observations out."""

    def __init__(
        self,
        cfg: DnsBypassConfig,
        doh: ResolverList,
        emit: Callable[[Observation], object] | None,
        enricher: Enricher | None = None,
        lan_networks: Iterable[str] = (),
    ) -> None:
        self.cfg = cfg
        self.doh = doh
        self.emit = emit
        """Where Observations go (`sensor.stages` hands them to the alert stage)."""
        self.enricher = enricher
        self.resolvers = NetworkResolvers(cfg.allowed_resolvers, lan_networks)
        self.flows = 0
        """Flows found bypassing."""
        self.errors = 0
        self.canaries = 0

    # --- what the network hands out ---------------------------------------------------------

    def resolvers_offered(self, addresses: Iterable[str], ts: float) -> None:
        self.resolvers.handed_out(addresses, ts)

    def gateway_addresses(self, addresses: Iterable[str]) -> None:
        self.resolvers.gateway = frozenset(addresses)

    # --- flows and queries ------------------------------------------------------------------

    def check(self, flow: Flow, device: Device | None, ts: float) -> DnsBypass | None:
        """Classify `flow` (again, as it learns its SNI and ALPN); the first time it shows a
        bypass, set `flow.dns_bypass` and emit an Observation. Never raises."""
        if flow.dns_bypass is not None:
            return flow.dns_bypass
        try:
            found = self._classify(flow)
            if found is None:
                return None
            flow.dns_bypass = found
            self.flows += 1
            self._observe(flow, device, found, ts)
        except Exception:  # a bug here must not lose the flow or stop the packet loop
            self.errors += 1
            log.exception("dns bypass check of %s failed", flow.uid)
            return flow.dns_bypass
        return found

    def _classify(self, flow: Flow) -> DnsBypass | None:
        # An ECH hello's SNI is a cover name; a name from HTTP says nothing about DNS.
        source = flow.name_source
        name = flow.server_name if source in ("tls", "quic", "dns") and not flow.ech else None
        via = "dns" if source == "dns" else "sni"
        found = classify(flow.proto, flow.dst_ip, flow.dst_port, name, flow.alpn, self.doh, via)
        if found is None or self.resolvers.contains(flow.dst_ip):
            return None
        if found.protocol == "dns" and not (self.cfg.plain_dns and self.resolvers.known):
            return None
        return found

    def dns_query(self, flow: Flow, device: Device | None, qname: str, ts: float) -> None:
        """A query a device sent: note canaries on its record; plain DNS to a resolver that
        is not the network's is a bypass as soon as it is seen."""
        name = qname.lower().rstrip(".")
        if name in CANARIES and device is not None:
            seen = device.extra.setdefault("dns_canaries", [])
            if isinstance(seen, list) and name not in seen and len(seen) < len(CANARIES):
                seen.append(name)
                seen.sort()
                self.canaries += 1
        if flow.dst_port == 53:
            self.check(flow, device, ts)

    def _observe(self, flow: Flow, device: Device | None, found: DnsBypass, ts: float) -> None:
        if self.emit is None:
            return
        name = found.resolver if found.resolver != flow.dst_ip else None
        if self.enricher is not None:
            dst = self.enricher.destination(flow.dst_ip, flow.dst_port, name)
            who = self.enricher.device_ref(device, flow.device_mac, flow.src_ip)
        else:
            dst = Destination(ip=flow.dst_ip, port=flow.dst_port, server_name=name)
            who = DeviceRef(mac=flow.device_mac, ip=flow.src_ip)
        self.emit(
            Observation(
                what="dns_bypass", ts=ts, device=who, dst=dst, flow_uid=flow.uid, bypass=found
            )
        )

    def stats(self) -> dict[str, object]:
        return {
            "flows": self.flows,
            "canaries": self.canaries,
            "errors": self.errors,
            "network_resolvers": len(self.resolvers.learned),
            "doh_list": len(self.doh),
        }
