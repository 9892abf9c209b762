"""The one netlink module, and the only one importing pyroute2: sockets, namespaces, framing.

Everything in sensor.kernel talks to the kernel over plain netlink sockets opened here;
pyroute2 contributes its message classes (encode a request, decode a reply or an event) and
nothing else. That keeps every call synchronous or non-blocking, free of asyncio and of helper
threads, so the daemon can `poll()` the monitors' `fileno()` in its own loop.

- `in_netns` / `open_socket`: a socket opened in the gateway's network namespace: either the
  whole process runs there (`ip netns exec`), or pass `netns=` (a name under /run/netns or a
  path): sockets are then opened inside that namespace by the calling thread and stay bound to
  it after the thread returns to its own.
- `split`, `request_dump`, `EventSocket`: netlink message framing, dumps, multicast event
  sockets that count overruns.
- `parse_attrs`, `find_attr`, `nla`: netlink attributes, read and written.
- pyroute2's constants and message classes, re-exported for sensor.kernel.conntrack and
  sensor.kernel.links.

Event sockets overrun under load (ENOBUFS): the kernel drops what does not fit in the receive
buffer. `EventSocket` asks for a large buffer (SO_RCVBUFFORCE, root), counts overruns in
`lost_overruns` and carries on; a rise means events were lost, so the owner resyncs with a dump.
We do not set NETLINK_BROADCAST_ERROR: with it the kernel keeps undelivered DESTROY events
(and their entries) around to retry, so a slow sensor could fill the gateway's table.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Self

from pyroute2.netlink import (
    NETLINK_NETFILTER,
    NETLINK_ROUTE,
    NLM_F_ACK,
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

__all__ = [
    "IPCTNL_MSG_CT_DELETE",
    "IPCTNL_MSG_CT_GET",
    "IPCTNL_MSG_CT_NEW",
    "IPSBIT_TO_NAME",
    "NETLINK_NETFILTER",
    "NETLINK_ROUTE",
    "NFNLGRP_CONNTRACK_DESTROY",
    "NFNLGRP_CONNTRACK_NEW",
    "NFNL_SUBSYS_CTNETLINK",
    "NLMSG_ERROR",
    "NLM_F_ACK",
    "NLM_F_REQUEST",
    "NUD_FAILED",
    "NUD_INCOMPLETE",
    "NUD_NAMES",
    "NUD_NOARP",
    "RTM_DELLINK",
    "RTM_DELNEIGH",
    "RTM_GETADDR",
    "RTM_GETLINK",
    "RTM_GETNEIGH",
    "RTM_NEWADDR",
    "RTM_NEWLINK",
    "RTM_NEWNEIGH",
    "RTNLGRP_LINK",
    "RTNLGRP_NEIGH",
    "TCP_CONNTRACK_TO_NAME",
    "ifaddrmsg",
    "ifinfmsg",
    "ndmsg",
    "nlmsg",
]

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
NLMSGHDR = struct.Struct("=IHHII")
"""nlmsghdr: length, type, flags, sequence, port id (host byte order)."""
NLATTR = struct.Struct("=HH")
"""nlattr: length, type (host byte order)."""
RECV_SIZE = 1 << 16
"""Larger than any skb the kernel builds for a dump part (≤ 32 KiB) or an event."""


class NetlinkError(OSError):
    """The kernel answered a request with an error (errno and strerror set)."""


# --- namespaces and sockets ----------------------------------------------------------------------


def _netns_path(netns: str) -> Path:
    return Path(netns) if "/" in netns else NETNS_RUN_DIR / netns


@contextlib.contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
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


def set_rcvbuf(sock: socket.socket, size: int) -> None:
    """SO_RCVBUFFORCE (past net.core.rmem_max; needs CAP_NET_ADMIN), else whatever SO_RCVBUF
    grants."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


_SO_MEMINFO = 55
"""getsockopt: the socket's memory counters (Linux 4.12+); the first is the receive queue."""


def receive_backlog(sock: socket.socket) -> int | None:
    """Bytes (as the kernel charges them: buffer sizes, not payload) waiting in `sock`'s
    receive queue: what the kernel handed over and the reader has not taken yet. None when
    the kernel cannot say (before 4.12) or the socket is closed."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 4)
    except OSError:
        return None
    return int.from_bytes(raw[:4], sys.byteorder) if len(raw) >= 4 else None


def open_socket(
    protocol: int,
    *,
    netns: str | None,
    groups: Iterable[int] = (),
    rcvbuf: int | None = None,
) -> socket.socket:
    with in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    try:
        if rcvbuf:
            set_rcvbuf(sock, rcvbuf)
        sock.bind((0, 0))
        for group in groups:
            sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, group)
    except BaseException:
        sock.close()
        raise
    return sock


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    """One netlink message: the header (port id 0: the kernel fills in ours), then `body`."""
    return NLMSGHDR.pack(16 + len(body), mtype, flags, seq, 0) + body


def split(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, flags, sequence number, offset) of each message in a netlink datagram."""
    offset = 0
    while offset + 16 <= len(data):
        length, mtype, flags, seq = struct.unpack_from("=IHHI", data, offset)
        if length < 16 or offset + length > len(data):
            raise ValueError(f"netlink message truncated at offset {offset}")
        yield mtype, flags, seq, offset
        offset += (length + 3) & ~3


