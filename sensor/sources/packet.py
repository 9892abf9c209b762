"""AF_PACKET: a packet socket on one or more interfaces, reading a TPACKET_V3 memory-mapped
ring (or plain recv), with a BPF program choosing packets in the kernel."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from sensor.decode.link import (
    ARPHRD_ETHER,
    ARPHRD_LOOPBACK,
    FIXED_LAYOUTS,
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
)
from sensor.kernel.links import IFNAME_RE
from sensor.kernel.netlink import (
    set_rcvbuf,
)
from sensor.sources.bpf import attach_filter, build_filter
from sensor.sources.live import LiveCaptureError
from sensor.sources.pcap import MAX_RECORD, Packet

# --- AF_PACKET ----------------------------------------------------------------------------------

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
SIOCGIFINDEX = 0x8933
SIOCGIFHWADDR = 0x8927

RAW_IP_HATYPES = frozenset((65534, 512, 768, 769, 776, 778, 823))
"""ARPHRD_NONE (tun, WireGuard), PPP, tunnels: frames start at the IP header."""
_ETHERNET_HATYPES = frozenset((ARPHRD_ETHER, ARPHRD_LOOPBACK))

_BLOCK = struct.Struct("=III")
"""tpacket_block_desc from offset 8: block_status, num_pkts, offset_to_first_pkt."""
_TP3 = struct.Struct("=IIIIIIHH4xIH14xiH")
"""tpacket3_hdr (next offset, sec, nsec, snaplen, len, status, mac, net, vlan tci, vlan tpid)
then sockaddr_ll from offset 48: ifindex, hatype."""
_STATS_V3 = struct.Struct("=III")


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    index: int
    hatype: int

    @property
    def l3_offset(self) -> int:
        return FIXED_LAYOUTS[self.linktype][1]

    @property
    def linktype(self) -> int:
        return LINKTYPE_ETHERNET if self.hatype in _ETHERNET_HATYPES else LINKTYPE_RAW


def _interface(sock: socket.socket, name: str) -> Interface:
    """Index and hardware type, asked through `sock` (so in the socket's namespace)."""
    if not IFNAME_RE.match(name):
        raise LiveCaptureError(errno.EINVAL, f"interface name {name!r} is not valid")
    req = struct.pack("16s16x", name.encode())
    try:
        index = struct.unpack_from("=i", fcntl.ioctl(sock, SIOCGIFINDEX, req), 16)[0]
        hatype = struct.unpack_from("=H", fcntl.ioctl(sock, SIOCGIFHWADDR, req), 16)[0]
    except OSError as exc:
        raise LiveCaptureError(exc.errno, f"interface {name}: {exc.strerror}") from None
    if hatype not in _ETHERNET_HATYPES and hatype not in RAW_IP_HATYPES:
        raise LiveCaptureError(errno.EINVAL, f"interface {name}: link type {hatype} unsupported")
    return Interface(name, index, hatype)


def _bind_ll(sock: socket.socket, ifindex: int) -> None:
    """bind() to an interface index with ETH_P_ALL (Python's bind only takes names, not 0)."""
    libc = ctypes.CDLL(None, use_errno=True)
    addr = struct.pack("=HHi12x", socket.AF_PACKET, socket.htons(ETH_P_ALL), ifindex)
    if libc.bind(sock.fileno(), addr, len(addr)) != 0:
        err = ctypes.get_errno()
        raise LiveCaptureError(err, f"AF_PACKET bind to ifindex {ifindex}: {os.strerror(err)}")


class PacketSocketSource:
    """AF_PACKET on one or more interfaces, a BPF program choosing packets in the kernel.

    Frames keep their link header: Ethernet (link type 1; a VLAN tag the NIC stripped is put
    back) or raw IP (101) for tun/PPP/WireGuard devices. With `ring` (default), packets arrive
    in a TPACKET_V3 memory-mapped ring of `block_count` blocks of `block_size` bytes: the
    kernel fills a block and hands it over when full or after `block_timeout` seconds; we copy
    the frames out and give the block back. A frame must fit in a block, and frames seen over
    veth or after GRO reach 64 KiB, so blocks are 1 MiB by default. Without a ring (asked
    for, or when the kernel cannot make one), one recvfrom per packet into a preallocated
    256 KiB buffer.

    Kernel counters (PACKET_STATISTICS) reset when read, so `stats` accumulates them. The
    socket is opened with protocol 0 and bound only after filter and ring are in place, so no
    unfiltered packet slips in between.
    """

    def __init__(
        self,
        interfaces: Sequence[str],
        *,
        wide: bool = False,
        mdns: bool = False,
        ring: bool = True,
        block_size: int = 1 << 20,
        block_count: int = 16,
        block_timeout: float = 0.05,
        promiscuous: bool = False,
        rcvbuf: int = 8 << 20,
    ) -> None:
        if not interfaces:
            raise ValueError("interfaces: at least one is needed")
        if block_size < 1 << 17 or block_size & (block_size - 1) or block_count < 2:
            raise ValueError("block_size: a power of two >= 128 KiB; block_count >= 2")
        self.wide = wide
        self._kernel = [0, 0, 0]  # packets, drops, freeze_q_cnt
        self._stats_lock = threading.Lock()
        self.delivered = 0
        self.malformed = 0
        self.truncated = 0
        self._mm: mmap.mmap | None = None
        self._buf = bytearray(MAX_RECORD)
        self._block = 0
        self._left = 0
        self._off = 0
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except OSError as exc:
            raise LiveCaptureError(exc.errno, f"AF_PACKET socket: {exc.strerror}") from None
        try:
            self.interfaces = [_interface(self._sock, name) for name in interfaces]
            self._linktypes = {i.index: i.linktype for i in self.interfaces}
            self._linktypes_by_name = {i.name: i.linktype for i in self.interfaces}
            if len(self.interfaces) == 1:
                program = build_filter(self.interfaces[0].l3_offset, wide=wide, mdns=mdns)
            else:
                offsets = {i.index: i.l3_offset for i in self.interfaces}
                program = build_filter(ifindexes=offsets, wide=wide, mdns=mdns)
            attach_filter(self._sock, program)
            self.mode = "recv"
            """Either "ring" (TPACKET_V3) or "recv"; `ring_error` says why a ring is missing."""
            self.ring_error: str | None = None
            if ring:
                try:
                    self._setup_ring(block_size, block_count, block_timeout)
                    self.mode = "ring"
                except OSError as exc:  # e.g. ENOMEM for the blocks: plain recv still works
                    self.ring_error = f"{exc.strerror or exc}"
            if self.mode == "recv":
                set_rcvbuf(self._sock, rcvbuf)
            # Several interfaces: bound to all (index 0), the program picks by ifindex.
            _bind_ll(self._sock, self.interfaces[0].index if len(self.interfaces) == 1 else 0)
            if promiscuous:
                for i in self.interfaces:
                    mreq = struct.pack("=iHH8s", i.index, PACKET_MR_PROMISC, 0, b"")
                    self._sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            self._sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    def _setup_ring(self, block_size: int, block_count: int, block_timeout: float) -> None:
        frame_size = 1 << 11  # V3 packs frames of any size; this only has to divide a block
        self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        req = struct.pack(
            "=7I",
            block_size,
            block_count,
            frame_size,
            block_size // frame_size * block_count,
            max(1, round(block_timeout * 1000)),
            0,
            0,
        )
        self._sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._mm = mmap.mmap(
            self._sock.fileno(),
            block_size * block_count,
            mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
        )
        self._block_size = block_size
        self._block_count = block_count

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, max_packets: int = 1024) -> list[Packet]:
        """Packets waiting now (at most `max_packets`); never blocks; [] once closed."""
        out: list[Packet] = []
        if self._mm is not None:
            self._read_ring(max_packets, out)
        elif self._sock.fileno() >= 0:
            self._read_socket(max_packets, out)
        self.delivered += len(out)
        return out

    def pending(self) -> int:
        """Frames left in a ring block the last `read` began (poll reports that block as
        readable while we hold it, so this is a courtesy); 0 without a ring."""
        return self._left

    def _read_ring(self, max_packets: int, out: list[Packet]) -> None:
        mm = self._mm
        assert mm is not None
        bsize = self._block_size
        unpack_tp = _TP3.unpack_from
        linktypes = self._linktypes
        append = out.append
        while len(out) < max_packets:
            base = self._block * bsize
            if not self._left:
                # The kernel fills a block, then sets TP_STATUS_USER after a write barrier.
                # A C reader puts a read barrier here; Python has none. x86 keeps loads in
                # order; on weakly ordered CPUs (ARM routers) this relies on the many
                # instructions between this load and the frame loads: a pure-Python limit.
                status, num, first = _BLOCK.unpack_from(mm, base + 8)
                if not status & TP_STATUS_USER:
                    return
                if num == 0 or not 0 < first < bsize:
                    self._release(base)
                    continue
                self._left, self._off = num, base + first
            off = self._off
            end = base + bsize
            try:
                while self._left and len(out) < max_packets:
                    nxt, sec, nsec, snap, wire, st, mac, _net, tci, tpid, ifx, hatype = unpack_tp(
                        mm, off
                    )
                    a = off + mac
                    if a + snap > end:
                        raise ValueError("frame outside its block")
                    lt = linktypes.get(ifx)
                    if lt is None:
                        lt = LINKTYPE_ETHERNET if hatype in _ETHERNET_HATYPES else LINKTYPE_RAW
                    if snap < wire:
                        self.truncated += 1
                    if st & TP_STATUS_VLAN_VALID and lt == LINKTYPE_ETHERNET and snap >= 14:
                        tag = struct.pack(
                            ">HH", tpid if st & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci
                        )
                        frame = mm[a : a + 12] + tag + mm[a + 12 : a + snap]
                    else:
                        frame = mm[a : a + snap]
                    append((sec + nsec * 1e-9, lt, frame))
                    self._left -= 1
                    if self._left:
                        if nxt <= 0 or off + nxt >= end:
                            raise ValueError("bad next-frame offset")
                        off += nxt
            except (ValueError, struct.error):
                self.malformed += 1
                self._left = 0
            self._off = off
            if not self._left:
                self._release(base)

    def _release(self, base: int) -> None:
        """Give the block back to the kernel and move to the next one."""
        assert self._mm is not None
        self._left = 0
        struct.pack_into("=I", self._mm, base + 8, TP_STATUS_KERNEL)
        self._block = (self._block + 1) % self._block_count

    def _read_socket(self, max_packets: int, out: list[Packet]) -> None:
        buf = self._buf
        recv = self._sock.recvfrom_into
        by_name = self._linktypes_by_name
        while len(out) < max_packets:
            try:
                n, addr = recv(buf, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                return
            except OSError:
                self.malformed += 1
                return
            if n > len(buf):
                self.truncated += 1
                n = len(buf)
            ts = time.time()
            # (interface name, protocol, packet type, ARPHRD type, address)
            lt = by_name.get(addr[0])
            if lt is None:
                hatype = addr[3] if len(addr) > 3 else ARPHRD_ETHER
                lt = LINKTYPE_ETHERNET if hatype in _ETHERNET_HATYPES else LINKTYPE_RAW
            out.append((ts, lt, bytes(buf[:n])))

    def _drain_stats(self) -> None:
        """Add the kernel's counters (which reset on every read) to ours."""
        try:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
        except OSError:
            return
        vals = _STATS_V3.unpack(raw.ljust(_STATS_V3.size, b"\0"))
        with self._stats_lock:  # a scrape thread reads stats too; the kernel resets on read
            for i, v in enumerate(vals):
                self._kernel[i] += v

    def stats(self) -> dict[str, int]:
        """received: packets that passed the filter (kernel, drops included); drops: those
        the ring or buffer had no room for; freeze: times the ring was full."""
        if self._sock.fileno() >= 0:
            self._drain_stats()
        packets, drops, freeze = self._kernel
        return {
            "received": packets,
            "delivered": self.delivered,
            "drops": drops,
            "freeze": freeze,
            "malformed": self.malformed,
            "truncated": self.truncated,
        }

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._sock.fileno() >= 0:
            self._drain_stats()
            self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
