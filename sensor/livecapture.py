"""Live packet sources for a gateway: nfnetlink_log (NFLOG) and an AF_PACKET socket with a BPF
filter. Both yield the `Packet` tuples (timestamp, link type, frame) the pipeline eats.

Selection happens in the kernel, so only packets that can carry names, identifiers or device
facts reach Python; conntrack counts the bytes of everything else.

- `NflogSource` reads the packets that the nftables rules of `nft_rules` send to an NFLOG group:
  every DNS and DHCP packet to, from or through the gateway, and the first N packets of each
  direction of every forwarded connection (stateful: conntrack counts them). Frames come out as
  Linux cooked v2 (SLL2, link type 276) carrying the sender's MAC, so the pipeline finds the LAN
  device of upstream packets as it does in a capture file.
- `PacketSocketSource` taps interfaces with AF_PACKET and a classic BPF program built here
  (`build_filter`): DNS, DHCP, TCP SYN/FIN/RST, TCP payloads that start a TLS handshake or an
  HTTP request, upstream plain HTTP, QUIC long-header packets. Stateless, so a ClientHello split
  over several segments loses its later segments (unless GRO merged them into one frame before
  the tap); NFLOG has no such gap. `wide=True` accepts everything (mirror ports, bridges where
  nothing else counts bytes). Reads a TPACKET_V3 memory-mapped ring, or plain recv.

Both sources: `fileno()` for poll/select, `read(max_packets)` that never blocks, `pending()`,
`stats()`, `close()`; a malformed message is counted, never raised. `live_chunks` turns a
source into the chunk stream `Pipeline.run` consumes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import mmap
import os
import re
import select
import socket
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from sensor.capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    MAX_RECORD,
    Chunk,
    Packet,
    pack_chunks,
)
from sensor.decode.dns import MDNS_PORT
from sensor.decode.link import PACKET_HOST, PACKET_OUTGOING


class LiveCaptureError(OSError):
    """A live source cannot be opened (no permission, group taken, interface missing...)."""


class LiveSource(Protocol):
    """What the daemon's packet loop needs from a live source."""

    def fileno(self) -> int: ...

    def read(self, max_packets: int = 1024) -> list[Packet]: ...

    def pending(self) -> int:
        """Packets already taken from the kernel that the next `read` returns, although the
        descriptor may not turn readable again for them: a loop that waits on `fileno()`
        must read again at once while this is non-zero, or they wait for the next packet
        (on a quiet network, indefinitely)."""
        ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


def live_chunks(
    source: LiveSource,
    stop: Callable[[], bool],
    *,
    poll_timeout: float = 0.25,
    max_packets: int = 4096,
) -> Iterator[Chunk]:
    """The chunks `Pipeline.run` consumes, from a live source, until `stop()` says so.

    `stop` is checked after every read and at least every `poll_timeout` seconds.
    """
    poller = select.poll()
    poller.register(source.fileno(), select.POLLIN | select.POLLERR)
    while not stop():
        packets = source.read(max_packets)
        if packets:
            yield from pack_chunks(packets, batch=max_packets)
        else:
            poller.poll(max(0, int(poll_timeout * 1000)))


# --- nfnetlink_log ------------------------------------------------------------------------------

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = NFNL_SUBSYS_ULOG << 8
NFULNL_MSG_CONFIG = (NFNL_SUBSYS_ULOG << 8) | 1

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NLA_TYPE_MASK = 0x3FFF

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
NFULNL_COPY_RANGE_MAX = 0xFFFF

NFULA_PACKET_HDR = 1
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_HWADDR = 8
NFULA_PAYLOAD = 9
NFULA_SEQ = 12
NFULA_HWTYPE = 15

NF_INET_LOCAL_OUT = 3
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_VOID = 0xFFFF

_NLH = struct.Struct("=IHHII")
"""nlmsghdr: length, type, flags, sequence, port id (host byte order)."""
_NLA = struct.Struct("=HH")
_SLL2 = struct.Struct(">HHIHBB8s")
"""SLL2 header: protocol, reserved, ifindex, ARPHRD type, packet type, address length, address."""
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">QQ")
_ERRNO = struct.Struct("=i")