def error_code(data: bytes | bytearray | memoryview, offset: int) -> int:
    """The errno of the NLMSG_ERROR message at `offset` (0: an acknowledgement)."""
    return -int(struct.unpack_from("=i", data, offset + 16)[0])


def request_dump(
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
        sock.send(message(msg_type, flags, seq, request))
    else:
        request["header"]["type"] = msg_type
        request["header"]["flags"] = flags
        request["header"]["sequence_number"] = seq
        request.encode()
        sock.send(request.data)
    while True:
        sock.settimeout(timeout)
        try:
            data = sock.recv(RECV_SIZE)
        except TimeoutError:
            raise TimeoutError(f"netlink dump: no reply for {timeout:.0f} s") from None
        for mtype, _flags, mseq, offset in split(data):
            if mseq != seq:
                continue  # a stale reply to an earlier, abandoned request
            if mtype == NLMSG_DONE:
                return
            if mtype == NLMSG_ERROR:
                code = error_code(data, offset)
                if code:
                    raise NetlinkError(code, os.strerror(code))
                continue
            yield mtype, data, offset


class EventSocket:
    """A non-blocking multicast netlink socket that counts overruns and undecodable messages."""

    def __init__(
        self, protocol: int, groups: Iterable[int], netns: str | None, rcvbuf: int | None
    ) -> None:
        self._sock = open_socket(protocol, netns=netns, groups=groups, rcvbuf=rcvbuf)
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

    def backlog(self) -> int | None:
        """Bytes of events waiting in the socket (see `receive_backlog`)."""
        return receive_backlog(self._sock)

    def close(self) -> None:
        self._sock.close()

    def drain(self, handle: Callable[[int, int, bytes, int], None], max_messages: int) -> None:
        """Calls `handle(type, flags, data, offset)` for each ready message, never blocking."""
        taken = 0
        while taken < max_messages:
            try:
                data = self._sock.recv(RECV_SIZE)
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
                for mtype, flags, _seq, offset in split(data):
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


class EventMonitor:
    """What a monitor reading an `EventSocket` offers besides its events: the socket's
    counters, its descriptor for poll/select, and closing (also as a context manager)."""

    _events: EventSocket

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

    def backlog(self) -> int | None:
        """Bytes of events the kernel queued that are not read yet: after a burst (a flood of
        connections ending), how far behind the reader is."""
        return self._events.backlog()

    def fileno(self) -> int:
        return self._events.fileno()

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- attributes --------------------------------------------------------------------------------

NLA_TYPE_MASK = 0x3FFF
"""Drops NLA_F_NESTED and NLA_F_NET_BYTEORDER from an attribute's type."""
NFGENMSG_LEN = 4

Attrs = dict[int, tuple[int, int]]
"""Attribute type → (start, end) of its payload in the datagram."""


def parse_attrs(data: bytes, start: int, end: int) -> Attrs:
    """The attributes in data[start:end] (the first of each type); ValueError if damaged."""
    out: Attrs = {}
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4 or start + length > end:
            raise ValueError(f"netlink attribute overruns its container at {start}")
        out.setdefault(kind & NLA_TYPE_MASK, (start + 4, start + length))
        start += (length + 3) & ~3
    return out


def nested_attrs(data: bytes, attrs: Attrs, kind: int) -> Attrs | None:
    """The attributes nested in attribute `kind`; None when it is absent."""
    span = attrs.get(kind)
    return None if span is None else parse_attrs(data, *span)


def be_uint(data: bytes, span: tuple[int, int] | None) -> int:
    """A big-endian unsigned integer attribute (u8, be16, be32 or be64); 0 when absent."""
    return 0 if span is None else int.from_bytes(data[span[0] : span[1]], "big")


def find_attr(attrs: bytes, wanted: int) -> bytes | None:
    """The payload of the first attribute of type `wanted` in `attrs`, or None."""
    pos = 0
    while pos + 4 <= len(attrs):
        alen, atype = NLATTR.unpack_from(attrs, pos)
        if alen < 4:
            return None
        if atype & NLA_TYPE_MASK == wanted:
            return attrs[pos + 4 : pos + alen]
        pos += (alen + 3) & ~3
    return None


def nla(atype: int, data: bytes) -> bytes:
    """One attribute, padded to four bytes."""
    raw = NLATTR.pack(4 + len(data), atype) + data
    return raw + b"\0" * (-len(raw) % 4)
