"""Live sources: the BPF program (in a Python model of classic BPF and in the kernel), the
nfnetlink_log parser, the nftables rules, and both sources on the namespace lab gateway with
real DNS, HTTP, TLS and a bulk upload."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.config import Config
from sensor.decode.link import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW, parse_link
from sensor.kernel.nftables import (
    DEFAULT_FIRST_PACKETS,
    NFT_TABLE,
    install_rules,
    nft_rules,
    remove_rules,
)
from sensor.model import Device, Flow
from sensor.pipeline import Pipeline
from sensor.sources.bpf import (
    ACCEPT_ALL,
    SKF_AD_IFINDEX,
    SKF_AD_OFF,
    SKF_AD_PROTOCOL,
    BpfAssembler,
    BpfInsn,
    build_filter,
)
from sensor.sources.live import LiveCaptureError, LiveSource, live_packets
from sensor.sources.nflog import NFULNL_MSG_PACKET, NflogParser, NflogSource
from sensor.sources.packet import PacketSocketSource
from sensor.sources.pcap import Packet

# --- frames ---------------------------------------------------------------------------------------

CLIENT_MAC = bytes.fromhex("640980770023")
GW_MAC = bytes.fromhex("027700000001")
V4_CLIENT, V4_SERVER = bytes([192, 168, 77, 23]), bytes([203, 0, 113, 10])
V6_CLIENT = bytes.fromhex("fd000077000000000000000000000023")
V6_SERVER = bytes.fromhex("20010db8020300000000000000000010")
HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


def eth(payload: bytes, ethertype: int = 0x0800, pad: bool = False) -> bytes:
    frame = GW_MAC + CLIENT_MAC + struct.pack(">H", ethertype) + payload
    return frame.ljust(60, b"\0") if pad else frame


def ipv4(proto: int, l4: bytes, frag: int = 0, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    head = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(l4), 1, frag, 64, proto, 0,
                       V4_CLIENT, V4_SERVER)  # fmt: skip
    return head + options + l4


def ipv6(nh: int, l4: bytes) -> bytes:
    return struct.pack(">IHBB16s16s", 0x60000000, len(l4), nh, 64, V6_CLIENT, V6_SERVER) + l4


def tcp(sport: int, dport: int, flags: int, payload: bytes = b"", options: bytes = b"") -> bytes:
    doff = 5 + len(options) // 4
    head = struct.pack(">HHIIBBHHH", sport, dport, 1000, 2000, doff << 4, flags, 65535, 0, 0)
    return head + options + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def v4tcp(sport: int, dport: int, flags: int, payload: bytes = b"", pad: bool = False) -> bytes:
    return eth(ipv4(6, tcp(sport, dport, flags, payload)), pad=pad)


def v4udp(sport: int, dport: int, payload: bytes = b"x" * 12) -> bytes:
    return eth(ipv4(17, udp(sport, dport, payload)))


def v6tcp(sport: int, dport: int, flags: int, payload: bytes = b"") -> bytes:
    return eth(ipv6(6, tcp(sport, dport, flags, payload)), 0x86DD)


def v6udp(sport: int, dport: int, payload: bytes = b"x" * 12) -> bytes:
    return eth(ipv6(17, udp(sport, dport, payload)), 0x86DD)


ARP = eth(bytes(28), 0x0806)
ICMP = eth(ipv4(1, b"\x08\x00" + bytes(30)))

# (name, frame, accepted by the selecting filter)
FILTER_CASES: list[tuple[str, bytes, bool]] = [
    ("syn", v4tcp(40000, 443, SYN), True),
    ("syn-ack", v4tcp(443, 40000, SYN | ACK), True),
    ("fin", v4tcp(40000, 443, FIN | ACK), True),
    ("rst", v4tcp(443, 40000, RST), True),
    ("client hello", v4tcp(40000, 443, ACK | PSH, HELLO), True),
    ("server hello", v4tcp(443, 40000, ACK, b"\x16\x03\x03\x00\x7a\x02" + bytes(60)), True),
    ("hello after tcp options", eth(ipv4(6, tcp(40000, 443, ACK, HELLO, bytes(12)))), True),
    ("hello after ip options", eth(ipv4(6, tcp(40000, 443, ACK, HELLO), options=bytes(4))), True),
    ("http post, any port", v4tcp(40000, 8080, ACK, b"POST /x HTTP/1.1\r\n"), True),
    ("http get", v4tcp(40000, 80, ACK, b"GET / HTTP/1.1\r\n"), True),
    ("http body upstream", v4tcp(40000, 80, ACK, b"imei=123456789012345&x=1"), True),
    ("dns udp query", v4udp(40000, 53), True),
    ("dns udp answer", v4udp(53, 40000), True),
    ("dns tcp ack", v4tcp(40000, 53, ACK), True),
    ("dhcp", v4udp(68, 67), True),
    ("dhcp reply", v4udp(67, 68), True),
    ("quic initial", v4udp(40000, 443, b"\xc3\x00\x00\x00\x01" + bytes(40)), True),
    ("quic server handshake", v4udp(443, 40000, b"\xe3\x00\x00\x00\x01" + bytes(40)), True),
    ("later fragment", eth(ipv4(17, bytes(40), frag=185)), True),
    ("v6 syn", v6tcp(40000, 443, SYN), True),
    ("v6 client hello", v6tcp(40000, 443, ACK, HELLO), True),
    ("v6 dns", v6udp(40000, 53), True),
    ("v6 dhcp", v6udp(546, 547), True),
    ("v6 quic initial", v6udp(40000, 443, b"\xc0\x00\x00\x00\x01" + bytes(40)), True),
    ("v6 fragment header", eth(ipv6(44, bytes(48)), 0x86DD), True),
    ("pure ack", v4tcp(40000, 443, ACK), False),
    ("pure ack, padded frame", v4tcp(40000, 443, ACK, pad=True), False),
    ("tls application data", v4tcp(443, 40000, ACK, b"\x17\x03\x03\x40\x00" + bytes(1400)), False),
    ("tls data upstream", v4tcp(40000, 443, ACK | PSH, b"\x17\x03\x03\x40\x00" + bytes(99)), False),
    ("http response body", v4tcp(80, 40000, ACK, b"HTTP/1.1 200 OK\r\n" + bytes(500)), False),
    ("pure ack to port 80", v4tcp(40000, 80, ACK, pad=True), False),
    ("two payload bytes", v4tcp(40000, 443, ACK, b"\x16\x03"), False),
    ("quic short header", v4udp(40000, 443, b"\x43" + bytes(40)), False),
    ("gquic q043 chlo", v4udp(40000, 443, b"\x09" + bytes(8) + b"Q043" + bytes(40)), True),
    ("gquic without version", v4udp(40000, 443, b"\x08" + bytes(8) + b"Q043" + bytes(40)), False),
    ("gquic reset flag", v4udp(40000, 443, b"\x0b" + bytes(8) + b"Q043" + bytes(40)), True),
    ("gquic-like other tag", v4udp(40000, 443, b"\x09" + bytes(8) + b"X043" + bytes(40)), False),
    ("gquic truncated", v4udp(40000, 443, b"\x09" + bytes(5)), False),
    ("quic empty datagram", v4udp(40000, 443, b""), False),
    ("mdns", v4udp(5353, 5353), False),
    ("ntp", v4udp(40000, 123), False),
    ("icmp", ICMP, False),
    ("arp", ARP, False),
    ("v6 pure ack", v6tcp(40000, 443, ACK), False),
    ("v6 tls data", v6tcp(443, 40000, ACK, b"\x17\x03\x03\x40\x00" + bytes(200)), False),
    ("v6 hop-by-hop", eth(ipv6(0, bytes(48)), 0x86DD), False),
    ("v6 icmp", eth(ipv6(58, bytes(48)), 0x86DD), False),
]


# --- a model of classic BPF (the kernel's semantics for what build_filter uses) -------------------


def bpf_run(prog: Sequence[BpfInsn], frame: bytes, protocol: int, ifindex: int = 1) -> int:
    """Bytes the program keeps of `frame`; a load past the end returns 0, as in the kernel."""
    a = x = 0
    mem = [0] * 16
    pc = 0

    def load(off: int, size: int) -> int | None:
        if off == SKF_AD_OFF + SKF_AD_PROTOCOL:
            return protocol
        if off == SKF_AD_OFF + SKF_AD_IFINDEX:
            return ifindex
        if off < 0 or off + size > len(frame):
            return None
        return int.from_bytes(frame[off : off + size], "big")

    for _ in range(10_000):
        ins = prog[pc]
        pc += 1
        code, k = ins.code, ins.k
        k_signed = k - (1 << 32) if k & 0x80000000 else k
        cls = code & 0x07
        if cls == 0x00:  # LD
            mode, size = code & 0xE0, {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
            if mode == 0x00:
                v: int | None = k
            elif mode == 0x20:
                v = load(k_signed, size)
            elif mode == 0x40:
                v = load(x + k_signed, size)
            else:
                v = mem[k] if mode == 0x60 else len(frame)
            if v is None:
                return 0
            a = v
        elif cls == 0x01:  # LDX
            mode = code & 0xE0
            if mode == 0xA0:
                b = load(k_signed, 1)
                if b is None:
                    return 0
                x = (b & 0x0F) * 4
            else:
                x = k if mode == 0x00 else mem[k] if mode == 0x60 else len(frame)
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            src = x if code & 0x08 else k
            op = code & 0xF0
            ops = {0x00: a + src, 0x10: a - src, 0x50: a & src, 0x40: a | src, 0x70: a >> src}
            a = ops[op] & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            src = x if code & 0x08 else k
            cond = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += ins.jt if cond else ins.jf
        elif cls == 0x06:
            return a if code & 0x10 else k
        elif cls == 0x07:
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
    raise AssertionError("BPF program did not return")


def _proto(frame: bytes) -> int:
    return int.from_bytes(frame[12:14], "big")


# --- BPF: model ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "frame", "accept"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES]
)
def test_filter_selects_what_can_name_things(name: str, frame: bytes, accept: bool) -> None:
    kept = bpf_run(build_filter(14), frame, _proto(frame))
    assert kept == (ACCEPT_ALL if accept else 0), name


def test_filter_for_raw_ip_devices_reads_from_offset_zero() -> None:
    prog = build_filter(0)
    for name, frame, accept in FILTER_CASES:
        if _proto(frame) in (0x0800, 0x86DD):
            assert bool(bpf_run(prog, frame[14:], _proto(frame))) == accept, name


def test_wide_and_mdns_options() -> None:
    wide = build_filter(14, wide=True)
    assert all(bpf_run(wide, f, _proto(f)) == ACCEPT_ALL for _, f, _ in FILTER_CASES)
    mdns = build_filter(14, mdns=True)
    assert bpf_run(mdns, v4udp(5353, 5353), 0x0800) == ACCEPT_ALL
    assert bpf_run(mdns, v4udp(40000, 123), 0x0800) == 0


def test_filter_on_several_interfaces_dispatches_on_ifindex() -> None:
    prog = build_filter(ifindexes={3: 14, 7: 0})
    syn = v4tcp(40000, 443, SYN)
    assert bpf_run(prog, syn, 0x0800, ifindex=3) == ACCEPT_ALL
    assert bpf_run(prog, syn[14:], 0x0800, ifindex=7) == ACCEPT_ALL
    assert bpf_run(prog, syn, 0x0800, ifindex=4) == 0  # not ours
    assert bpf_run(prog, v4tcp(40000, 443, ACK), 0x0800, ifindex=3) == 0
    wide = build_filter(ifindexes={3: 14}, wide=True)
    assert bpf_run(wide, ARP, 0x0806, ifindex=3) == ACCEPT_ALL
    assert bpf_run(wide, ARP, 0x0806, ifindex=9) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([0x0800, 0x86DD, 0x0806]))
def test_filter_never_runs_away_on_random_frames(frame: bytes, proto: int) -> None:
    assert bpf_run(build_filter(14), frame, proto) in (0, ACCEPT_ALL)


def test_assembler_refuses_bad_programs() -> None:
    a = BpfAssembler()
    a.op(0x15, 1, jt="nowhere")
    a.op(0x06, 0)
    with pytest.raises(ValueError, match="not defined"):
        a.assemble()
    a = BpfAssembler()
    a.op(0x15, 1, jt="far")
    for _ in range(300):
        a.op(0x00, 0)
    a.label("far")
    a.op(0x06, 0)
    with pytest.raises(ValueError, match="out of range"):
        a.assemble()
    a = BpfAssembler()
    a.label("x")
    with pytest.raises(ValueError, match="twice"):
        a.label("x")
    with pytest.raises(ValueError, match="ending in a return"):
        a.assemble()


# --- nfnetlink_log parser -------------------------------------------------------------------------


def nla(atype: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), atype) + data
    return raw + b"\0" * (-len(raw) % 4)


def nflog_message(
    payload: bytes,
    *,
    hook: int = 2,
    proto: int = 0x0800,
    indev: int | None = 3,
    outdev: int | None = 4,
    hwaddr: bytes | None = CLIENT_MAC,
    ts: tuple[int, int] | None = (1_700_000_000, 250_000),
    seq: int | None = None,
) -> bytes:
    attrs = nla(1, struct.pack(">HBx", proto, hook))
    if ts is not None:
        attrs += nla(3, struct.pack(">QQ", *ts))
    if indev is not None:
        attrs += nla(4, struct.pack(">I", indev))
    if outdev is not None:
        attrs += nla(5, struct.pack(">I", outdev))
    if hwaddr is not None:
        attrs += nla(8, struct.pack(">HH8s", len(hwaddr), 0, hwaddr))
        attrs += nla(15, struct.pack(">H", 1))
    if seq is not None:
        attrs += nla(12, struct.pack(">I", seq))
    attrs += nla(10, b"prefix\0") + nla(9, payload)
    body = struct.pack(">BBH", socket.AF_INET, 0, 7) + attrs
    return struct.pack("=IHHII", 16 + len(body), NFULNL_MSG_PACKET, 2, 0, 0) + body


IP_SYN = ipv4(6, tcp(40000, 443, SYN))


def test_nflog_parser_builds_sll2_with_the_senders_mac() -> None:
    out: list[Packet] = []
    p = NflogParser()
    data = nflog_message(IP_SYN)
    p.parse(data, len(data), out)
    ((ts, lt, frame),) = out
    assert (ts, lt) == (1_700_000_000.25, LINKTYPE_LINUX_SLL2)
    link = parse_link(lt, frame)
    assert not isinstance(link, type(None))
    assert link.src_mac == CLIENT_MAC  # type: ignore[union-attr]
    assert link.pkttype == 0 and link.ethertype == 0x0800  # type: ignore[union-attr]
    assert frame[20:] == IP_SYN
    assert int.from_bytes(frame[4:8], "big") == 3  # the input interface


def test_nflog_parser_output_hook_and_missing_timestamp() -> None:
    out: list[Packet] = []
    p = NflogParser(now=lambda: 42.0)
    v6 = ipv6(17, udp(53, 40000, b"x"))
    data = nflog_message(v6, hook=3, proto=0, indev=None, hwaddr=None, ts=None)
    p.parse(data, len(data), out)
    ((ts, _lt, frame),) = out
    link = parse_link(LINKTYPE_LINUX_SLL2, frame)
    assert ts == 42.0
    assert link.ethertype == 0x86DD and link.src_mac is None  # type: ignore[union-attr]
    assert link.pkttype == 4  # type: ignore[union-attr]
    assert int.from_bytes(frame[4:8], "big") == 4  # the output interface


def test_nflog_parser_counts_gaps_and_malformed_without_raising() -> None:
    p = NflogParser()
    p.expect_seq(0)
    out: list[Packet] = []
    batch = b"".join(nflog_message(IP_SYN, seq=s) for s in (0, 1, 5, 6))
    p.parse(batch, len(batch), out)
    assert len(out) == 4 and p.counters.lost == 3
    bad_attr = bytearray(nflog_message(IP_SYN))
    struct.pack_into("=H", bad_attr, 20, 9999)  # first attribute runs past the message
    no_payload = nflog_message(b"")
    for junk in (bytes(bad_attr), no_payload, b"\x08\x00\x00\x00" + bytes(30), bytes(15)):
        p.parse(junk, len(junk), out)
    assert len(out) == 4
    assert p.counters.malformed == 3  # the short trailing datagram has no whole header: ignored
    err = struct.pack("=IHHII", 36, 2, 0, 77, 0) + struct.pack("=i", -16) + bytes(16)
    p.parse(err, len(err), out)
    assert p.acks[77] == 16


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_nflog_parser_never_raises(junk: bytes) -> None:
    NflogParser().parse(junk, len(junk), [])
    msg = bytearray(nflog_message(IP_SYN))
    msg[20 : 20 + len(junk)] = junk[: len(msg) - 20]
    NflogParser().parse(msg, len(msg), [])


# --- nftables rules -------------------------------------------------------------------------------


def test_nft_rules_sample_first_packets_and_every_name_packet() -> None:
    text = nft_rules(5, ["br-lan", "wlan0"], first_packets=8, snaplen=2048, host_rate=300)
    assert 'iifname { "br-lan", "wlan0" } jump sample_from_lan' in text
    assert 'oifname { "br-lan", "wlan0" } jump sample_to_lan' in text
    assert "ct direction original ct original packets 1-8 goto budget_saddr" in text
    assert "ct direction reply ct reply packets 1-8 goto budget_daddr" in text
    # QUIC long headers (first payload bit) from the client, for 4 x N packets.
    assert "udp ct direction original @th,64,1 1 ct original packets 1-32" in text
    assert "th dport 53 goto budget_saddr" in text and "udp dport { 53, 67, 547 }" in text
    # Every packet chosen is charged to its LAN host's budget before it is logged.
    assert text.count("log group 5 snaplen 2048 accept") == 3  # hosts, both ways; strangers
    assert "update @hosts4 { ip saddr limit rate over 300/second" in text
    assert "update @hosts6 { ip6 daddr limit rate over 300/second" in text
    assert "goto budget_strangers" not in text  # no prefixes: every address is a host
    lan = nft_rules(5, ["br-lan"], lan_prefixes=["192.168.77.9/24", "fd00:77::/64"])
    assert "ip saddr != { 192.168.77.0/24 } goto budget_strangers" in lan
    assert "ip6 daddr != { fd00:77::/64, fe80::/10 } goto budget_strangers" in lan
    v4only = nft_rules(5, ["br-lan"], lan_prefixes=["10.1.0.0/16"])
    assert "ip6 saddr !=" not in v4only.replace("!= @hosts6", "")
    bad: list[dict[str, Any]] = [
        {"group": 70000},
        {"lan_ifaces": []},
        {"lan_ifaces": ['br-lan" accept; #']},
        {"first_packets": 0},
        {"snaplen": 10},
        {"host_rate": 0},
        {"hosts": 1},
        {"lan_prefixes": ["192.168.77.0/33"]},
        {"lan_prefixes": ["lan"]},
    ]
    for kw in bad:
        args: dict[str, Any] = {"group": 5, "lan_ifaces": ["br-lan"], **kw}
        with pytest.raises(ValueError):
            nft_rules(**args)


# --- root: namespaces ---------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000


def _root_reason() -> str | None:
    if os.geteuid() != 0:
        return "live capture tests need root"
    for tool in ("ip", "nft", "conntrack"):
        if shutil.which(tool) is None:
            return f"live capture tests need `{tool}`"
    return None


needs_root = pytest.mark.skipif(_root_reason() is not None, reason=str(_root_reason()))


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run this thread in network namespace `name` (sockets made here stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")


@contextlib.contextmanager
def veth_namespace() -> Iterator[str]:
    """A namespace of our own holding one veth pair, `va` ⇄ `vb`, both up, no addresses."""
    ns = f"phlc-{os.getpid()}-{os.urandom(2).hex()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            ["ip", "-n", ns, "-batch", "-"],
            input="link add va type veth peer name vb\nlink set va up\nlink set vb up\n",
            text=True,
            check=True,
        )
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def drain(sources: Sequence[Any], seconds: float) -> list[list[Packet]]:
    """Everything the sources deliver within `seconds`."""
    got: list[list[Packet]] = [[] for _ in sources]
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select(sources, [], [], min(left, 0.05))
        for i, s in enumerate(sources):
            got[i] += s.read(10_000)
    return got


@needs_root
def test_filter_in_the_kernel_agrees_with_the_model() -> None:
    """Crafted frames sent into one end of a veth; the filtered socket on the other end keeps
    exactly what the model keeps (ring and plain recv)."""
    frames = [f for _, f, _ in FILTER_CASES]
    expected = [name for name, _, accept in FILTER_CASES if accept]
    with veth_namespace() as ns, in_netns(ns):
        ring = PacketSocketSource(["vb"])
        plain = PacketSocketSource(["vb"], ring=False)
        wide = PacketSocketSource(["vb"], wide=True)
        both = PacketSocketSource(["vb", "lo"])  # one socket on all, the program picks by ifindex
        promisc = PacketSocketSource(["vb"], promiscuous=True)
        shown = subprocess.run(["ip", "-d", "link", "show", "vb"], capture_output=True, text=True)
        assert "promiscuity 1" in shown.stdout
        promisc.close()
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sender.bind(("va", 0))
        for frame in frames:
            sender.send(frame)
        sender.close()
        got_ring, got_plain, got_wide, got_both = drain([ring, plain, wide, both], 0.3)
        stats = ring.stats()
        for s in (ring, plain, wide, both):
            s.close()
    by_frame = {f: name for name, f, _ in FILTER_CASES}
    # veth pads nothing, so the frames come back byte for byte (IPv6 ones may be too short
    # for Ethernet's minimum but veth does not care).
    assert [by_frame.get(f, "?") for _, _, f in got_ring] == expected
    assert [by_frame.get(f, "?") for _, _, f in got_plain] == expected
    # Not the copies leaving `va`: that interface is not on the list.
    assert [by_frame.get(f, "?") for _, _, f in got_both] == expected
    assert len(got_wide) >= len(frames)  # plus whatever IPv6 the kernel sends on link-up
    assert {lt for _, lt, _ in got_ring + got_plain} == {LINKTYPE_ETHERNET}
    assert stats["received"] == len(expected) and stats["drops"] == 0


@needs_root
def test_packet_socket_falls_back_to_recv_without_a_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ring(*args: object) -> None:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(PacketSocketSource, "_setup_ring", no_ring)
    with veth_namespace() as ns, in_netns(ns):
        src = PacketSocketSource(["vb"])
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sender.bind(("va", 0))
        sender.send(v4tcp(40000, 443, SYN))
        sender.send(v4tcp(40000, 443, ACK))
        sender.close()
        (got,) = drain([src], 0.2)
        src.close()
    assert (src.mode, src.ring_error) == ("recv", "Cannot allocate memory")
    assert [f for _, _, f in got] == [v4tcp(40000, 443, SYN)]
    assert src.read() == []  # closed: nothing, no error


@needs_root
def test_packet_socket_refuses_unknown_interfaces() -> None:
    with veth_namespace() as ns, in_netns(ns), pytest.raises(LiveCaptureError, match="nosuch"):
        PacketSocketSource(["nosuch0"])


@needs_root
def test_raw_ip_device_gets_linktype_raw() -> None:
    """A tun-like device (no link header): frames start at IP, link type 101."""
    with veth_namespace() as ns:
        made = subprocess.run(
            ["ip", "-n", ns, "tuntap", "add", "tn0", "mode", "tun"], capture_output=True
        )
        if made.returncode != 0:
            pytest.skip("no tun device here")
        with in_netns(ns):
            src = PacketSocketSource(["tn0", "vb"])
            assert [i.l3_offset for i in src.interfaces] == [0, 14]
            assert [i.linktype for i in src.interfaces] == [LINKTYPE_RAW, LINKTYPE_ETHERNET]
            src.close()


# --- root: the namespace lab gateway ----------------------------------------------------------

GROUP = 7
UNLIMITED = {"host_rate": 10_000_000, "host_burst": 10_000_000}
"""Per-host sampling budgets out of the way: these tests measure the readers and the rules'
choice of packets (`test_host_budget_*` the budgets)."""
N = DEFAULT_FIRST_PACKETS
UPLOAD = 4 << 20
TLS_NAME = "api.account.xiaomi.com"
HTTP_NAME = "www.example.com"


@dataclass
class LabRun:
    """One round of traffic through the lab gateway, seen by three sources at once."""

    lab: Any
    mac: bytes
    client_ip: bytes
    http_port: int
    tls_port: int
    nflog: list[Packet] = field(default_factory=list)
    filtered: list[Packet] = field(default_factory=list)
    wide: list[Packet] = field(default_factory=list)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    conntrack: list[Any] = field(default_factory=list)

    def conn(self, port: int) -> Any:
        (entry,) = [c for c in self.conntrack if c.orig.get("sport") == str(port)]
        return entry


@dataclass(frozen=True, slots=True)
class Seen:
    """A captured packet, decoded just enough to count it."""

    up: bool
    src_mac: bytes | None
    proto: int
    lan_port: int
    flags: int
    size: int
    pkttype: int | None


def seen(packets: Sequence[Packet], client_ip: bytes) -> list[Seen]:
    from sensor.decode.ip import parse_ip
    from sensor.model import Weird

    out = []
    for _ts, lt, frame in packets:
        link = parse_link(lt, frame)
        if isinstance(link, Weird):
            continue
        ip = parse_ip(frame, link.offset, link.ethertype)
        if isinstance(ip, Weird) or ip.proto not in (6, 17) or client_ip not in (ip.src, ip.dst):
            continue
        up = ip.src == client_ip
        sport, dport = struct.unpack_from(">HH", frame, ip.l4)
        flags = frame[ip.l4 + 13] if ip.proto == 6 else 0
        lan_port = sport if up else dport
        out.append(Seen(up, link.src_mac, ip.proto, lan_port, flags, ip.length, link.pkttype))
    return out


class Collect:
    def __init__(self) -> None:
        self.flows: list[Flow] = []
        self.devices: list[Device] = []

    def flow(self, flow: Flow) -> None:
        self.flows.append(flow)

    def device(self, device: Device) -> None:
        self.devices.append(device)


def pipeline_flows(packets: list[Packet]) -> list[Flow]:
    sink = Collect()
    p = Pipeline(Config(), sink)
    p.run_packets(packets)
    p.finish()
    return sink.flows


class Reader(threading.Thread):
    """Reads sources while traffic runs (so no ring or buffer can fill up)."""

    def __init__(self, sources: Sequence[Any]) -> None:
        super().__init__(daemon=True)
        self.sources = sources
        self.got: list[list[Packet]] = [[] for _ in sources]
        self.busy = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            select.select(self.sources, [], [], 0.05)
            for i, s in enumerate(self.sources):
                t = time.thread_time()
                self.got[i] += s.read(10_000)
                self.busy += time.thread_time() - t

    def stop(self, settle: float = 0.3) -> None:
        time.sleep(settle)  # NFLOG flushes every 50 ms, ring blocks retire after 50 ms
        self.halt.set()
        self.join(5)


def _sysctl(lab: Any, key: str, value: int) -> None:
    lab.gw_exec(["sh", "-c", f"echo {value} > /proc/sys/{key.replace('.', '/')}"], check=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    if _root_reason():
        pytest.skip(str(_root_reason()))
    from sensor.lab import Lab

    with Lab.create() as built:
        install_rules(GROUP, [built.lan_bridge], netns=built.gw_ns, **UNLIMITED)
        yield built


@pytest.fixture(scope="module")
def run(lab: Any) -> LabRun:
    dev = lab.devices["xiaomi"]
    with in_netns(lab.gw_ns):
        sources: list[LiveSource] = [
            NflogSource(GROUP),
            PacketSocketSource([lab.lan_bridge]),
            PacketSocketSource([lab.lan_bridge], wide=True),
        ]
    reader = Reader(sources)
    reader.start()
    try:
        assert lab.dns_query(dev, TLS_NAME).rcode == 0
        http = lab.http_post(dev, HTTP_NAME, 3000, user_agent="Dalvik/2.1.0 (Linux; U; Android 10)")
        tls = lab.tls_upload(dev, TLS_NAME, UPLOAD)
        tls6 = lab.tls_upload(dev, TLS_NAME, UPLOAD // 4, family=6)
        assert http.status == 200 and tls.status == 200 and tls.received == UPLOAD
        assert tls6.status == 200 and tls6.local == dev.ipv6
    finally:
        reader.stop()
        stats = {
            name: s.stats() for name, s in zip(("nflog", "filtered", "wide"), sources, strict=True)
        }
        for s in sources:
            s.close()
    assert http.local_port is not None and tls.local_port is not None
    nflog, filtered, wide = reader.got
    return LabRun(
        lab,
        bytes.fromhex(dev.mac.replace(":", "")),
        socket.inet_aton(dev.ipv4),
        http.local_port,
        tls.local_port,
        nflog,
        filtered,
        wide,
        stats,
        lab.conntrack(),
    )


@needs_root
def test_nflog_delivers_the_first_packets_of_each_connection_not_the_bulk(run: LabRun) -> None:
    pk = seen(run.nflog, run.client_ip)
    upload = run.conn(run.tls_port)
    for port in (run.http_port, run.tls_port):
        mine = [s for s in pk if s.proto == 6 and s.lan_port == port]
        up = [s for s in mine if s.up]
        down = [s for s in mine if not s.up]
        ends = sum(1 for s in mine if s.flags & (FIN | RST))
        assert up[0].flags & SYN and down[0].flags & SYN  # SYN, SYN-ACK
        assert len(up) <= N + ends and len(down) <= N + ends
        assert len(up) >= min(N, int(run.conn(port).orig["packets"]))
    tls_bytes = sum(s.size for s in pk if s.proto == 6 and s.lan_port == run.tls_port)
    ct_bytes = upload.orig_bytes + upload.reply_bytes
    assert tls_bytes < ct_bytes * 0.02, (tls_bytes, ct_bytes)
    # DNS: all of it, both ways.
    dns = [s for s in pk if s.proto == 17]
    assert any(s.up for s in dns) and any(not s.up for s in dns)
    # Every upstream packet names the client's MAC (downstream ones the WAN peer's).
    assert {s.src_mac for s in pk if s.up} == {run.mac}
    assert run.mac not in {s.src_mac for s in pk if not s.up}


@needs_root
def test_nflog_packets_are_enough_to_name_every_flow(run: LabRun) -> None:
    flows = pipeline_flows(run.nflog)
    by_port = {f.src_port: f for f in flows if f.proto == "tcp"}
    tls, http = by_port[run.tls_port], by_port[run.http_port]
    assert (tls.server_name, tls.name_source) == (TLS_NAME, "tls")
    assert [r.method for r in http.http] == ["POST"]
    assert http.http[0].host == HTTP_NAME and http.server_name == HTTP_NAME
    mac = run.mac.hex(":")
    assert tls.device_mac == mac and http.device_mac == mac
    assert any(f.dst_port == 53 and f.device_mac == mac for f in flows)
    v6 = [f for f in flows if f.proto == "tcp" and ":" in f.src_ip]
    assert [(f.server_name, f.device_mac) for f in v6] == [(TLS_NAME, mac)]


@needs_root
def test_filtered_socket_keeps_handshakes_and_names_drops_bulk(run: LabRun) -> None:
    pk = seen(run.filtered, run.client_ip)
    for port in (run.http_port, run.tls_port):
        syns = [s for s in pk if s.proto == 6 and s.lan_port == port and s.flags & SYN]
        assert [s.up for s in syns] == [True, False]
    upload = run.conn(run.tls_port)
    tls_bytes = sum(s.size for s in pk if s.proto == 6 and s.lan_port == run.tls_port)
    assert tls_bytes < (upload.orig_bytes + upload.reply_bytes) * 0.01
    assert any(s.proto == 17 and s.up for s in pk) and any(s.proto == 17 and not s.up for s in pk)
    flows = pipeline_flows(run.filtered)
    tls = next(f for f in flows if f.src_port == run.tls_port)
    http = next(f for f in flows if f.src_port == run.http_port)
    assert (tls.server_name, tls.name_source) == (TLS_NAME, "tls")
    assert [r.method for r in http.http] == ["POST"]
    assert {lt for _, lt, _ in run.filtered} == {LINKTYPE_ETHERNET}
    v6 = [f for f in flows if f.proto == "tcp" and ":" in f.src_ip]
    assert [f.server_name for f in v6] == [TLS_NAME]


@needs_root
def test_wide_socket_delivers_everything(run: LabRun) -> None:
    pk = seen(run.wide, run.client_ip)
    for port in (run.http_port, run.tls_port):
        ct = run.conn(port)
        frames = [s for s in pk if s.proto == 6 and s.lan_port == port]
        # Over veth the frames are the skbs conntrack counts (GSO: up to 64 KiB each).
        assert len(frames) == int(ct.orig["packets"]) + int(ct.reply["packets"])
        assert sum(s.size for s in frames if s.up) == ct.orig_bytes
    assert max(len(f) for _, _, f in run.wide) > 9000  # GRO/GSO frames far past the MTU


@needs_root
def test_sources_report_no_loss_here(run: LabRun) -> None:
    nf, fi, wi = run.stats["nflog"], run.stats["filtered"], run.stats["wide"]
    assert nf["received"] == nf["delivered"] == len(run.nflog)
    assert nf["overruns"] == nf["drops"] == nf["malformed"] == nf["truncated"] == 0
    assert nf.get("kernel_queue", 0) == 0
    for st_ in (fi, wi):
        assert st_["drops"] == st_["freeze"] == st_["malformed"] == 0
        assert st_["received"] == st_["delivered"]
    assert len(run.filtered) < len(run.wide) // 5
    ct_packets = sum(
        int(c.orig.get("packets", 0)) + int(c.reply.get("packets", 0)) for c in run.conntrack
    )
    ct_bytes = sum(c.orig_bytes + c.reply_bytes for c in run.conntrack)
    for name, got in (("nflog", run.nflog), ("filtered", run.filtered), ("wide", run.wide)):
        size = sum(len(f) for _, _, f in got)
        print(f"{name}: {len(got)} packets ({len(got) / ct_packets:.1%} of conntrack's "
              f"{ct_packets}), {size} bytes ({size / ct_bytes:.2%} of {ct_bytes})")  # fmt: skip


@needs_root
def test_accounting_off_leaves_a_quiet_gap_not_a_flood(lab: Any) -> None:
    """With nf_conntrack_acct=0 new connections carry no counters: the `1-N` rules sample none
    of their packets, where the naive `<= N` matches every one (an nft counter shows it)."""
    naive = (
        "table inet phonehome_naive {\n chain forward {\n"
        "  type filter hook forward priority filter + 20; policy accept;\n"
        f'  iifname "{lab.lan_bridge}" ct original packets <= {N} counter\n }}\n}}\n'
    )
    dev = lab.devices["samsung"]
    with in_netns(lab.gw_ns):
        src = NflogSource(GROUP)
    lab.gw_exec(["nft", "-f", "-"], input=naive, check=True)
    try:
        _sysctl(lab, "net.netfilter.nf_conntrack_acct", 0)
        post = lab.http_post(dev, HTTP_NAME, 1 << 20)
        (packets,) = drain([src], 0.3)
        listing = lab.gw_exec(["nft", "list", "table", "inet", "phonehome_naive"]).stdout
    finally:
        _sysctl(lab, "net.netfilter.nf_conntrack_acct", 1)
        remove_rules(table="phonehome_naive", netns=lab.gw_ns)
        src.close()
    naive_matches = int(listing.split("counter packets ")[1].split()[0])
    pk = seen(packets, socket.inet_aton(dev.ipv4))
    tcp_seen = [s for s in pk if s.proto == 6 and s.lan_port == post.local_port]
    assert all(s.flags & (FIN | RST) for s in tcp_seen)  # only the FIN rule, no sampling
    assert any(s.proto == 17 for s in pk)  # DNS rules need no counters
    print(f"naive rule matched {naive_matches} upstream packets, sampled {len(tcp_seen)}")
    assert naive_matches > 2 * N  # the firehose the `1-N` form avoids
    ct = next(c for c in lab.conntrack() if c.orig.get("sport") == str(post.local_port))
    assert "packets" not in ct.orig  # no counters on this connection


@needs_root
def test_nflog_overrun_is_counted_and_reading_goes_on(lab: Any) -> None:
    dev = lab.devices["laptop"]
    with in_netns(lab.gw_ns):
        src = NflogSource(GROUP, rcvbuf=4096)
    try:
        _flood(lab, dev, "203.0.113.10", 53, 3000)
        time.sleep(0.2)
        (first,) = drain([src], 0.3)
        _flood(lab, dev, "203.0.113.10", 53, 5)
        (later,) = drain([src], 0.3)
        stats = src.stats()
    finally:
        src.close()
    assert stats["overruns"] >= 1
    assert stats["drops"] > 0 and len(first) + len(later) + stats["drops"] >= 3000
    assert len(later) == 5


@needs_root
def test_nflog_pending_names_what_the_socket_no_longer_signals(lab: Any) -> None:
    """The kernel batches messages into datagrams; a `read` smaller than a batch keeps the
    rest. The socket is then not readable for them, and only `pending()` says they are
    there: a select loop that trusts readability alone strands them until the next packet."""
    dev = lab.devices["laptop"]
    with in_netns(lab.gw_ns):
        src = NflogSource(GROUP, rcvbuf=4 << 20)
    try:
        _flood(lab, dev, "203.0.113.10", 53, 200)
        time.sleep(0.3)  # every batch flushed (50 ms)
        unread = src.stats()["backlog"]  # the batches wait in the socket, counted in bytes
        got: list[Packet] = []
        while select.select([src], [], [], 0.2)[0]:  # read only when the socket says so
            got += src.read(3)
        held = src.pending()
        assert held > 0  # 3 of each batch were read; the rest is held, and unsignalled
        assert not select.select([src], [], [], 0.2)[0]
        while batch := src.read(3):
            got += batch
        stats = src.stats()
    finally:
        src.close()
    assert src.pending() == 0
    assert unread > 0 and stats["backlog"] == 0
    assert len(got) == stats["received"] == stats["delivered"] >= 200 - stats["drops"]


SPOOF = r"""
import random, socket, struct, sys
count, dst = int(sys.argv[1]), socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
rnd = random.Random(7)
for i in range(count):
    src = bytes([192, 0, 2, rnd.randrange(1, 255)])  # TEST-NET-1: nobody on this LAN
    udp = struct.pack("!HHHH", rnd.randrange(1024, 65536), 9, 12, 0) + b"spoof"[:4]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0, src, dst)
    try:
        s.sendto(ip + udp, (sys.argv[2], 0))
    except OSError:
        pass
