"""nfnetlink_log (NFLOG): the packets the capture rules of sensor.kernel.nftables send to a log
group, read from a netlink socket and handed on as Linux cooked v2 (SLL2) frames."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from sensor.decode.link import (
    ARPHRD_ETHER,
    ARPHRD_VOID,
    LINKTYPE_LINUX_SLL2,
    PACKET_HOST,
    PACKET_OUTGOING,
    SLL2_HEADER,
)
from sensor.kernel.netlink import (
    NETLINK_NETFILTER,
    NLA_TYPE_MASK,
    NLATTR,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSGHDR,
    error_code,
    message,
    nla,
    receive_backlog,
    set_rcvbuf,
)
from sensor.kernel.nftables import NFULNL_COPY_RANGE_MAX, OVER_BUDGET_COUNTER, NftCounter
from sensor.sources.live import LiveCaptureError
from sensor.sources.pcap import Packet

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = NFNL_SUBSYS_ULOG << 8
NFULNL_MSG_CONFIG = (NFNL_SUBSYS_ULOG << 8) | 1

NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULA_CFG_FLAGS = 6
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
NFULNL_CFG_F_SEQ = 0x0001

NFULA_PACKET_HDR = 1
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_HWADDR = 8
NFULA_PAYLOAD = 9
NFULA_SEQ = 12
NFULA_HWTYPE = 15

NF_INET_LOCAL_OUT = 3

_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">QQ")


@dataclass(slots=True)
class NflogCounters:
    messages: int = 0
    """Packet messages parsed."""
    malformed: int = 0
    """Messages or attributes that did not parse (skipped)."""
    lost: int = 0
    """Messages the kernel numbered but never delivered (gaps in NFULA_SEQ)."""
    errors: int = 0
    """Netlink error messages not answering a request of ours."""


class NflogParser:
    """Turns nfnetlink_log datagrams into `Packet`s with an SLL2 header. Pure: no I/O."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.counters = NflogCounters()
        self._now = now
        self._next_seq: int | None = None
        self.acks: dict[int, int] = {}
        """Netlink sequence number → errno (0 = success) of answers to our requests."""

    def expect_seq(self, seq: int) -> None:
        """The sequence number of the next message (gaps after it count as lost)."""
        self._next_seq = seq

    def parse(self, buf: bytes | bytearray | memoryview, n: int, out: list[Packet]) -> None:
        """Append the packets of the datagram `buf[:n]` to `out`; never raises on content."""
        mv = memoryview(buf)
        pos = 0
        c = self.counters
        now: float | None = None
        while pos + 16 <= n:
            mlen, mtype, _flags, mseq, _pid = NLMSGHDR.unpack_from(mv, pos)
            if mlen < 16 or pos + mlen > n:
                c.malformed += 1
                return
            if mtype == NFULNL_MSG_PACKET:
                try:
                    pkt = self._packet(mv, pos + 16, pos + mlen)
                except (struct.error, ValueError, IndexError):
                    pkt = None
                if pkt is None:
                    c.malformed += 1
                else:
                    c.messages += 1
                    if pkt[0] < 0:
                        if now is None:
                            now = self._now()
                        pkt = (now, pkt[1], pkt[2])
                    out.append(pkt)
            elif mtype == NLMSG_ERROR:
                if mlen >= 20:
                    err = error_code(mv, pos)
                    self.acks[mseq] = err
                    if len(self.acks) > 64:
                        self.acks.pop(next(iter(self.acks)))
                else:
                    c.malformed += 1
            pos += (mlen + 3) & ~3

    def _packet(self, mv: memoryview, start: int, end: int) -> Packet | None:
        """One NFULNL_MSG_PACKET (after its nlmsghdr): nfgenmsg, then attributes."""
        pos = start + 4  # nfgenmsg: family, version, group
        proto = 0
        hook = -1
        indev = outdev = 0
        hwtype = -1
        hwaddr = b""
        payload: bytes | None = None
        ts = -1.0
        seq: int | None = None
        while pos + 4 <= end:
            alen, atype = NLATTR.unpack_from(mv, pos)
            if alen < 4 or pos + alen > end:
                return None
            d = pos + 4
            atype &= NLA_TYPE_MASK
            if atype == NFULA_PAYLOAD:
                payload = bytes(mv[d : pos + alen])
            elif atype == NFULA_PACKET_HDR:
                proto = _BE16.unpack_from(mv, d)[0]
                hook = mv[d + 2]
            elif atype == NFULA_HWADDR:
                hlen = min(_BE16.unpack_from(mv, d)[0], 8, alen - 8)
                hwaddr = bytes(mv[d + 4 : d + 4 + hlen])
            elif atype == NFULA_IFINDEX_INDEV:
                indev = _BE32.unpack_from(mv, d)[0]
            elif atype == NFULA_IFINDEX_OUTDEV:
                outdev = _BE32.unpack_from(mv, d)[0]
            elif atype == NFULA_TIMESTAMP:
                sec, usec = _TIMESTAMP.unpack_from(mv, d)
                ts = sec + usec * 1e-6
            elif atype == NFULA_SEQ:
                seq = _BE32.unpack_from(mv, d)[0]
            elif atype == NFULA_HWTYPE:
                hwtype = _BE16.unpack_from(mv, d)[0]
            pos += (alen + 3) & ~3
        if seq is not None:
            expect = self._next_seq
            if expect is not None and seq != expect:
                gap = (seq - expect) & 0xFFFFFFFF
                if gap < 0x80000000:  # a step back is a rebind, not a loss
                    self.counters.lost += gap
            self._next_seq = (seq + 1) & 0xFFFFFFFF
        if payload is None or not payload:
            return None
        if proto not in (0x0800, 0x86DD):
            version = payload[0] >> 4
            proto = 0x0800 if version == 4 else 0x86DD if version == 6 else proto
        # Packets the gateway sends have no input device and no link header yet: outgoing.
        if indev and hook != NF_INET_LOCAL_OUT:
            pkttype = PACKET_HOST
        else:
            pkttype = PACKET_OUTGOING
            hwaddr = b""
        if hwtype < 0:
            hwtype = ARPHRD_ETHER if len(hwaddr) == 6 else ARPHRD_VOID
        head = SLL2_HEADER.pack(proto, 0, indev or outdev, hwtype, pkttype, len(hwaddr), hwaddr)
        return ts, LINKTYPE_LINUX_SLL2, head + payload


