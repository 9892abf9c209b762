"""Interfaces, their addresses, and the neighbours behind them (rtnetlink): the IP → MAC table,
LAN prefixes, link state, and a monitor of neighbour and link changes."""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from sensor.kernel.netlink import (
    DEFAULT_EVENT_RCVBUF,
    DEFAULT_MAX_READ,
    NETLINK_ROUTE,
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_NAMES,
    NUD_NOARP,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTNLGRP_LINK,
    RTNLGRP_NEIGH,
    EventMonitor,
    EventSocket,
    ifaddrmsg,
    ifinfmsg,
    ndmsg,
    nlmsg,
    open_socket,
    request_dump,
)

IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,15}$")
"""What the kernel accepts as an interface name (IFNAMSIZ less the NUL)."""
_IFF_UP = 0x1
_IFF_RUNNING = 0x40
"""Operational state UP or UNKNOWN (set by the kernel from carrier and operstate)."""


@dataclass(frozen=True, slots=True)
class NeighbourEvent:
    """A change of the IP → MAC table, in the terms of `neighbours()`."""

    kind: Literal["new", "del"]
    """"new": `ip` maps to `mac` (learned, changed, or only a state change such as reachable →
    stale, so expect repeats); "del": the mapping is gone (deleted, or resolution FAILED)."""
    ip: str
    mac: str | None
    ifname: str | None
    state: str
    """Kernel NUD state name: reachable, stale, delay, probe, permanent, failed, ..."""
    ts: float


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """An interface appeared, went away, or went up or down (only changes are reported)."""

    kind: Literal["new", "del"]
    ifname: str
    index: int
    up: bool
    """Administratively up and running (carrier present), like `link_state()`."""
    ts: float


def _usable_neighbour(msg: Any) -> tuple[str, str] | None:
    """(ip, mac) of an ARP/NDP entry that resolves; None for FAILED, INCOMPLETE and the like."""
    if msg["family"] not in (socket.AF_INET, socket.AF_INET6):
        return None  # AF_BRIDGE: bridge FDB entries share the neighbour messages and group
    if msg["state"] & (NUD_FAILED | NUD_INCOMPLETE | NUD_NOARP):
        return None  # NOARP: multicast and point-to-point entries, computed, not learned
    ip, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
    if not ip or not mac or mac == "00:00:00:00:00:00":
        return None
    if ipaddress.ip_address(ip).is_multicast:
        return None
    return str(ip), str(mac).lower()


def _state_name(state: int) -> str:
    names = [n[4:].lower() for n, v in NUD_NAMES.items() if v and state & v]
    return ",".join(names) if names else "none"


def _decoded(
    replies: Iterable[tuple[int, bytes, int]], mtype: int, cls: type[nlmsg]
) -> Iterator[Any]:
    """The replies of type `mtype`, decoded by pyroute2's class for them."""
    for kind, data, offset in replies:
        if kind == mtype:
            msg = cls(data, offset=offset)
            msg.decode()
            yield msg