"""


@needs_root
def test_a_flushed_table_is_noticed_and_the_budget_count_never_goes_back(lab: Any) -> None:
    """`rules_missing` tells a vanished table (ENOENT) from a present one, and after the
    table is made anew (its counter back at 0) `over_budget` carries what it had counted."""
    laptop = lab.devices["laptop"]
    tiny = {"host_rate": 10, "host_burst": 10}
    install_rules(GROUP, [lab.lan_bridge], netns=lab.gw_ns, **tiny)
    try:
        with in_netns(lab.gw_ns):
            src = NflogSource(GROUP, rcvbuf=16 << 20, budget_table=NFT_TABLE)
        try:
            assert not src.rules_missing()
            _flood(lab, laptop, "203.0.113.10", 53, 200)
            time.sleep(1.1)  # the counter is read at most once a second
            before = src.over_budget()
            assert before is not None and before >= 150
            lab.gw_exec(["nft", "delete", "table", "inet", NFT_TABLE], check=True)
            assert src.rules_missing()
            time.sleep(1.1)
            assert src.over_budget() == before  # unknown now: the last value stays
            install_rules(GROUP, [lab.lan_bridge], netns=lab.gw_ns, **tiny)
            assert not src.rules_missing()
            _flood(lab, laptop, "203.0.113.10", 53, 100)
            time.sleep(1.1)
            after = src.over_budget()
            while src.read(4096):
                pass
        finally:
            src.close()
    finally:
        install_rules(GROUP, [lab.lan_bridge], netns=lab.gw_ns, **UNLIMITED)
    assert after is not None and after >= before + 50, (before, after)


def _sources_in(packets: Sequence[Packet], prefix: bytes) -> int:
    """Packets whose IPv4 source starts with `prefix`."""
    from sensor.decode.ip import parse_ip
    from sensor.model import Weird

    n = 0
    for _ts, lt, frame in packets:
        link = parse_link(lt, frame)
        if isinstance(link, Weird):
            continue
        ip = parse_ip(frame, link.offset, link.ethertype)
        n += not isinstance(ip, Weird) and ip.src.startswith(prefix)
    return n


@needs_root
@pytest.mark.parametrize("prefixes", [False, True], ids=["any-source", "lan-prefixes"])
def test_spoofed_sources_cannot_fill_the_host_sets(lab: Any, prefixes: bool) -> None:
    """A LAN host spoofing many source addresses fills the per-host sets (here 64 addresses):
    a host new to them, the phone, is then not sampled at all. With site.lan_networks given
    to the rules, spoofed addresses outside them share one stranger budget and never enter
    the sets, and the phone's DNS and POST are logged whole."""
    laptop, phone = lab.devices["laptop"], lab.devices["xiaomi"]
    lan = ["192.168.77.0/24", "fd00:77::/64"] if prefixes else []
    install_rules(GROUP, [lab.lan_bridge], netns=lab.gw_ns, hosts=64, lan_prefixes=lan)
    try:
        with in_netns(lab.gw_ns):
            src = NflogSource(GROUP, rcvbuf=16 << 20, budget_table=NFT_TABLE)
        try:
            proc = lab.exec(laptop, [lab.python, "-c", SPOOF, "3000", "203.0.113.10"], timeout=60)
            assert proc.returncode == 0, proc.stderr
            assert lab.dns_query(phone, TLS_NAME).rcode == 0
            assert lab.http_post(phone, HTTP_NAME, 2000).status == 200
            time.sleep(0.3)
            got: list[Packet] = []
            while batch := src.read(4096):
                got += batch
        finally:
            src.close()
        listed = lab.gw_exec(["nft", "list", "set", "inet", NFT_TABLE, "hosts4"]).stdout
        spoofed = _sources_in(got, bytes([192, 0, 2]))
    finally:
        install_rules(GROUP, [lab.lan_bridge], netns=lab.gw_ns, **UNLIMITED)
    mine = seen(got, socket.inet_aton(phone.ipv4))
    posts = [s for s in mine if s.proto == 6]
    if not prefixes:  # the attack works: the sets are full, the phone is blind
        assert "192.0.2." in listed and not posts, (listed, len(mine))
        return
    assert "192.0.2." not in listed  # strangers never get an element
    assert spoofed > 0  # they are still sampled, within their shared budget
    assert any(s.proto == 17 and s.up for s in mine)  # the phone's query
    assert sum(1 for s in posts if s.up) >= 3 and any(not s.up for s in posts)