DEFAULT_FIRST_PACKETS = 10
DEFAULT_SNAPLEN = 4096
DEFAULT_HOST_RATE = 5000
"""Packets per second one LAN host may have sampled (its own DNS and first packets, both
directions), on average; what is over it stays uncounted by us (conntrack still counts bytes)."""
DEFAULT_HOST_BURST = 20000
DEFAULT_HOSTS = 65536
"""LAN addresses with a sampling budget at once (per family); a budget lapses 10 s after the
host's last sampled packet."""
OVER_BUDGET_COUNTER = "over_budget"
NFT_TABLE = "phonehome"
QUIC_FIRST_PACKETS_FACTOR = 4
"""Client QUIC long-header packets (Initial, 0-RTT, Handshake) are sampled in the first
4 x first_packets packets of a UDP connection, not only the first first_packets: a Retry or a
version negotiation restarts the Initials after 0-RTT packets, and Chrome's first flight alone
can take several datagrams. Long headers end with the handshake, so this adds little."""
CONNTRACK_ACCT = "/proc/sys/net/netfilter/nf_conntrack_acct"
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,15}$")


def nft_rules(
    group: int,
    lan_ifaces: Sequence[str],
    first_packets: int = DEFAULT_FIRST_PACKETS,
    snaplen: int = DEFAULT_SNAPLEN,
    *,
    table: str = NFT_TABLE,
    host_rate: int = DEFAULT_HOST_RATE,
    host_burst: int = DEFAULT_HOST_BURST,
    hosts: int = DEFAULT_HOSTS,
    lan_prefixes: Sequence[str] = (),
) -> str:
    """An nftables table (`table inet phonehome`) sending to NFLOG `group` what can name things.

    - forward, traffic from or to a LAN interface: every DNS packet (one resolver socket can
      reuse a 5-tuple for many queries, so a per-connection budget would miss later names), and
      the first `first_packets` packets of each direction of every connection (a FIN or RST
      too, so flows end on time).
    - input/output, the gateway's own DNS and DHCP service for the LAN (udp/tcp 53, udp 67 and
      547 in, 53/67/547 out): all of it, as such packets are few and small, so a resolver or
      DHCP server on the gateway (dnsmasq) does not hide the names it serves. (A DHCP server
      that talks through a raw socket, like ISC dhcpd, passes no hook: capture those with
      `PacketSocketSource`.)

    QUIC: client packets with a long header (the first payload bit set: Initial, 0-RTT,
    Handshake) in the first 4 x N packets of a UDP connection are logged too, so a first flight
    restarted by a Retry or a version negotiation after a burst of 0-RTT still reaches the
    decoder; short-header (1-RTT) bulk is not.

    Why N = 10 by default: a connection's names and identifiers are in its first packets. On
    the client side: SYN, ACK, then a ClientHello that post-quantum key shares spread over two
    or three segments, or HTTP request headers and the first chunk of a body (the pipeline
    inspects six payload packets and 4 KiB of body per direction). On the server side: SYN-ACK,
    ServerHello and, for TLS 1.2, the certificate. Ten covers that with a margin for
    retransmissions and small segments; every packet above it is bulk that conntrack counts.
    `snaplen` (default 4 KiB) keeps the whole of a GRO-merged ClientHello.

    The counters: `ct original packets` counts only with conntrack accounting on
    (net.netfilter.nf_conntrack_acct=1). The kernel turns it on when it loads a rule reading
    them, but only connections created from then on get the counters, and the sysctl can be
    turned off again. Without counters the value reads 0, so the classic `ct original packets
    <= N` would match every packet of such a connection: the full firehose into NFLOG. The
    rules here match `1-N` instead: at the forward hook the current packet is already counted,
    so a counted connection reads at least 1, and one without counters is never sampled (a
    quiet gap, not a flood). `install_rules` switches accounting on explicitly as well.

    The chains run at `filter + 10`: after the gateway's own filter chain, so packets it drops
    are not logged; `accept` in them only ends this table's chain, never overrides a drop
    elsewhere.

    Per-host budgets: a hostile or broken LAN host (a SYN flood with random ports, a DNS
    burst, a DHCP starvation attack, endless new connections) must not fill the NFLOG socket
    and push the other devices' packets out of it. Every packet chosen above is charged to the
    LAN host it belongs to (the source going out, the destination coming in), in a dynamic set
    with a token bucket per address (`host_rate` a second, `host_burst` at once). Over budget,
    the packet is counted in the `over_budget` counter and not logged. The sets hold `hosts`
    addresses each; when one is full (a flood of spoofed sources) hosts already in it keep
    their budgets and new ones are not sampled (counted likewise) until addresses lapse, 10 s
    after their last sampled packet. Nothing is ever dropped: these chains only choose what
    to log.

    Strangers: with `lan_prefixes` (site.lan_networks) given, a LAN-side address outside them
    (a spoofed source, DHCP's 0.0.0.0, a subnet the configuration does not list) gets no set
    element of its own; all such addresses share one budget of the same size. A flood of
    random spoofed sources, the cheap way to fill the sets, then costs the real hosts
    nothing. (Spoofing inside the LAN prefixes still can: 65,536 addresses fit in an IPv6
    /64, not in a /24. For IPv6, link-local fe80::/10 counts as LAN.)
    """
    if not 0 <= group <= 0xFFFF:
        raise ValueError(f"nflog group {group}: must be 0-65535")
    if not 1 <= first_packets <= 1000:
        raise ValueError(f"first_packets {first_packets}: must be 1-1000")
    if not 64 <= snaplen <= NFULNL_COPY_RANGE_MAX:
        raise ValueError(f"snaplen {snaplen}: must be 64-{NFULNL_COPY_RANGE_MAX}")
    if not lan_ifaces:
        raise ValueError("lan_ifaces: at least one LAN interface is needed")
    if not 1 <= host_rate <= 10_000_000 or not 1 <= host_burst <= 10_000_000:
        raise ValueError(f"host budget {host_rate}/s burst {host_burst}: must be 1-10000000")
    if not 16 <= hosts <= 1 << 24:
        raise ValueError(f"hosts {hosts}: must be 16-16777216")
    for name in lan_ifaces:
        if not _IFNAME_RE.match(name):
            raise ValueError(f"interface name {name!r}: not a valid interface name")
    nets: dict[int, list[str]] = {4: [], 6: []}
    for prefix in lan_prefixes:
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError as exc:
            raise ValueError(f"LAN prefix {prefix!r}: {exc}") from None
        nets[net.version].append(str(net))
    if nets[6]:
        nets[6].append("fe80::/10")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", table):
        raise ValueError(f"table name {table!r}: letters, digits, underscore")
    lan = "{ " + ", ".join(f'"{name}"' for name in lan_ifaces) + " }"
    log = f"log group {group} snaplen {snaplen} accept"
    n = first_packets
    quic_n = min(1000, QUIC_FIRST_PACKETS_FACTOR * n)
    limit = f"limit rate over {host_rate}/second burst {host_burst} packets"
    over = f"counter name {OVER_BUDGET_COUNTER} return"

    def select(budget: str) -> str:
        return f"""\
        meta l4proto {{ tcp, udp }} th dport 53 goto {budget}
        meta l4proto {{ tcp, udp }} th sport 53 goto {budget}
        meta l4proto {{ tcp, udp }} ct direction original ct original packets 1-{n} goto {budget}
        meta l4proto {{ tcp, udp }} ct direction reply ct reply packets 1-{n} goto {budget}
        meta l4proto udp ct direction original @th,64,1 1 ct original packets 1-{quic_n} \
goto {budget}
        tcp flags & (fin | rst) != 0 goto {budget}"""

    def strangers(side: str) -> str:
        return "".join(
            f"        {family} {side} != {{ {', '.join(nets[v])} }} goto budget_strangers\n"
            for v, family in ((4, "ip"), (6, "ip6"))
            if nets[v]
        )

    def budget(side: str) -> str:
        return f"""\
{strangers(side)}\
        update @hosts4 {{ ip {side} {limit} }} {over}
        update @hosts6 {{ ip6 {side} {limit} }} {over}
        ip {side} != @hosts4 {over}
        ip6 {side} != @hosts6 {over}
        {log}"""

    sets = "".join(
        f"""\
    set hosts{v} {{
        type ipv{v}_addr; size {hosts}; flags dynamic,timeout; timeout 10s;
    }}
"""
        for v in (4, 6)
    )
    return f"""\
table inet {table} {{
{sets}\
    counter {OVER_BUDGET_COUNTER} {{ }}
    chain forward {{
        type filter hook forward priority filter + 10; policy accept;
        iifname {lan} jump sample_from_lan
        oifname {lan} jump sample_to_lan
    }}
    chain sample_from_lan {{
{select("budget_saddr")}
    }}
    chain sample_to_lan {{
{select("budget_daddr")}
    }}
    chain budget_saddr {{
{budget("saddr")}
    }}
    chain budget_daddr {{
{budget("daddr")}
    }}
    chain budget_strangers {{
        {limit} {over}
        {log}
    }}
    chain input {{
        type filter hook input priority filter + 10; policy accept;
        iifname {lan} udp dport {{ 53, 67, 547 }} goto budget_saddr
        iifname {lan} tcp dport 53 goto budget_saddr
    }}
    chain output {{
        type filter hook output priority filter + 10; policy accept;
        oifname {lan} udp sport {{ 53, 67, 547 }} goto budget_daddr
        oifname {lan} tcp sport 53 goto budget_daddr
    }}
}}
"""