class NflogSource:
    """Packets an nftables `log group G` rule sends, read from nfnetlink_log.

    Binds the group (one process per group per namespace: EBUSY otherwise), asks for whole
    packets (up to `copy_range`; the rule's snaplen cuts further), a kernel flush every
    `flush_timeout` seconds or `qthresh` messages, and per-message sequence numbers, so losses
    are counted exactly. Netlink signals an overrun of the receive buffer with ENOBUFS: each
    one is counted, the read carries on. The legacy per-family PF_BIND/PF_UNBIND commands are
    not sent: `log group` rules do not need them, and PF_UNBIND would unhook another program's
    default logger.
    """

    def __init__(
        self,
        group: int,
        *,
        copy_range: int = NFULNL_COPY_RANGE_MAX,
        rcvbuf: int = 8 << 20,
        flush_timeout: float = 0.05,
        qthresh: int = 64,
        nlbufsiz: int = 65536,
        proc_path: str = "/proc/thread-self/net/netfilter/nfnetlink_log",
        budget_table: str | None = None,
    ) -> None:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"nflog group {group}: must be 0-65535")
        self.group = group
        self.parser = NflogParser()
        self.delivered = 0
        self.overruns = 0
        self.truncated = 0
        self._pending: deque[Packet] = deque()
        self._seq = int(time.time()) & 0xFFFF
        # Big enough for the largest batch the kernel builds (nlbufsiz caps at 128 KiB) plus
        # one whole 64 KiB packet; MSG_TRUNC tells if that ever fails.
        self._buf = bytearray(max(nlbufsiz, 131072) + 70000)
        self._proc_fd: int | None = None
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise LiveCaptureError(exc.errno, f"nfnetlink socket: {exc.strerror}") from None
        try:
            self._sock.bind((0, 0))
            set_rcvbuf(self._sock, rcvbuf)
            self._sock.setblocking(False)
            self._request(nla(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_BIND,))), "bind")
            attrs = (
                nla(NFULA_CFG_MODE, struct.pack(">IBx", copy_range, NFULNL_COPY_PACKET))
                + nla(NFULA_CFG_NLBUFSIZ, _BE32.pack(nlbufsiz))
                + nla(NFULA_CFG_TIMEOUT, _BE32.pack(max(1, round(flush_timeout * 100))))
                + nla(NFULA_CFG_QTHRESH, _BE32.pack(qthresh))
                + nla(NFULA_CFG_FLAGS, _BE16.pack(NFULNL_CFG_F_SEQ))
            )
            self._request(attrs, "configure")
            self.parser.expect_seq(0)  # a new instance numbers its messages from 0
        except BaseException:
            self._sock.close()
            raise
        # Opened now, in this thread's namespace: a seq_file keeps the namespace it was opened in.
        with contextlib.suppress(OSError):
            self._proc_fd = os.open(proc_path, os.O_RDONLY | os.O_CLOEXEC)
        self._budget: NftCounter | None = None
        """The rules' `over_budget` counter (see `nft_rules`), when `budget_table` is given."""
        self._budget_read_at = 0.0
        self._budget_lock = threading.Lock()
        """The loop (`rules_missing`) and a scrape thread (`over_budget`) share the counter's
        socket and the carry below."""
        self._over_total: int | None = None
        self._budget_raw = 0
        """The kernel counter's last reading; it starts again at 0 when the rules are
        reinstalled, and `_over_total` adds what it had counted before."""
        self._budget_base = 0
        if budget_table is not None:
            with contextlib.suppress(OSError):
                self._budget = NftCounter(budget_table, OVER_BUDGET_COUNTER)

    def _message(self, attrs: bytes) -> tuple[int, bytes]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        body = struct.pack(">BBH", socket.AF_UNSPEC, 0, self.group) + attrs
        return self._seq, message(NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, self._seq, body)

    def _request(self, attrs: bytes, what: str, timeout: float = 2.0) -> None:
        seq, msg = self._message(attrs)
        self._sock.send(msg)
        deadline = time.monotonic() + timeout
        while seq not in self.parser.acks:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LiveCaptureError(errno.ETIMEDOUT, f"nflog {what}: no answer from the kernel")
            select.select([self._sock], [], [], left)
            out: list[Packet] = []
            self._recv_once(out)
            self._pending.extend(out)
        err = self.parser.acks.pop(seq)
        if err == errno.EBUSY:
            raise LiveCaptureError(err, f"nflog group {self.group} is bound by another socket")
        if err:
            raise LiveCaptureError(err, f"nflog {what} (group {self.group}): {os.strerror(err)}")

    def _recv_once(self, out: list[Packet]) -> bool:
        """One datagram into `out`; False when nothing is waiting."""
        try:
            n = self._sock.recvfrom_into(self._buf, 0, socket.MSG_TRUNC)[0]
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self.overruns += 1  # the kernel dropped messages: counted, keep reading
                return True
            raise
        if n > len(self._buf):
            self.truncated += 1
            n = len(self._buf)
        self.parser.parse(self._buf, n, out)
        return True

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, max_packets: int = 1024) -> list[Packet]:
        """Packets waiting now (at most `max_packets`); never blocks; [] once closed."""
        out: list[Packet] = []
        if self._sock.fileno() < 0:
            return out
        pending = self._pending
        while pending and len(out) < max_packets:
            out.append(pending.popleft())
        while len(out) < max_packets:
            try:
                more = self._recv_once(out)
            except OSError:
                self.parser.counters.errors += 1
                break
            if not more:
                break
        if len(out) > max_packets:  # a datagram holds a batch: keep the rest for next time
            pending.extend(out[max_packets:])
            del out[max_packets:]
        self.delivered += len(out)
        return out

    def pending(self) -> int:
        """Packets parsed from a datagram (or met while waiting for an answer to a request)
        that did not fit the last `read`: the socket is not readable for them."""
        return len(self._pending)

    def queue_length(self) -> int | None:
        """Messages the kernel holds for our group, from /proc/net/netfilter/nfnetlink_log."""
        if self._proc_fd is None:
            return None
        try:
            # pread: the loop and a scrape thread both read it, no shared offset to move
            text = os.pread(self._proc_fd, 65536, 0).decode("ascii", "replace")
        except OSError:
            return None
        for line in text.splitlines():
            fields = line.split()
            # group, peer port id, queue length, copy mode, copy range, flush timeout, refs
            if len(fields) >= 3 and fields[0].isdigit() and int(fields[0]) == self.group:
                return int(fields[2]) if fields[2].isdigit() else None
        return None

    def stats(self) -> dict[str, int]:
        """received: messages parsed; drops: messages the kernel numbered but could not hand
        over (same key as `PacketSocketSource`); overruns: ENOBUFS signals; kernel_queue:
        messages waiting in the kernel's batch now; backlog: bytes of batches waiting in the
        socket (the kernel's buffer sizes), not read yet."""
        c = self.parser.counters
        out = {
            "received": c.messages,
            "delivered": self.delivered,
            "drops": c.lost,
            "overruns": self.overruns,
            "malformed": c.malformed,
            "truncated": self.truncated,
            "errors": c.errors,
        }
        if self._sock.fileno() >= 0:
            backlog = receive_backlog(self._sock)
            if backlog is not None:
                out["backlog"] = backlog
        qlen = self.queue_length()
        if qlen is not None:
            out["kernel_queue"] = qlen
        over = self.over_budget()
        if over is not None:
            out["over_budget"] = over
        return out

    def over_budget(self) -> int | None:
        """Packets the rules chose but did not log: their LAN host was over its sampling budget
        (read from the kernel at most once a second)."""
        if self._budget is None:
            return None
        if time.monotonic() - self._budget_read_at >= 1.0:
            self._read_budget()
        return self._over_total

    def _read_budget(self) -> bool | None:
        """Reads the counter: True when read, False when its table is gone, None when
        unknown (no counter, or another error)."""
        budget = self._budget
        if budget is None:
            return None
        with self._budget_lock:
            self._budget_read_at = time.monotonic()
            fresh = budget.packets()
            if fresh is None:
                if not budget.missing:
                    return None
                # Gone: whatever counter comes next starts from 0.
                self._budget_base += self._budget_raw
                self._budget_raw = 0
                return False
            if fresh < self._budget_raw:  # made anew between two readings: carry the count
                self._budget_base += self._budget_raw
            self._budget_raw = fresh
            self._over_total = self._budget_base + fresh
            return True

    def rules_missing(self) -> bool:
        """Whether the rules' table (`budget_table`) is gone from the kernel: someone flushed
        the ruleset (`nft -f` of a firewall file that starts with `flush ruleset`, as a restart
        of nftables.service does). Nothing reaches NFLOG until it is installed again."""
        return self._read_budget() is False

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            self._sock.send(self._message(nla(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_UNBIND,))))[1])
        self._sock.close()
        self._pending.clear()
        if self._budget is not None:
            self._budget.close()
        if self._proc_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._proc_fd)
            self._proc_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