def _flood(lab: Any, dev: Any, host: str, port: int, count: int, size: int = 32) -> None:
    """`count` UDP datagrams from a device, as fast as one Python process sends them."""
    script = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"m = b'x' * {size}\n"
        f"for _ in range({count}):\n"
        f"    s.sendto(m, ({host!r}, {port}))\n"
    )
    proc = lab.exec(dev, [lab.python, "-c", script], timeout=60)
    assert proc.returncode == 0, proc.stderr


@needs_root
def test_reader_throughput(lab: Any) -> None:
    """Fill each source's kernel buffer with small packets, then time draining it: what the
    reader sustains per second of its own time (figures printed with -s)."""
    dev = lab.devices["laptop"]
    count = 40_000
    with in_netns(lab.gw_ns):
        nflog = NflogSource(GROUP, rcvbuf=64 << 20)
        wide = PacketSocketSource([lab.lan_bridge], wide=True)
        plain = PacketSocketSource([lab.lan_bridge], wide=True, ring=False, rcvbuf=64 << 20)
    sources: dict[str, LiveSource] = {"nflog": nflog, "ring": wide, "recv": plain}
    try:
        _flood(lab, dev, "203.0.113.10", 53, count)
        time.sleep(0.3)
        rates = {}
        for name, src in sources.items():
            n = 0
            t = time.perf_counter()
            while batch := src.read(4096):
                n += len(batch)
            took = time.perf_counter() - t
            stats = src.stats()
            lost = stats["drops"]
            assert n + lost >= count, (name, n, stats)
            rates[name] = n / took
            print(f"{name}: {n} packets in {took * 1000:.0f} ms = {n / took:,.0f}/s; {stats}")
    finally:
        for src in sources.values():
            src.close()
    assert set(rates) == set(sources), rates  # every source drained; its rate is a figure