def _run_in(netns: str | None, argv: Sequence[str], stdin: str | None = None) -> str:
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    try:
        proc = subprocess.run(
            full, input=stdin, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LiveCaptureError(f"{' '.join(full)}: {exc}") from None
    if proc.returncode != 0:
        raise LiveCaptureError(f"{' '.join(full)} failed: {proc.stderr.strip()}")
    return proc.stdout


def install_rules(
    group: int,
    lan_ifaces: Sequence[str],
    first_packets: int = DEFAULT_FIRST_PACKETS,
    snaplen: int = DEFAULT_SNAPLEN,
    *,
    table: str = NFT_TABLE,
    netns: str | None = None,
    nft: str = "nft",
    host_rate: int = DEFAULT_HOST_RATE,
    host_burst: int = DEFAULT_HOST_BURST,
    hosts: int = DEFAULT_HOSTS,
    lan_prefixes: Sequence[str] = (),
) -> None:
    """Load `nft_rules` (replacing an older version of the table in the same transaction) and
    switch conntrack accounting on. `netns` runs it in a named namespace (`ip netns exec`)."""
    rules = nft_rules(
        group,
        lan_ifaces,
        first_packets,
        snaplen,
        table=table,
        host_rate=host_rate,
        host_burst=host_burst,
        hosts=hosts,
        lan_prefixes=lan_prefixes,
    )
    # Declaring then deleting the table makes the load an atomic replace, also the first time.
    script = f"table inet {table}\ndelete table inet {table}\n{rules}"
    _run_in(netns, [nft, "-f", "-"], stdin=script)
    # After the load: the rules' conntrack use creates net.netfilter in a fresh namespace.
    if netns:
        _run_in(netns, ["sh", "-c", f"echo 1 > {CONNTRACK_ACCT}"])
    else:
        # Under systemd /proc/sys is read-only (ProtectKernelTunables) and the sysctl.d file
        # has switched accounting on already: write only when it is off.
        try:
            with open(CONNTRACK_ACCT) as fh:
                if fh.read().strip() == "1":
                    return
            with open(CONNTRACK_ACCT, "w") as fh:
                fh.write("1\n")
        except OSError as exc:
            raise LiveCaptureError(exc.errno, f"{CONNTRACK_ACCT}: {exc.strerror}") from None


def remove_rules(*, table: str = NFT_TABLE, netns: str | None = None, nft: str = "nft") -> None:
    """Delete the table; nothing happens if it is not there."""
    _run_in(netns, [nft, "-f", "-"], stdin=f"table inet {table}\ndelete table inet {table}\n")


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
            mlen, mtype, _flags, mseq, _pid = _NLH.unpack_from(mv, pos)
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
                    err = -_ERRNO.unpack_from(mv, pos + 16)[0]
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
            alen, atype = _NLA.unpack_from(mv, pos)
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
        head = _SLL2.pack(proto, 0, indev or outdev, hwtype, pkttype, len(hwaddr), hwaddr)
        return ts, LINKTYPE_LINUX_SLL2, head + payload


def _nla(atype: int, data: bytes) -> bytes:
    raw = _NLA.pack(4 + len(data), atype) + data
    return raw + b"\0" * (-len(raw) % 4)


_NFT_MSG_NEWOBJ = (10 << 8) | 18  # NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWOBJ
_NFT_MSG_GETOBJ = (10 << 8) | 19
_NFTA_OBJ_TABLE, _NFTA_OBJ_NAME, _NFTA_OBJ_TYPE, _NFTA_OBJ_DATA = 1, 2, 3, 4
_NFT_OBJECT_COUNTER = 1
_NFTA_COUNTER_PACKETS = 2
_NFPROTO_INET = 1


def _attr(attrs: bytes, wanted: int) -> bytes | None:
    """The payload of the first netlink attribute of type `wanted` in `attrs`, or None."""
    pos = 0
    while pos + 4 <= len(attrs):
        alen, atype = _NLA.unpack_from(attrs, pos)
        if alen < 4:
            return None
        if atype & NLA_TYPE_MASK == wanted:
            return attrs[pos + 4 : pos + alen]
        pos += (alen + 3) & ~3
    return None


class NftCounter:
    """Reads one named nftables counter (`counter NAME { }` in an inet table) over netlink,
    without the `nft` program: the daemon has dropped root by then, and a process per reading
    would cost more than the reading. Needs CAP_NET_ADMIN. `packets()` is None when the counter
    cannot be read (the table was flushed by an `nft -f` of the owner's ruleset, say)."""

    def __init__(self, table: str, name: str) -> None:
        self.table, self.name = table, name
        self.missing = False
        """The last answer was ENOENT: no such table (or counter) in this namespace."""
        self._seq = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))

    def packets(self, timeout: float = 0.5) -> int | None:
        self.missing = False  # until this answer says otherwise
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        body = struct.pack(">BBH", _NFPROTO_INET, 0, 0)
        body += _nla(_NFTA_OBJ_TABLE, self.table.encode() + b"\0")
        body += _nla(_NFTA_OBJ_NAME, self.name.encode() + b"\0")
        body += _nla(_NFTA_OBJ_TYPE, _BE32.pack(_NFT_OBJECT_COUNTER))
        msg = _NLH.pack(16 + len(body), _NFT_MSG_GETOBJ, NLM_F_REQUEST, self._seq, 0) + body
        try:
            self._sock.send(msg)
            self._sock.settimeout(timeout)
            while True:
                data = self._sock.recv(65536)
                length, mtype, _flags, seq, _pid = _NLH.unpack_from(data, 0)
                if seq != self._seq:
                    continue  # a late answer to an earlier, timed-out question
                if mtype != _NFT_MSG_NEWOBJ:  # NLMSG_ERROR: no such table or counter
                    self.missing = (
                        mtype == NLMSG_ERROR
                        and length >= 20
                        and -_ERRNO.unpack_from(data, 16)[0] == errno.ENOENT
                    )
                    return None
                self.missing = False
                return self._parse(data[16 + 4 : length])
        except (OSError, struct.error, ValueError):
            return None

    @staticmethod
    def _parse(attrs: bytes) -> int | None:
        data = _attr(attrs, _NFTA_OBJ_DATA)
        packets = _attr(data, _NFTA_COUNTER_PACKETS) if data is not None else None
        return int.from_bytes(packets[:8], "big") if packets and len(packets) >= 8 else None

    def close(self) -> None:
        self._sock.close()


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
            _set_rcvbuf(self._sock, rcvbuf)
            self._sock.setblocking(False)
            self._request(_nla(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_BIND,))), "bind")
            attrs = (
                _nla(NFULA_CFG_MODE, struct.pack(">IBx", copy_range, NFULNL_COPY_PACKET))
                + _nla(NFULA_CFG_NLBUFSIZ, _BE32.pack(nlbufsiz))
                + _nla(NFULA_CFG_TIMEOUT, _BE32.pack(max(1, round(flush_timeout * 100))))
                + _nla(NFULA_CFG_QTHRESH, _BE32.pack(qthresh))
                + _nla(NFULA_CFG_FLAGS, _BE16.pack(NFULNL_CFG_F_SEQ))
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
        head = _NLH.pack(16 + len(body), NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, self._seq, 0)
        return self._seq, head + body

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
        messages waiting in the kernel's batch now."""
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
            self._sock.send(self._message(_nla(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_UNBIND,))))[1])
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


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    """SO_RCVBUFFORCE (root: past net.core.rmem_max), else whatever SO_RCVBUF grants."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


# --- classic BPF --------------------------------------------------------------------------------

SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33

# Instruction classes, sizes, modes, operations (linux/filter.h, linux/bpf_common.h).
BPF_LD, BPF_LDX, BPF_ST, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = 0, 1, 2, 4, 5, 6, 7
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_MSH = 0x00, 0x20, 0x40, 0x60, 0xA0
BPF_ADD, BPF_AND, BPF_RSH = 0x00, 0x50, 0x70
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JSET = 0x00, 0x10, 0x20, 0x40
BPF_K, BPF_X = 0x00, 0x08
BPF_TAX = 0x00
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_IFINDEX = 8
BPF_MAXINSNS = 4096


@dataclass(frozen=True, slots=True)
class BpfInsn:
    """One `struct sock_filter`: opcode, jump-if-true, jump-if-false, constant."""

    code: int
    jt: int
    jf: int
    k: int


class BpfAssembler:
    """Classic BPF with labels: jumps name a label (or None: the next instruction)."""

    def __init__(self) -> None:
        self._ops: list[tuple[int, str | None, str | None, int | str]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"BPF label {name!r} defined twice")
        self._labels[name] = len(self._ops)

    def op(self, code: int, k: int = 0, jt: str | None = None, jf: str | None = None) -> None:
        self._ops.append((code, jt, jf, k & 0xFFFFFFFF))

    def ja(self, target: str) -> None:
        self._ops.append((BPF_JMP | BPF_JA, None, None, target))

    def assemble(self) -> list[BpfInsn]:
        out = []
        for i, (code, jt, jf, k) in enumerate(self._ops):
            if isinstance(k, str):
                out.append(BpfInsn(code, 0, 0, self._offset(i, k, 1 << 31)))
            else:
                out.append(BpfInsn(code, self._offset(i, jt, 256), self._offset(i, jf, 256), k))
        if not out or len(out) > BPF_MAXINSNS or out[-1].code & 0x07 != BPF_RET:
            raise ValueError("a BPF program needs 1-4096 instructions ending in a return")
        return out

    def _offset(self, i: int, target: str | None, limit: int) -> int:
        if target is None:
            return 0
        if target not in self._labels:
            raise ValueError(f"BPF label {target!r} is not defined")
        off = self._labels[target] - i - 1
        if not 0 <= off < limit:
            raise ValueError(f"BPF jump from {i} to {target!r} is out of range ({off})")
        return off


UDP_PORTS = (53, 67, 68, 546, 547)
"""DNS, DHCP, DHCPv6 (either side of the packet)."""
HTTP_METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC")
"""First four bytes of an HTTP/1.x request (the pipeline's `looks_like_http_request` set)."""
ACCEPT_ALL = MAX_RECORD
"""Bytes to keep of an accepted packet: all of it (GRO frames reach 64 KiB)."""


def _select_section(a: BpfAssembler, p: str, l3: int, mdns: bool) -> None:
    """The selecting program for frames whose network header is at `l3` (14 Ethernet, 0 raw).

    Packet offsets are positive (link header plus field offset), so the kernel reads them with
    skb_header_pointer, which also works for payload in page fragments; negative SKF_NET_OFF
    offsets would only see the linear part on older kernels.
    """
    acc, rej = p + "accept", p + "reject"
    ports = (*UDP_PORTS, MDNS_PORT) if mdns else UDP_PORTS
    a.op(BPF_LD | BPF_H | BPF_ABS, SKF_AD_OFF + SKF_AD_PROTOCOL)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 0x0800, jt=p + "v4")
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 0x86DD, jt=p + "v6", jf=rej)
    # IPv4: a later fragment has no ports but may be the rest of a big DNS answer: keep it.
    a.label(p + "v4")
    a.op(BPF_LD | BPF_H | BPF_ABS, l3 + 6)
    a.op(BPF_JMP | BPF_JSET | BPF_K, 0x1FFF, jt=acc)
    a.op(BPF_LD | BPF_B | BPF_ABS, l3 + 9)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 6, jt=p + "tcp4")
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 17, jf=rej)
    a.op(BPF_LDX | BPF_B | BPF_MSH, l3)  # X = IPv4 header length
    a.ja(p + "udp")
    a.label(p + "tcp4")
    a.op(BPF_LD | BPF_H | BPF_ABS, l3 + 2)  # total length, for the payload test
    a.op(BPF_ST, 0)
    a.op(BPF_LDX | BPF_B | BPF_MSH, l3)
    a.ja(p + "tcp")
    # IPv6: only a fixed header straight followed by TCP or UDP (or a fragment header).
    a.label(p + "v6")
    a.op(BPF_LD | BPF_B | BPF_ABS, l3 + 6)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 6, jt=p + "tcp6")
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 17, jt=p + "udp6")
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 44, jt=acc, jf=rej)
    a.label(p + "udp6")
    a.op(BPF_LDX | BPF_W | BPF_IMM, 40)
    a.ja(p + "udp")
    a.label(p + "tcp6")
    a.op(BPF_LD | BPF_H | BPF_ABS, l3 + 4)  # payload length
    a.op(BPF_ALU | BPF_ADD | BPF_K, 40)
    a.op(BPF_ST, 0)
    a.op(BPF_LDX | BPF_W | BPF_IMM, 40)
    # UDP, X = transport offset from the network header.
    a.ja(p + "tcp")
    a.label(p + "udp")
    for field in (0, 2):  # source port, destination port
        a.op(BPF_LD | BPF_H | BPF_IND, l3 + field)
        for port in ports:
            a.op(BPF_JMP | BPF_JEQ | BPF_K, port, jt=acc)
        a.op(BPF_JMP | BPF_JEQ | BPF_K, 443, jt=p + "quic")
    a.ja(rej)
    a.label(p + "quic")  # a long header (Initial, Handshake, 0-RTT) has the top bit set
    a.op(BPF_LD | BPF_B | BPF_IND, l3 + 8)  # fails (reject) on an empty datagram
    a.op(BPF_JMP | BPF_JSET | BPF_K, 0x80, jt=acc)
    # gQUIC's legacy public header (Q039-Q043): flags 0x09 (version, 8-byte CID), top bit
    # clear, then the CID and the version tag starting "Q".
    a.op(BPF_ALU | BPF_AND | BPF_K, 0x89)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 0x09, jf=rej)
    a.op(BPF_LD | BPF_B | BPF_IND, l3 + 8 + 9)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, ord("Q"), jt=acc, jf=rej)
    # TCP, X = transport offset, M[0] = IP length (header included).
    a.label(p + "tcp")
    a.op(BPF_LD | BPF_B | BPF_IND, l3 + 13)
    a.op(BPF_JMP | BPF_JSET | BPF_K, 0x07, jt=acc)  # FIN, SYN, RST
    a.op(BPF_LD | BPF_H | BPF_IND, l3)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 53, jt=acc)
    a.op(BPF_LD | BPF_H | BPF_IND, l3 + 2)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 53, jt=acc)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 80, jt=p + "http_up")
    a.op(BPF_LD | BPF_B | BPF_IND, l3 + 12)  # data offset: (byte >> 4) * 4
    a.op(BPF_ALU | BPF_RSH | BPF_K, 2)
    a.op(BPF_ALU | BPF_AND | BPF_K, 0x3C)
    a.op(BPF_ALU | BPF_ADD | BPF_X)
    a.op(BPF_MISC | BPF_TAX)  # X = payload offset from the network header
    # Fewer than four payload bytes fail the load, which rejects: neither TLS nor HTTP.
    a.op(BPF_LD | BPF_W | BPF_IND, l3)
    for method in HTTP_METHODS:
        a.op(BPF_JMP | BPF_JEQ | BPF_K, int.from_bytes(method, "big"), jt=acc)
    a.op(BPF_ALU | BPF_RSH | BPF_K, 16)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 0x1603, jt=acc, jf=rej)  # TLS handshake record
    # Upstream plain HTTP: every segment with payload (bodies leak; plain uploads are rare).
    a.label(p + "http_up")
    a.op(BPF_LD | BPF_B | BPF_IND, l3 + 12)
    a.op(BPF_ALU | BPF_RSH | BPF_K, 2)
    a.op(BPF_ALU | BPF_AND | BPF_K, 0x3C)
    a.op(BPF_ALU | BPF_ADD | BPF_X)
    a.op(BPF_MISC | BPF_TAX)
    a.op(BPF_LD | BPF_MEM, 0)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, 0, jt=acc)  # TSO/GRO frame without a length: has data
    a.op(BPF_JMP | BPF_JGT | BPF_X, 0, jt=acc, jf=rej)
    a.label(acc)
    a.op(BPF_RET | BPF_K, ACCEPT_ALL)
    a.label(rej)
    a.op(BPF_RET | BPF_K, 0)


