"""The only module importing pyroute2: conntrack counters and events, neighbours, LAN prefixes.

Everything here talks to the kernel over plain netlink sockets that this module opens itself;
pyroute2 contributes its message classes (encode a request, decode a reply or an event) and
nothing else. That keeps every call synchronous or non-blocking, free of asyncio and of helper
threads, so the daemon can `poll()` the monitors' `fileno()` in its own loop.

Run it in the gateway's network namespace: either the whole process runs there (`ip netns exec`),
or pass `netns=` (a name under /run/netns or a path): sockets are then opened inside that
namespace by the calling thread and stay bound to it after the thread returns to its own.

Conntrack, what the kernel makes you know:
- A namespace's conntrack table stays empty until a ruleset there uses conntrack (`ct state`,
  NAT, ...): the hooks are registered per namespace on demand. Until then `dump()` returns [] and
  no events arrive; the /proc/sys/net/netfilter/* files may be absent too.
- Byte and packet counters exist only with `net.netfilter.nf_conntrack_acct=1` (per namespace),
  and only for connections created after it was set: the kernel attaches the counter extension
  when an entry is created. `ConntrackEntry.counted` says whether an entry has counters.
- With `net.netfilter.nf_conntrack_events=2` (the default since Linux 5.19, "when someone
  listens") the event extension is also attached at creation, and only while a listener exists:
  connections that began before the first `ConntrackMonitor` opened send no DESTROY event. The
  periodic `dump()` covers them.
- Event sockets overrun under load (ENOBUFS): the kernel drops what does not fit in the receive
  buffer. `ConntrackMonitor` asks for a large buffer (SO_RCVBUFFORCE, root), counts overruns in
  `lost_overruns` and carries on; a rise means events were lost, so resync with `dump()`.
  We do not set NETLINK_BROADCAST_ERROR: with it the kernel keeps undelivered DESTROY events
  (and their entries) around to retry, so a slow sensor could fill the gateway's table.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pyroute2.netlink import (
    NETLINK_NETFILTER,
    NETLINK_ROUTE,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_OVERRUN,
    nlmsg,
)
from pyroute2.netlink.nfnetlink import (
    NFNL_SUBSYS_CTNETLINK,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
)
from pyroute2.netlink.nfnetlink.nfctsocket import (
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_GET,
    IPCTNL_MSG_CT_NEW,
    IPSBIT_TO_NAME,
    TCP_CONNTRACK_TO_NAME,
)
from pyroute2.netlink.rtnl import (
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
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import NUD_FAILED, NUD_INCOMPLETE, NUD_NAMES, NUD_NOARP, ndmsg

ACCT_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_acct")
NETNS_RUN_DIR = Path("/run/netns")

DEFAULT_EVENT_RCVBUF = 8 << 20
"""Receive buffer asked for on event sockets. The kernel grants twice that and charges about
1.3 KiB per queued conntrack event, so about 13 000 events fit between two reads."""
DEFAULT_MAX_READ = 10_000
"""Messages one `read_*` call takes at most, so one busy socket cannot starve the daemon loop."""
DUMP_TIMEOUT = 30.0
"""Seconds a dump may take before `TimeoutError` (a million-entry table dumps in a few)."""

_SOL_NETLINK = 270
_NETLINK_ADD_MEMBERSHIP = 1
_SO_RCVBUFFORCE = 33
_CLONE_NEWNET = 0x40000000
_RECV_SIZE = 1 << 16
"""Larger than any skb the kernel builds for a dump part (≤ 32 KiB) or an event."""
_IFF_UP = 0x1
_IFF_RUNNING = 0x40
"""Operational state UP or UNKNOWN (set by the kernel from carrier and operstate)."""

_CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
_CT_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
_CT_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
_PROTO_NAMES: dict[int, Literal["tcp", "udp"]] = {
    socket.IPPROTO_TCP: "tcp",
    socket.IPPROTO_UDP: "udp",
}


class NetlinkError(OSError):
    """The kernel answered a request with an error (errno and strerror set)."""


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """One TCP or UDP connection as conntrack holds it.

    The original tuple is the LAN side before NAT (device → server); the reply tuple is what
    comes back after NAT (server → the gateway's WAN address when masqueraded). Counters are
    cumulative since the entry was created and count whole IP packets (headers included); a
    GSO/GRO super-packet counts once, so packets can be far fewer than on the wire.
    """

    proto: Literal["tcp", "udp"]
    family: Literal[4, 6]
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_dst: str
    reply_sport: int
    reply_dport: int
    bytes_orig: int
    packets_orig: int
    bytes_reply: int
    packets_reply: int
    counted: bool
    """The entry carries counters (accounting was on when it was created); else all are 0."""
    id: int
    """CTA_ID: stable for the entry's life, so a reused 5-tuple is told apart by it."""
    status: int
    """IPS_* bits (see `flags`)."""
    zone: int
    tcp_state: str | None
    """ESTABLISHED, TIME_WAIT, ... for TCP; None for UDP."""
    ts: float
    """Unix time at which this was read (dump) or received (event)."""

    @property
    def flags(self) -> tuple[str, ...]:
        """Names of the set status bits, e.g. ("SEEN_REPLY", "ASSURED", "CONFIRMED", ...)."""
        return tuple(name for bit, name in IPSBIT_TO_NAME.items() if self.status & bit)

    @property
    def nat(self) -> bool:
        """The reply does not mirror the original tuple: NAT rewrote something."""
        return (self.reply_src, self.reply_dst, self.reply_sport, self.reply_dport) != (
            self.orig_dst,
            self.orig_src,
            self.orig_dport,
            self.orig_sport,
        )


@dataclass(frozen=True, slots=True)
class ConntrackEvent:
    kind: Literal["new", "destroy"]
    """"destroy" carries the final counters when accounting was on at the entry's creation;
    "new" never carries counters (the kernel sends them with DESTROY only), so its entry has
    `counted` False and the tuple, id and status are what it is good for."""
    entry: ConntrackEntry


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


@dataclass(frozen=True, slots=True)
class AccountingResult:
    """What `enable_accounting()` achieved; true when accounting is now on."""

    ok: bool
    reason: str
    """Why not (or "already on" / "enabled"); for the log."""

    def __bool__(self) -> bool:
        return self.ok


# --- namespaces and sockets ----------------------------------------------------------------------


def _netns_path(netns: str) -> Path:
    return Path(netns) if "/" in netns else NETNS_RUN_DIR / netns


@contextlib.contextmanager
def _in_netns(netns: str | None) -> Iterator[None]:
    """Moves the calling thread into `netns` for the block (setns affects one thread only).

    Sockets and /proc/sys files opened inside keep that namespace after the thread returns.
    """
    if netns is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    target = os.open(_netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            try:
                yield
            finally:
                if libc.setns(home, _CLONE_NEWNET) != 0:
                    # A thread stuck in the wrong namespace must not carry on quietly.
                    raise RuntimeError("could not return to the original network namespace")
        finally:
            os.close(home)
    finally:
        os.close(target)


def _open_socket(
    protocol: int,
    *,
    netns: str | None,
    groups: Iterable[int] = (),
    rcvbuf: int | None = None,
) -> socket.socket:
    with _in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    try:
        if rcvbuf:
            try:
                # SO_RCVBUFFORCE passes net.core.rmem_max; it needs CAP_NET_ADMIN.
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
        for group in groups:
            sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, group)
    except BaseException:
        sock.close()
        raise
    return sock


def _split(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, flags, sequence number, offset) of each message in a netlink datagram."""
    offset = 0
    while offset + 16 <= len(data):
        length, mtype, flags, seq = struct.unpack_from("=IHHI", data, offset)
        if length < 16 or offset + length > len(data):
            raise ValueError(f"netlink message truncated at offset {offset}")
        yield mtype, flags, seq, offset
        offset += (length + 3) & ~3


def _error_code(data: bytes, offset: int) -> int:
    return -int(struct.unpack_from("=i", data, offset + 16)[0])


def _dump(
    sock: socket.socket, request: nlmsg | bytes, msg_type: int, timeout: float = DUMP_TIMEOUT
) -> Iterator[tuple[int, bytes, int]]:
    """Sends a dump request and yields (type, datagram, offset) of each reply until DONE.

    `request` is a pyroute2 message, or the raw bytes after the netlink header. `timeout` bounds
    each wait for the kernel's next part, not the whole dump: a caller may consume the parts
    slowly (the daemon takes a slice per loop turn), and the kernel keeps its place meanwhile.
    """
    seq = int(time.monotonic_ns() & 0x7FFFFFFF) or 1
    flags = NLM_F_REQUEST | NLM_F_DUMP
    if isinstance(request, bytes):
        sock.send(struct.pack("=IHHII", 16 + len(request), msg_type, flags, seq, 0) + request)
    else:
        request["header"]["type"] = msg_type
        request["header"]["flags"] = flags
        request["header"]["sequence_number"] = seq
        request.encode()
        sock.send(request.data)
    while True:
        sock.settimeout(timeout)
        try:
            data = sock.recv(_RECV_SIZE)
        except TimeoutError:
            raise TimeoutError(f"netlink dump: no reply for {timeout:.0f} s") from None
        for mtype, _flags, mseq, offset in _split(data):
            if mseq != seq:
                continue  # a stale reply to an earlier, abandoned request
            if mtype == NLMSG_DONE:
                return
            if mtype == NLMSG_ERROR:
                code = _error_code(data, offset)
                if code:
                    raise NetlinkError(code, os.strerror(code))
                continue
            yield mtype, data, offset


class _EventSocket:
    """A non-blocking multicast netlink socket that counts overruns and undecodable messages."""

    def __init__(
        self, protocol: int, groups: Iterable[int], netns: str | None, rcvbuf: int | None
    ) -> None:
        self._sock = _open_socket(protocol, netns=netns, groups=groups, rcvbuf=rcvbuf)
        self._sock.setblocking(False)
        self.lost_overruns = 0
        """ENOBUFS seen: each means one or more events were dropped by the kernel."""
        self.decode_errors = 0
        self.received = 0
        """Messages taken off the socket (any type)."""

    @property
    def rcvbuf(self) -> int:
        """The receive buffer the kernel granted (it doubles what was asked, for overhead)."""
        return int(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def drain(self, handle: Callable[[int, int, bytes, int], None], max_messages: int) -> None:
        """Calls `handle(type, flags, data, offset)` for each ready message, never blocking."""
        taken = 0
        while taken < max_messages:
            try:
                data = self._sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The socket stays usable; what was queued before the overrun is still there.
                    self.lost_overruns += 1
                    taken += 1
                    continue
                if exc.errno == errno.EINTR:
                    continue
                raise
            try:
                for mtype, flags, _seq, offset in _split(data):
                    taken += 1
                    self.received += 1
                    if mtype == NLMSG_OVERRUN:
                        self.lost_overruns += 1
                        continue
                    try:
                        handle(mtype, flags, data, offset)
                    except Exception:
                        # Malformed or unexpected input is counted, never raised (STYLE).
                        self.decode_errors += 1
            except ValueError:
                self.decode_errors += 1  # a truncated datagram: the rest of it is lost


# --- conntrack -----------------------------------------------------------------------------------


# Attribute numbers from linux/netfilter/nfnetlink_conntrack.h (stable kernel ABI).
_CTA_TUPLE_ORIG = 1
_CTA_TUPLE_REPLY = 2
_CTA_STATUS = 3
_CTA_PROTOINFO = 4
_CTA_COUNTERS_ORIG = 9
_CTA_COUNTERS_REPLY = 10
_CTA_ID = 12
_CTA_ZONE = 18
_CTA_STATUS_MASK = 26
_IPS_ASSURED = 1 << 2
_CTA_TUPLE_IP = 1
_CTA_TUPLE_PROTO = 2
_CTA_IP_V4_SRC, _CTA_IP_V4_DST, _CTA_IP_V6_SRC, _CTA_IP_V6_DST = 1, 2, 3, 4
_CTA_PROTO_NUM, _CTA_PROTO_SRC_PORT, _CTA_PROTO_DST_PORT = 1, 2, 3
_CTA_COUNTERS_PACKETS, _CTA_COUNTERS_BYTES = 1, 2
_CTA_COUNTERS32_PACKETS, _CTA_COUNTERS32_BYTES = 3, 4
_CTA_PROTOINFO_TCP = 1
_CTA_PROTOINFO_TCP_STATE = 1
_NLA_TYPE_MASK = 0x3FFF
"""Drops NLA_F_NESTED and NLA_F_NET_BYTEORDER from an attribute's type."""
_NFGENMSG_LEN = 4

_Attrs = dict[int, tuple[int, int]]
"""Attribute type → (start, end) of its payload in the datagram."""


def _attrs(data: bytes, start: int, end: int) -> _Attrs:
    out: _Attrs = {}
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4 or start + length > end:
            raise ValueError(f"netlink attribute overruns its container at {start}")
        out.setdefault(kind & _NLA_TYPE_MASK, (start + 4, start + length))
        start += (length + 3) & ~3
    return out


def _nested(data: bytes, attrs: _Attrs, kind: int) -> _Attrs | None:
    span = attrs.get(kind)
    return None if span is None else _attrs(data, *span)


def _be(data: bytes, span: tuple[int, int] | None) -> int:
    """A big-endian unsigned integer attribute (u8, be16, be32 or be64); 0 when absent."""
    return 0 if span is None else int.from_bytes(data[span[0] : span[1]], "big")


def _tuple(data: bytes, attrs: _Attrs, kind: int) -> tuple[int, int, str, str, int, int]:
    """(family 4/6, proto number, src, dst, sport, dport) of CTA_TUPLE_ORIG or _REPLY."""
    tup = _nested(data, attrs, kind)
    ip = _nested(data, tup, _CTA_TUPLE_IP) if tup else None
    proto = _nested(data, tup, _CTA_TUPLE_PROTO) if tup else None
    if tup is None or ip is None or proto is None:
        raise ValueError("conntrack message without both tuples")
    if _CTA_IP_V4_SRC in ip:
        family, af, src, dst = 4, socket.AF_INET, ip.get(_CTA_IP_V4_SRC), ip.get(_CTA_IP_V4_DST)
    else:
        family, af, src, dst = 6, socket.AF_INET6, ip.get(_CTA_IP_V6_SRC), ip.get(_CTA_IP_V6_DST)
    if src is None or dst is None:
        raise ValueError("conntrack tuple without addresses")
    return (
        family,
        _be(data, proto.get(_CTA_PROTO_NUM)),
        socket.inet_ntop(af, data[src[0] : src[1]]),
        socket.inet_ntop(af, data[dst[0] : dst[1]]),
        _be(data, proto.get(_CTA_PROTO_SRC_PORT)),
        _be(data, proto.get(_CTA_PROTO_DST_PORT)),
    )


def _counters(data: bytes, attrs: _Attrs, kind: int) -> tuple[int, int] | None:
    """(bytes, packets) of CTA_COUNTERS_ORIG or _REPLY; None without accounting."""
    ctr = _nested(data, attrs, kind)
    if ctr is None:
        return None
    nbytes = ctr.get(_CTA_COUNTERS_BYTES) or ctr.get(_CTA_COUNTERS32_BYTES)
    packets = ctr.get(_CTA_COUNTERS_PACKETS) or ctr.get(_CTA_COUNTERS32_PACKETS)
    return _be(data, nbytes), _be(data, packets)


def parse_entry(data: bytes, offset: int, ts: float) -> ConntrackEntry | None:
    """A `ConntrackEntry` from the ctnetlink message at `offset` (its netlink header) of a
    datagram: a dump reply or an event. None for protocols other than TCP and UDP.

    Raises ValueError for a damaged message. Counters come from CTA_COUNTERS_ORIG/_REPLY, which
    pyroute2's high-level `Conntrack` objects leave out. The attributes are walked here rather
    than with pyroute2's `nfct_msg`: its generic, lazily nested decoder took 180 µs a message
    on the x86 core where this was measured (6 000 events/s; a 10 000-entry table would take
    seconds to dump on a router's CPU), this walk 15 µs (50 000 events/s).
    """
    length = int(struct.unpack_from("=I", data, offset)[0])
    end = offset + length
    if length < 16 + _NFGENMSG_LEN or end > len(data):
        raise ValueError("conntrack message too short")
    attrs = _attrs(data, offset + 16 + _NFGENMSG_LEN, end)
    family, pnum, osrc, odst, osport, odport = _tuple(data, attrs, _CTA_TUPLE_ORIG)
    proto = _PROTO_NAMES.get(pnum)
    if proto is None:
        return None
    _, _, rsrc, rdst, rsport, rdport = _tuple(data, attrs, _CTA_TUPLE_REPLY)
    c_orig = _counters(data, attrs, _CTA_COUNTERS_ORIG)
    c_reply = _counters(data, attrs, _CTA_COUNTERS_REPLY)
    tcp_state = None
    if proto == "tcp":
        info = _nested(data, attrs, _CTA_PROTOINFO)
        tcp = _nested(data, info, _CTA_PROTOINFO_TCP) if info else None
        if tcp and _CTA_PROTOINFO_TCP_STATE in tcp:
            state = _be(data, tcp[_CTA_PROTOINFO_TCP_STATE])
            tcp_state = TCP_CONNTRACK_TO_NAME.get(state, str(state))
    return ConntrackEntry(
        proto=proto,
        family=6 if family == 6 else 4,
        orig_src=osrc,
        orig_dst=odst,
        orig_sport=osport,
        orig_dport=odport,
        reply_src=rsrc,
        reply_dst=rdst,
        reply_sport=rsport,
        reply_dport=rdport,
        bytes_orig=c_orig[0] if c_orig else 0,
        packets_orig=c_orig[1] if c_orig else 0,
        bytes_reply=c_reply[0] if c_reply else 0,
        packets_reply=c_reply[1] if c_reply else 0,
        counted=c_orig is not None or c_reply is not None,
        id=_be(data, attrs.get(_CTA_ID)),
        status=_be(data, attrs.get(_CTA_STATUS)),
        zone=_be(data, attrs.get(_CTA_ZONE)),
        tcp_state=tcp_state,
        ts=ts,
    )


def dump(
    *, netns: str | None = None, timeout: float = DUMP_TIMEOUT, assured_only: bool = False
) -> list[ConntrackEntry]:
    """Every TCP and UDP conntrack entry of both address families, with counters.

    Raises OSError when netlink cannot be opened (no permission: it needs CAP_NET_ADMIN) and
    `TimeoutError` when the kernel stops answering for `timeout` seconds. `assured_only`: see
    `iter_dump`.
    """
    return list(iter_dump(netns=netns, timeout=timeout, assured_only=assured_only))


def iter_dump(
    *, netns: str | None = None, timeout: float = DUMP_TIMEOUT, assured_only: bool = False
) -> Generator[ConntrackEntry, None, None]:
    """`dump()`, lazily: the kernel produces the next part only when this asks for it, so a
    caller can take a big table in slices between other work. Close the iterator (or exhaust
    it) to release the socket.

    `assured_only` asks for the entries with IPS_ASSURED only: TCP connections past their
    handshake and UDP streams that saw replies for a while. The kernel filters them (CTA_STATUS
    with CTA_STATUS_MASK, Linux 5.19+; older kernels ignore the attributes and the filter is
    applied here instead): a SYN flood's or a scan's half-open entries, which only ever carry
    a packet or two, are not sent at all. Their counters arrive with their DESTROY events.
    """
    # nfgenmsg: AF_UNSPEC (both IPv4 and IPv6 in one dump), version 0, resource id 0.
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
    if assured_only:
        for kind in (_CTA_STATUS, _CTA_STATUS_MASK):
            body += struct.pack("=HH", 8, kind) + struct.pack(">I", _IPS_ASSURED)
    with _open_socket(NETLINK_NETFILTER, netns=netns) as sock:
        ts = time.time()
        for mtype, data, offset in _dump(sock, body, _CT_GET, timeout):
            if mtype != _CT_NEW:
                continue
            try:
                entry = parse_entry(data, offset, ts)
            except ValueError:  # damaged: skipped, like other protocols
                continue
            if entry is not None and (entry.status & _IPS_ASSURED or not assured_only):
                yield entry


class ConntrackMonitor:
    """NEW and DESTROY conntrack events, read without blocking.

    ```
    with ConntrackMonitor() as mon:
        poller.register(mon.fileno(), select.POLLIN)
        ...
        for event in mon.read_events(): ...
    ```
    Open it before the traffic it should see (see the module docstring on
    nf_conntrack_events=2). Watch `lost_overruns`: when it rises, events were lost.
    """

    def __init__(
        self,
        *,
        netns: str | None = None,
        rcvbuf: int = DEFAULT_EVENT_RCVBUF,
        new: bool = True,
        destroy: bool = True,
    ) -> None:
        groups = [NFNLGRP_CONNTRACK_NEW] if new else []
        if destroy:
            groups.append(NFNLGRP_CONNTRACK_DESTROY)
        self._events = _EventSocket(NETLINK_NETFILTER, groups, netns, rcvbuf)
        self._out: list[ConntrackEvent] = []

    @property
    def lost_overruns(self) -> int:
        """Receive-buffer overruns (ENOBUFS) so far: events were lost each time."""
        return self._events.lost_overruns

    @property
    def decode_errors(self) -> int:
        return self._events.decode_errors

    @property
    def received(self) -> int:
        return self._events.received

    @property
    def rcvbuf(self) -> int:
        return self._events.rcvbuf

    def stats(self) -> dict[str, int]:
        """The event counters, for the daemon's snapshot."""
        return {
            "received": self.received,
            "lost_overruns": self.lost_overruns,
            "decode_errors": self.decode_errors,
        }

    def fileno(self) -> int:
        return self._events.fileno()

    def _handle(self, mtype: int, flags: int, data: bytes, offset: int) -> None:
        if mtype == _CT_NEW:
            kind: Literal["new", "destroy"] = "new"
        elif mtype == _CT_DELETE:
            kind = "destroy"
        else:
            return
        entry = parse_entry(data, offset, time.time())
        if entry is not None:
            self._out.append(ConntrackEvent(kind, entry))

    def read_events(self, max_messages: int = DEFAULT_MAX_READ) -> list[ConntrackEvent]:
        """The TCP/UDP events ready now (at most `max_messages` read); never blocks."""
        self._events.drain(self._handle, max_messages)
        out, self._out = self._out, []
        return out

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> ConntrackMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def accounting_enabled(*, netns: str | None = None, path: Path = ACCT_SYSCTL) -> bool | None:
    """Whether nf_conntrack_acct is on; None when the sysctl is absent (conntrack not loaded
    in this namespace yet, or no conntrack at all) or unreadable."""
    try:
        with _in_netns(netns), open(path, encoding="ascii") as fh:
            return fh.read().strip() not in ("", "0")
    except (OSError, ValueError):
        return None


def enable_accounting(*, netns: str | None = None, path: Path = ACCT_SYSCTL) -> AccountingResult:
    """Sets nf_conntrack_acct=1. Only connections created afterwards get counters."""
    if accounting_enabled(netns=netns, path=path):
        return AccountingResult(True, "already on")
    try:
        with _in_netns(netns):
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # no O_CREAT: absent stays absent
        try:
            os.write(fd, b"1\n")
        finally:
            os.close(fd)
    except FileNotFoundError as exc:
        if exc.filename != str(path):
            return AccountingResult(False, f"no network namespace {netns!r}: {exc.filename}")
        return AccountingResult(
            False,
            f"{path} is absent: conntrack is not active in this namespace "
            "(load a ruleset that uses ct state or NAT first)",
        )
    except OSError as exc:
        # EACCES/EPERM without CAP_NET_ADMIN over the namespace; EROFS when /proc/sys is
        # mounted read-only (containers).
        return AccountingResult(False, f"cannot write {path}: {exc.strerror or exc}")
    if accounting_enabled(netns=netns, path=path):
        return AccountingResult(True, "enabled")
    return AccountingResult(False, f"wrote 1 to {path} but it still reads 0")


# --- neighbours, addresses, links --------------------------------------------------------------


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
        self._sock = _open_socket(NETLINK_ROUTE, netns=netns)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> _Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def links(self) -> dict[int, tuple[str, int]]:
        """ifindex → (name, IFF_* flags)."""
        out = {}
        for msg in _decoded(_dump(self._sock, ifinfmsg(), RTM_GETLINK), RTM_NEWLINK, ifinfmsg):
            name = msg.get_attr("IFLA_IFNAME")
            if name:
                out[int(msg["index"])] = (str(name), int(msg["flags"]))
        return out

    def addresses(self) -> list[tuple[int, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
        """(ifindex, address/prefix) of every address; link-local and host scope left out."""
        out = []
        for msg in _decoded(_dump(self._sock, ifaddrmsg(), RTM_GETADDR), RTM_NEWADDR, ifaddrmsg):
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
        for msg in _decoded(_dump(self._sock, ndmsg(), RTM_GETNEIGH), RTM_NEWNEIGH, ndmsg):
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


def own_addresses(*, netns: str | None = None) -> list[str]:
    """Every global address this host (namespace) holds, on any interface: what the gateway's
    own connections come from."""
    with _Rtnl(netns) as rtnl:
        return list(dict.fromkeys(str(iface.ip) for _, iface in rtnl.addresses()))


def local_addresses(interfaces: Collection[str], *, netns: str | None = None) -> list[str]:
    """The addresses (no prefix length) the host holds on `interfaces`, link-local left out:
    where the gateway's own services (its DNS resolver) answer the LAN."""
    with _Rtnl(netns) as rtnl:
        links = rtnl.links()
        addresses = rtnl.addresses()
    out: list[str] = []
    for index, iface in addresses:
        name = links.get(index, (None, 0))[0]
        if name in interfaces and not iface.ip.is_link_local and str(iface.ip) not in out:
            out.append(str(iface.ip))
    return out


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


class NeighbourMonitor:
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
        self._events = _EventSocket(NETLINK_ROUTE, groups, netns, rcvbuf)
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

    @property
    def lost_overruns(self) -> int:
        return self._events.lost_overruns

    @property
    def decode_errors(self) -> int:
        return self._events.decode_errors

    def fileno(self) -> int:
        return self._events.fileno()

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

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> NeighbourMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