@needs_root
def test_live_packets_feed_the_pipeline(lab: Any) -> None:
    dev = lab.devices["samsung"]
    with in_netns(lab.gw_ns):
        src = NflogSource(GROUP)
    deadline = time.monotonic() + 10
    sink = Collect()
    p = Pipeline(Config(), sink)
    try:
        lab.dns_query(dev, TLS_NAME)
        lab.tls_upload(dev, TLS_NAME, 100_000)

        def stop() -> bool:
            named = [e.flow for e in p.flows.entries.values()] + sink.flows
            return time.monotonic() > deadline or any(f.server_name == TLS_NAME for f in named)

        p.run_packets(live_packets(src, stop, poll_timeout=0.05))
        p.finish()
    finally:
        src.close()
    assert any(f.server_name == TLS_NAME and f.name_source == "tls" for f in sink.flows)


_ECHO = """
import select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
end, n = time.monotonic() + 10, 0
while n < 3 and time.monotonic() < end:
    if select.select([s], [], [], 0.2)[0]:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
        n += 1
"""

_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
for i in range(3):
    s.sendto(b"query %d" % i, (sys.argv[1], 53))
    s.recvfrom(2048)
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
d.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
d.bind(("0.0.0.0", 68))
d.sendto(b"dhcp discover, more or less", ("255.255.255.255", 67))
"""


@needs_root
def test_nflog_sees_the_gateways_own_dns_and_dhcp(lab: Any) -> None:
    """A resolver on the gateway: queries pass the input hook (with the device's MAC),
    answers the output hook (outgoing, no MAC); a DHCP broadcast passes the input hook."""
    dev = lab.devices["xiaomi"]
    gw = lab.gw_lan_ipv4
    with in_netns(lab.gw_ns):
        src = NflogSource(GROUP)
    echo = lab.gw_popen([lab.python, "-c", _ECHO, gw], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        asked = lab.exec(dev, [lab.python, "-c", _ASK, gw], timeout=20)
        assert asked.returncode == 0, asked.stderr
        (packets,) = drain([src], 0.3)
    finally:
        echo.wait(15)
        src.close()
    pk = seen(packets, socket.inet_aton(dev.ipv4))
    mac = bytes.fromhex(dev.mac.replace(":", ""))
    dns = [s for s in pk if s.lan_port != 68]
    assert {(s.src_mac, s.pkttype) for s in dns if s.up} == {(mac, 0)}
    assert {(s.src_mac, s.pkttype) for s in dns if not s.up} == {(None, 4)}
    assert sum(s.up for s in dns) == 3 and sum(not s.up for s in dns) == 3
    dhcp = [s for s in pk if s.lan_port == 68]
    assert [(s.up, s.src_mac) for s in dhcp] == [(True, mac)]


@needs_root
def test_host_budget_holds_back_a_flooding_host_not_the_others(lab: Any) -> None:
    """One LAN host floods DNS (every DNS packet is sampled): past its budget its packets are
    counted in `over_budget` and not logged, while another host's DNS and connection still
    reach NFLOG whole."""
    laptop, phone = lab.devices["laptop"], lab.devices["xiaomi"]
    rate, burst, count = 200, 400, 3000
    install_rules(GROUP, [lab.lan_bridge], netns=lab.gw_ns, host_rate=rate, host_burst=burst)
    try:
        with in_netns(lab.gw_ns):
            src = NflogSource(GROUP, rcvbuf=16 << 20, budget_table=NFT_TABLE)
        try:
            assert src.over_budget() == 0
            t0 = time.monotonic()
            _flood(lab, laptop, "203.0.113.10", 53, count)
            took = time.monotonic() - t0
            assert lab.dns_query(phone, TLS_NAME).rcode == 0
            assert lab.http_post(phone, HTTP_NAME, 2000).status == 200
            time.sleep(0.3)
            got: list[Packet] = []
            while batch := src.read(4096):
                got += batch
            time.sleep(1.1)  # the counter is read at most once a second
            over = src.over_budget()
        finally:
            src.close()
        flood = seen(got, socket.inet_aton(laptop.ipv4))
        mine = seen(got, socket.inet_aton(phone.ipv4))
        logged = sum(1 for s in flood if s.proto == 17 and s.up)
        assert burst <= logged <= burst + rate * (took + 1), (logged, took)
        assert over is not None and over >= count - logged - 5, (over, logged)
        assert any(s.proto == 17 and s.up for s in mine)  # the phone's query
        assert any(s.proto == 17 and not s.up for s in mine)  # and its answer
        posts = [s for s in mine if s.proto == 6]
        assert sum(1 for s in posts if s.up) >= 3 and any(not s.up for s in posts)
    finally:
        install_rules(GROUP, [lab.lan_bridge], netns=lab.gw_ns, **UNLIMITED)