class _Rtnl:
    """A blocking rtnetlink socket for dumps (links, addresses, neighbours)."""

    def __init__(self, netns: str | None) -> None:
        self._sock = open_socket(NETLINK_ROUTE, netns=netns)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> _Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def links(self) -> dict[int, tuple[str, int]]:
        """ifindex → (name, IFF_* flags)."""
        out = {}
        for msg in _decoded(
            request_dump(self._sock, ifinfmsg(), RTM_GETLINK), RTM_NEWLINK, ifinfmsg
        ):
            name = msg.get_attr("IFLA_IFNAME")
            if name:
                out[int(msg["index"])] = (str(name), int(msg["flags"]))
        return out

    def addresses(self) -> list[tuple[int, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
        """(ifindex, address/prefix) of every address; link-local and host scope left out."""
        out = []
        for msg in _decoded(
            request_dump(self._sock, ifaddrmsg(), RTM_GETADDR), RTM_NEWADDR, ifaddrmsg
        ):
            # IFA_LOCAL is the own address on point-to-point links; IFA_ADDRESS the peer there.
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if not addr or msg["scope"] >= 253:  # RT_SCOPE_LINK (253), RT_SCOPE_HOST (254)
                continue
            iface = ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}")
            if iface.ip.is_link_local:
                continue
            out.append((int(msg["index"]), iface))
        return out

    def neighbours(self) -> list[tuple[int, str, str]]:
        """(ifindex, ip, mac) of each usable ARP and NDP entry."""
        out = []
        for msg in _decoded(request_dump(self._sock, ndmsg(), RTM_GETNEIGH), RTM_NEWNEIGH, ndmsg):
            pair = _usable_neighbour(msg)
            if pair is not None:
                out.append((int(msg["ifindex"]), *pair))
        return out


def neighbours(
    *, interfaces: Collection[str] | None = None, netns: str | None = None
) -> dict[str, str]:
    """IP → MAC from the ARP and NDP tables (FAILED and INCOMPLETE entries left out).

    `interfaces` limits it to neighbours on those interfaces (e.g. the LAN bridge).
    """
    with _Rtnl(netns) as rtnl:
        entries = rtnl.neighbours()
        names = {i: n for i, (n, _f) in rtnl.links().items()} if interfaces is not None else {}
    wanted = set(interfaces) if interfaces is not None else None
    return {ip: mac for index, ip, mac in entries if wanted is None or names.get(index) in wanted}


def lan_prefixes(
    interfaces: Collection[str] | None = None, *, netns: str | None = None
) -> list[tuple[str, str]]:
    """(interface, prefix) for the global addresses of `interfaces` (all but loopback if None).

    Prefixes are network strings ("192.168.77.0/24", "fd00:77::/64"), each listed once per
    interface; link-local addresses are left out (every interface has fe80::/64).
    """
    with _Rtnl(netns) as rtnl:
        links = rtnl.links()
        addresses = rtnl.addresses()
    out: list[tuple[str, str]] = []
    for index, iface in addresses:
        name = links.get(index, (None, 0))[0]
        if name is None or iface.ip.is_loopback:
            continue
        if interfaces is not None and name not in interfaces:
            continue
        pair = (name, str(iface.network))
        if pair not in out:
            out.append(pair)
    return out


def addresses(interfaces: Collection[str] | None = None, *, netns: str | None = None) -> list[str]:
    """The global addresses (no prefix length) this host (namespace) holds on `interfaces`, or
    on any interface when None, each once; link-local and host-scope ones left out. All of
    them: what the gateway's own connections come from; those on the LAN interfaces: where its
    own services (its DNS resolver) answer the LAN."""
    with _Rtnl(netns) as rtnl:
        links = rtnl.links() if interfaces is not None else {}
        held = rtnl.addresses()
    out = (
        str(iface.ip)
        for index, iface in held
        if interfaces is None or links.get(index, (None, 0))[0] in interfaces
    )
    return list(dict.fromkeys(out))


def interfaces_for_prefixes(prefixes: Iterable[str], *, netns: str | None = None) -> list[str]:
    """Interfaces holding an address inside any of `prefixes` (how a configured LAN prefix
    finds its bridge), in interface-index order. Link-local prefixes are passed over: every
    interface, the WAN side too, holds such an address."""
    nets = [ipaddress.ip_network(p, strict=False) for p in prefixes]
    nets = [n for n in nets if not n.is_link_local]
    with _Rtnl(netns) as rtnl:
        links = rtnl.links()
        addresses = rtnl.addresses()
    hits = sorted(
        {
            index
            for index, iface in addresses
            for net in nets
            if iface.version == net.version and iface.ip in net
        }
    )
    return [links[i][0] for i in hits if i in links]


def _is_up(flags: int) -> bool:
    return bool(flags & _IFF_UP) and bool(flags & _IFF_RUNNING)


def link_state(ifname: str, *, netns: str | None = None) -> bool:
    """True when `ifname` is administratively up and running (has carrier); False when down
    or absent."""
    with _Rtnl(netns) as rtnl:
        for name, flags in rtnl.links().values():
            if name == ifname:
                return _is_up(flags)
    return False


class NeighbourMonitor(EventMonitor):
    """Neighbour (and link) changes, read without blocking.

    One socket joins the neighbour and link groups; each `read_*` call drains what is ready
    into both queues and returns its own kind. Events from bridge FDBs (AF_BRIDGE, same group)
    are dropped. After `lost_overruns` rises, resync with `neighbours()`.
    """

    MAX_QUEUED = 65_536
    """Events kept per kind between reads; older ones are dropped (and counted) beyond it."""

    def __init__(
        self,
        *,
        netns: str | None = None,
        rcvbuf: int = DEFAULT_EVENT_RCVBUF,
        links: bool = True,
    ) -> None:
        groups = [RTNLGRP_NEIGH, RTNLGRP_LINK]
        self._events = EventSocket(NETLINK_ROUTE, groups, netns, rcvbuf)
        try:
            with _Rtnl(netns) as rtnl:
                self._links: dict[int, tuple[str, bool]] = {
                    i: (name, _is_up(flags)) for i, (name, flags) in rtnl.links().items()
                }
        except BaseException:
            self._events.close()
            raise
        self._want_links = links
        self._neigh: deque[NeighbourEvent] = deque()
        self._link: deque[LinkEvent] = deque()
        self.dropped = 0
        """Events dropped because a queue held MAX_QUEUED unread ones."""

    def ifname(self, index: int) -> str | None:
        entry = self._links.get(index)
        return entry[0] if entry else None

    def _queue(self, q: deque[Any], event: object) -> None:
        if len(q) >= self.MAX_QUEUED:
            q.popleft()
            self.dropped += 1
        q.append(event)

    def _handle(self, mtype: int, flags: int, data: bytes, offset: int) -> None:
        now = time.time()
        if mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
            msg = ndmsg(data, offset=offset)
            msg.decode()
            if msg["family"] not in (socket.AF_INET, socket.AF_INET6):
                return
            ip = msg.get_attr("NDA_DST")
            if not ip or ipaddress.ip_address(ip).is_multicast:
                return
            state = int(msg["state"])
            mac = msg.get_attr("NDA_LLADDR")
            mac = str(mac).lower() if mac else None
            ifname = self.ifname(int(msg["ifindex"]))
            if mtype == RTM_DELNEIGH or state & NUD_FAILED:
                kind: Literal["new", "del"] = "del"
            elif _usable_neighbour(msg) is not None:
                kind = "new"
            else:
                return  # INCOMPLETE: resolution under way, nothing to map yet
            self._queue(
                self._neigh, NeighbourEvent(kind, str(ip), mac, ifname, _state_name(state), now)
            )
        elif mtype in (RTM_NEWLINK, RTM_DELLINK):
            msg = ifinfmsg(data, offset=offset)
            msg.decode()
            index = int(msg["index"])
            old = self._links.get(index)
            if mtype == RTM_DELLINK:
                self._links.pop(index, None)
                if old and self._want_links:
                    self._queue(self._link, LinkEvent("del", old[0], index, False, now))
                return
            name = str(msg.get_attr("IFLA_IFNAME") or (old[0] if old else index))
            up = _is_up(int(msg["flags"]))
            self._links[index] = (name, up)
            if self._want_links and (old is None or old != (name, up)):
                self._queue(self._link, LinkEvent("new", name, index, up, now))

    def _drain(self, max_messages: int) -> None:
        self._events.drain(self._handle, max_messages)

    def read_neighbour_events(self, max_messages: int = DEFAULT_MAX_READ) -> list[NeighbourEvent]:
        """Neighbour changes ready now; never blocks. Link events read meanwhile are kept."""
        self._drain(max_messages)
        out = list(self._neigh)
        self._neigh.clear()
        return out

    def read_link_events(self, max_messages: int = DEFAULT_MAX_READ) -> list[LinkEvent]:
        """Link changes ready now; never blocks. Neighbour events read meanwhile are kept."""
        self._drain(max_messages)
        out = list(self._link)
        self._link.clear()
        return out
