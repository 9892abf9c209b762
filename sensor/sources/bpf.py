"""Classic BPF: an assembler with labels, and the program that chooses in the kernel which
packets an AF_PACKET socket hands over (those that can name things)."""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sensor.decode.dns import MDNS_PORT
from sensor.sources.pcap import MAX_RECORD

# --- classic BPF --------------------------------------------------------------------------------

SO_ATTACH_FILTER = 26

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
