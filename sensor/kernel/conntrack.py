"""Conntrack over ctnetlink: entries with their counters (dumps), NEW and DESTROY events, and
the one writer of the accounting sysctl (net.netfilter.nf_conntrack_acct).

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
- Event sockets overrun under load (ENOBUFS, see sensor.kernel.netlink): `ConntrackMonitor`
  counts overruns in `lost_overruns`; a rise means events were lost, so resync with `dump()`.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sensor.kernel.netlink import (
    DEFAULT_EVENT_RCVBUF,
    DEFAULT_MAX_READ,
    DUMP_TIMEOUT,
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_GET,
    IPCTNL_MSG_CT_NEW,
    IPSBIT_TO_NAME,
    NETLINK_NETFILTER,
    NFGENMSG_LEN,
    NFNL_SUBSYS_CTNETLINK,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    TCP_CONNTRACK_TO_NAME,
    Attrs,
    EventMonitor,
    EventSocket,
    be_uint,
    in_netns,
    nested_attrs,
    open_socket,
    parse_attrs,
    request_dump,
)

ACCT_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_acct")

_CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
_CT_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
_CT_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
_PROTO_NAMES: dict[int, Literal["tcp", "udp"]] = {
    socket.IPPROTO_TCP: "tcp",
    socket.IPPROTO_UDP: "udp",
}


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
class AccountingResult:
    """What `enable_accounting()` achieved; true when accounting is now on."""

    ok: bool
    reason: str
    """Why not (or "already on" / "enabled"); for the log."""

    def __bool__(self) -> bool:
        return self.ok


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


def _tuple(data: bytes, attrs: Attrs, kind: int) -> tuple[int, int, str, str, int, int]:
    """(family 4/6, proto number, src, dst, sport, dport) of CTA_TUPLE_ORIG or _REPLY."""
    tup = nested_attrs(data, attrs, kind)
    ip = nested_attrs(data, tup, _CTA_TUPLE_IP) if tup else None
    proto = nested_attrs(data, tup, _CTA_TUPLE_PROTO) if tup else None
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
        be_uint(data, proto.get(_CTA_PROTO_NUM)),
        socket.inet_ntop(af, data[src[0] : src[1]]),
        socket.inet_ntop(af, data[dst[0] : dst[1]]),
        be_uint(data, proto.get(_CTA_PROTO_SRC_PORT)),
        be_uint(data, proto.get(_CTA_PROTO_DST_PORT)),
    )


def _counters(data: bytes, attrs: Attrs, kind: int) -> tuple[int, int] | None:
    """(bytes, packets) of CTA_COUNTERS_ORIG or _REPLY; None without accounting."""
    ctr = nested_attrs(data, attrs, kind)
    if ctr is None:
        return None
    nbytes = ctr.get(_CTA_COUNTERS_BYTES) or ctr.get(_CTA_COUNTERS32_BYTES)
    packets = ctr.get(_CTA_COUNTERS_PACKETS) or ctr.get(_CTA_COUNTERS32_PACKETS)
    return be_uint(data, nbytes), be_uint(data, packets)


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
    if length < 16 + NFGENMSG_LEN or end > len(data):
        raise ValueError("conntrack message too short")
    attrs = parse_attrs(data, offset + 16 + NFGENMSG_LEN, end)
    family, pnum, osrc, odst, osport, odport = _tuple(data, attrs, _CTA_TUPLE_ORIG)
    proto = _PROTO_NAMES.get(pnum)
    if proto is None:
        return None
    _, _, rsrc, rdst, rsport, rdport = _tuple(data, attrs, _CTA_TUPLE_REPLY)
    c_orig = _counters(data, attrs, _CTA_COUNTERS_ORIG)
    c_reply = _counters(data, attrs, _CTA_COUNTERS_REPLY)
    tcp_state = None
    if proto == "tcp":
        info = nested_attrs(data, attrs, _CTA_PROTOINFO)
        tcp = nested_attrs(data, info, _CTA_PROTOINFO_TCP) if info else None
        if tcp and _CTA_PROTOINFO_TCP_STATE in tcp:
            state = be_uint(data, tcp[_CTA_PROTOINFO_TCP_STATE])
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
        id=be_uint(data, attrs.get(_CTA_ID)),
        status=be_uint(data, attrs.get(_CTA_STATUS)),
        zone=be_uint(data, attrs.get(_CTA_ZONE)),
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
    with open_socket(NETLINK_NETFILTER, netns=netns) as sock:
        ts = time.time()
        for mtype, data, offset in request_dump(sock, body, _CT_GET, timeout):
            if mtype != _CT_NEW:
                continue
            try:
                entry = parse_entry(data, offset, ts)
            except ValueError:  # damaged: skipped, like other protocols
                continue
            if entry is not None and (entry.status & _IPS_ASSURED or not assured_only):
                yield entry


class ConntrackMonitor(EventMonitor):
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
        self._events = EventSocket(NETLINK_NETFILTER, groups, netns, rcvbuf)
        self._out: list[ConntrackEvent] = []

    def stats(self) -> dict[str, int]:
        """The event counters, for the daemon's snapshot."""
        return {
            "received": self.received,
            "lost_overruns": self.lost_overruns,
            "decode_errors": self.decode_errors,
        }

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


def accounting_enabled(*, netns: str | None = None, path: Path = ACCT_SYSCTL) -> bool | None:
    """Whether nf_conntrack_acct is on; None when the sysctl is absent (conntrack not loaded
    in this namespace yet, or no conntrack at all) or unreadable."""
    try:
        with in_netns(netns), open(path, encoding="ascii") as fh:
            return fh.read().strip() not in ("", "0")
    except (OSError, ValueError):
        return None


def enable_accounting(*, netns: str | None = None, path: Path = ACCT_SYSCTL) -> AccountingResult:
    """Sets nf_conntrack_acct=1. Only connections created afterwards get counters."""
    if accounting_enabled(netns=netns, path=path):
        return AccountingResult(True, "already on")
    try:
        with in_netns(netns):
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
