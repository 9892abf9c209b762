"""IPv4 and IPv6 (with extension headers), and the TCP/UDP headers above them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sensor.model import Weird

TCP = 6
UDP = 17

# IPv6 extension headers that we walk past (RFC 8200 and the IANA list).
_HOP_BY_HOP = 0
_ROUTING = 43
_FRAGMENT = 44
_ESP = 50
_AH = 51
_DEST_OPTS = 60
_MOBILITY = 135
_HIP = 139
_SHIM6 = 140
_NO_NEXT = 59
_MAX_EXT = 8


@dataclass(frozen=True, slots=True)
class IpPacket:
    version: int
    src: bytes
    dst: bytes
    proto: int
    """Upper-layer protocol after all extension headers."""
    l4: int
    """Offset of the upper-layer header in the frame."""
    length: int
    """IP total length (header + payload) as the header says, or what the frame holds."""
    end: int
    """Offset just past this packet's payload in the frame (ignores Ethernet padding)."""
    frag_offset: int = 0
    more_fragments: bool = False
    frag_id: int | None = None


@dataclass(frozen=True, slots=True)
class Transport:
    sport: int
    dport: int
    payload: bytes
    seq: int = 0
    flags: int = 0
    """TCP flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10)."""


def ip_str(raw: bytes) -> str:
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    return str(ipaddress.IPv6Address(raw))


def parse_ip(frame: bytes, off: int, ethertype: int) -> IpPacket | Weird:
    if ethertype == 0x0800:
        return _parse_v4(frame, off)
    if ethertype == 0x86DD:
        return _parse_v6(frame, off)
    if ethertype == 0x0806:
        return Weird("link.arp")
    return Weird("link.not_ip")


def _parse_v4(frame: bytes, off: int) -> IpPacket | Weird:
    n = len(frame)
    if n < off + 20:
        return Weird("ip.truncated")
    vihl = frame[off]
    if vihl >> 4 != 4:
        return Weird("ip.bad_version")
    ihl = (vihl & 15) * 4
    if ihl < 20:
        return Weird("ip.bad_header_length")
    total = (frame[off + 2] << 8) | frame[off + 3]
    if total == 0:  # TSO/GRO frames captured before segmentation
        total = n - off
    if total < ihl:
        return Weird("ip.bad_total_length")
    if n < off + ihl:
        return Weird("ip.truncated")
    fl = (frame[off + 6] << 8) | frame[off + 7]
    return IpPacket(
        4,
        frame[off + 12 : off + 16],
        frame[off + 16 : off + 20],
        frame[off + 9],
        off + ihl,
        total,
        min(n, off + total),
        (fl & 0x1FFF) * 8,
        bool(fl & 0x2000),
        (frame[off + 4] << 8) | frame[off + 5] if fl & 0x3FFF else None,
    )


def _parse_v6(frame: bytes, off: int) -> IpPacket | Weird:
    n = len(frame)
    if n < off + 40:
        return Weird("ip.truncated")
    if frame[off] >> 4 != 6:
        return Weird("ip.bad_version")
    plen = (frame[off + 4] << 8) | frame[off + 5]
    if plen == 0:  # jumbogram or GRO frame: trust the capture
        plen = n - off - 40
    nh = frame[off + 6]
    pos = off + 40
    frag_offset = 0
    more = False
    frag_id = None
    for _ in range(_MAX_EXT + 1):  # up to _MAX_EXT headers, then the upper layer
        if nh in (_HOP_BY_HOP, _ROUTING, _DEST_OPTS, _MOBILITY, _HIP, _SHIM6):
            if n < pos + 8:
                return Weird("ip6.truncated_ext_header")
            nh, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
        elif nh == _FRAGMENT:
            if n < pos + 8:
                return Weird("ip6.truncated_ext_header")
            fo = (frame[pos + 2] << 8) | frame[pos + 3]
            frag_offset, more = fo & 0xFFF8, bool(fo & 1)
            frag_id = int.from_bytes(frame[pos + 4 : pos + 8], "big")
            nh, pos = frame[pos], pos + 8
        elif nh == _AH:
            if n < pos + 8:
                return Weird("ip6.truncated_ext_header")
            nh, pos = frame[pos], pos + (frame[pos + 1] + 2) * 4
        else:
            break
    else:
        return Weird("ip6.too_many_ext_headers")
    if pos > n:
        return Weird("ip6.truncated_ext_header")
    return IpPacket(
        6,
        frame[off + 8 : off + 24],
        frame[off + 24 : off + 40],
        nh,
        pos,
        plen + 40,
        min(n, off + 40 + plen),
        frag_offset,
        more,
        frag_id,
    )


def parse_transport(frame: bytes, ip: IpPacket) -> Transport | Weird:
    pos, end = ip.l4, ip.end
    if ip.proto == TCP:
        if end < pos + 20:
            return Weird("tcp.truncated")
        doff = (frame[pos + 12] >> 4) * 4
        if doff < 20:
            return Weird("tcp.bad_data_offset")
        if end < pos + doff:
            return Weird("tcp.truncated")
        return Transport(
            (frame[pos] << 8) | frame[pos + 1],
            (frame[pos + 2] << 8) | frame[pos + 3],
            frame[pos + doff : end],
            int.from_bytes(frame[pos + 4 : pos + 8], "big"),
            frame[pos + 13],
        )
    if ip.proto == UDP:
        if end < pos + 8:
            return Weird("udp.truncated")
        ulen = (frame[pos + 4] << 8) | frame[pos + 5]
        stop = min(end, pos + ulen) if ulen >= 8 else end
        return Transport(
            (frame[pos] << 8) | frame[pos + 1],
            (frame[pos + 2] << 8) | frame[pos + 3],
            frame[pos + 8 : stop],
        )
    return Weird("ip.not_tcp_udp")