def build_filter(
    l3_offset: int = 14,
    *,
    ifindexes: Mapping[int, int] | None = None,
    wide: bool = False,
    mdns: bool = False,
) -> list[BpfInsn]:
    """The classic BPF program for `PacketSocketSource`.

    Accepts (IPv4, and IPv6 without extension headers): DNS over UDP and TCP, DHCP and
    DHCPv6, mDNS if `mdns`, TCP SYN/FIN/RST, a TCP payload starting a TLS handshake record
    (16 03) or an HTTP/1.x request method, every upstream payload to TCP port 80, QUIC
    long-header packets and gQUIC public headers with a version on UDP 443, and IPv4/IPv6
    fragments (no ports to judge, may be DNS).
    Rejects the rest: ACKs, TLS application data, QUIC short headers, other protocols.
    `wide` accepts everything. `l3_offset` is where the network header starts (14 for
    Ethernet, 0 for raw-IP devices); `ifindexes` (ifindex → offset) restricts the program to
    those interfaces, for one socket listening on several.
    """
    a = BpfAssembler()
    if ifindexes:
        offsets = sorted(set(ifindexes.values()))
        a.op(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_IFINDEX)
        for idx, off in sorted(ifindexes.items()):
            a.op(BPF_JMP | BPF_JEQ | BPF_K, idx, jt=f"s{off}_")
        a.op(BPF_RET | BPF_K, 0)
        for off in offsets:
            a.label(f"s{off}_")
            if wide:
                a.op(BPF_RET | BPF_K, ACCEPT_ALL)
            else:
                _select_section(a, f"s{off}_", off, mdns)
    elif wide:
        a.op(BPF_RET | BPF_K, ACCEPT_ALL)
    else:
        _select_section(a, "", l3_offset, mdns)
    return a.assemble()


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def attach_filter(sock: socket.socket, program: Sequence[BpfInsn]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program during the call."""
    insns = (_SockFilter * len(program))(*(_SockFilter(i.code, i.jt, i.jf, i.k) for i in program))
    fprog = _SockFprog(len(program), ctypes.cast(insns, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(
        socket.SOL_SOCKET,
        SO_ATTACH_FILTER,
        ctypes.string_at(ctypes.addressof(fprog), ctypes.sizeof(fprog)),
    )


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
        return 14 if self.hatype in _ETHERNET_HATYPES else 0

    @property
    def linktype(self) -> int:
        return LINKTYPE_ETHERNET if self.hatype in _ETHERNET_HATYPES else LINKTYPE_RAW


def _interface(sock: socket.socket, name: str) -> Interface:
    """Index and hardware type, asked through `sock` (so in the socket's namespace)."""
    if not _IFNAME_RE.match(name):
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
                _set_rcvbuf(self._sock, rcvbuf)
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
