"""IPv4 and IPv6 (options, fragments, extension headers) and the TCP/UDP headers above them."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode.ip import IpPacket, Transport, ip_str, parse_ip, parse_transport
from sensor.model import Weird

V4, V6 = 0x0800, 0x86DD
SRC4 = ipaddress.ip_address("192.168.1.23").packed
DST4 = ipaddress.ip_address("203.0.113.10").packed
SRC6 = ipaddress.ip_address("fd00:1::23").packed
DST6 = ipaddress.ip_address("2001:db8::20").packed
ETH = bytes(12) + b"\x08\x00"  # 14 bytes in front of the IP header, as an Ethernet frame has
PAD = b"\xee" * 10  # Ethernet padding after a short packet: never part of any payload
ALL = b"abcdefghij"

HOP_BY_HOP, ROUTING, FRAGMENT, ESP, AH, NO_NEXT, DEST_OPTS = 0, 43, 44, 50, 51, 59, 60


# --- building packets --------------------------------------------------------------------------


def tcp(
    payload: bytes = b"",
    *,
    sport: int = 40001,
    dport: int = 443,
    seq: int = 0x01020304,
    flags: int = 0x18,
    options: bytes = b"",
    doff: int | None = None,
) -> bytes:
    words = doff if doff is not None else 5 + len(options) // 4
    head = struct.pack(">HHIIBBHHH", sport, dport, seq, 0, words << 4, flags, 65535, 0, 0)
    return head + options + payload


def udp(
    payload: bytes = b"", *, sport: int = 50000, dport: int = 53, ulen: int | None = None
) -> bytes:
    length = 8 + len(payload) if ulen is None else ulen
    return struct.pack(">HHHH", sport, dport, length, 0) + payload


def ipv4(
    l4: bytes,
    proto: int = 6,
    *,
    options: bytes = b"",
    total: int | None = None,
    flags_frag: int = 0,
    ident: int = 0x1234,
    ihl: int | None = None,
) -> bytes:
    words = ihl if ihl is not None else 5 + len(options) // 4
    length = 20 + len(options) + len(l4) if total is None else total
    head = struct.pack(
        ">BBHHHBBH4s4s", 0x40 | words, 0, length, ident, flags_frag, 64, proto, 0, SRC4, DST4
    )
    return head + options + l4


def ipv6(body: bytes, nh: int, *, plen: int | None = None) -> bytes:
    length = len(body) if plen is None else plen
    return struct.pack(">IHBB16s16s", 0x60000000, length, nh, 64, SRC6, DST6) + body


def ext(nh: int, units: int = 0) -> bytes:
    """Hop-by-hop, routing or destination options header of (units + 1) * 8 bytes."""
    return bytes([nh, units]) + b"\x01" * ((units + 1) * 8 - 2)


def frag(nh: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack(">BBHI", nh, 0, offset | int(more), ident)


def ah(nh: int, icv: int = 12) -> bytes:
    """Authentication header: 12 fixed bytes and an ICV; its length field counts 4-byte words
    minus 2."""
    size = 12 + icv
    return struct.pack(">BBHII", nh, size // 4 - 2, 0, 0x1000, 1) + b"\xaa" * icv


def _ip(frame: bytes, off: int, ethertype: int) -> IpPacket:
    got = parse_ip(frame, off, ethertype)
    assert isinstance(got, IpPacket), got
    return got


def _tr(frame: bytes, ip: IpPacket) -> Transport:
    got = parse_transport(frame, ip)
    assert isinstance(got, Transport), got
    return got


# --- IPv4 --------------------------------------------------------------------------------------


def test_ipv4_tcp() -> None:
    packet = ipv4(tcp(b"hello", seq=0xFFFFFFF0, flags=0x12))
    frame = ETH + packet
    ip = _ip(frame, 14, V4)
    assert ip == IpPacket(4, SRC4, DST4, 6, 34, len(packet), len(frame))
    assert (ip_str(ip.src), ip_str(ip.dst)) == ("192.168.1.23", "203.0.113.10")
    tr = _tr(frame, ip)
    assert tr == Transport(40001, 443, b"hello", 0xFFFFFFF0, 0x12)


def test_ipv4_options_move_the_transport_header() -> None:
    options = b"\x07\x07\x04" + bytes(4) + b"\x00"  # record route, end of options: 8 bytes
    frame = ETH + ipv4(udp(b"q", sport=5353, dport=5353), 17, options=options)
    ip = _ip(frame, 14, V4)
    assert (ip.l4, ip.proto, ip.length) == (14 + 28, 17, 28 + 9)
    assert _tr(frame, ip) == Transport(5353, 5353, b"q")


def test_ethernet_padding_is_not_payload() -> None:
    frame = ETH + ipv4(udp(b"abcd"), 17) + PAD
    ip = _ip(frame, 14, V4)
    assert ip.end == len(frame) - len(PAD) and ip.length == 32
    assert _tr(frame, ip).payload == b"abcd"
    frame = ETH + ipv4(tcp(b"x")) + PAD
    assert _tr(frame, _ip(frame, 14, V4)).payload == b"x"
    frame = ETH + ipv4(tcp()) + PAD  # a bare ACK
    assert _tr(frame, _ip(frame, 14, V4)).payload == b""


def test_ipv4_first_fragment() -> None:
    data = udp(bytes(1472), ulen=8 + 3000)  # the datagram goes on in later fragments
    frame = ETH + ipv4(data, 17, flags_frag=0x2000, ident=0xBEEF)
    ip = _ip(frame, 14, V4)
    assert (ip.frag_offset, ip.more_fragments, ip.frag_id) == (0, True, 0xBEEF)
    tr = _tr(frame, ip)
    assert (tr.sport, tr.dport, len(tr.payload)) == (50000, 53, 1472)


@pytest.mark.parametrize("more", [False, True])
def test_ipv4_later_fragment(more: bool) -> None:
    frame = ETH + ipv4(bytes(100), 17, flags_frag=(0x2000 if more else 0) | 185, ident=0xBEEF)
    ip = _ip(frame, 14, V4)
    assert (ip.frag_offset, ip.more_fragments, ip.frag_id, ip.proto) == (1480, more, 0xBEEF, 17)


def test_ipv4_dont_fragment_is_not_a_fragment() -> None:
    ip = _ip(ETH + ipv4(tcp(), flags_frag=0x4000), 14, V4)
    assert (ip.frag_offset, ip.more_fragments, ip.frag_id) == (0, False, None)


def test_ipv4_tso_total_length_zero_trusts_the_capture() -> None:
    payload = bytes(range(256)) * 40  # a 10 kB super-segment, as captured before segmentation
    frame = ETH + ipv4(tcp(payload), total=0)
    ip = _ip(frame, 14, V4)
    assert (ip.length, ip.end) == (len(frame) - 14, len(frame))
    assert _tr(frame, ip).payload == payload


def test_ipv4_snapped_frame_keeps_the_header_length() -> None:
    packet = ipv4(tcp(bytes(1400)))
    frame = ETH + packet[:96]  # snaplen 110
    ip = _ip(frame, 14, V4)
    assert (ip.length, ip.end) == (len(packet), len(frame))  # bytes counted as sent
    assert len(_tr(frame, ip).payload) == 96 - 40


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (ipv4(tcp())[:19], "ip.truncated"),
        (b"\x65" + ipv4(tcp())[1:], "ip.bad_version"),
        (ipv4(tcp(), ihl=4), "ip.bad_header_length"),
        (ipv4(tcp(), total=16), "ip.bad_total_length"),
        (ipv4(b"", ihl=15, total=60) + bytes(10), "ip.truncated"),
    ],
    ids=["short", "version", "ihl", "total", "options-cut"],
)
def test_ipv4_weird(packet: bytes, reason: str) -> None:
    assert parse_ip(ETH + packet, 14, V4) == Weird(reason)


def test_not_ip_ethertypes() -> None:
    assert parse_ip(ETH + bytes(28), 14, 0x0806) == Weird("link.arp")
    assert parse_ip(ETH + bytes(28), 14, 0x88CC) == Weird("link.not_ip")


# --- IPv6 --------------------------------------------------------------------------------------


def test_ipv6_udp_with_trailing_bytes() -> None:
    body = udp(b"query", sport=5353, dport=53)
    frame = ETH + ipv6(body, 17) + PAD
    ip = _ip(frame, 14, V6)
    assert ip == IpPacket(6, SRC6, DST6, 17, 54, 40 + len(body), 54 + len(body))
    assert (ip_str(ip.src), ip_str(ip.dst)) == ("fd00:1::23", "2001:db8::20")
    assert _tr(frame, ip) == Transport(5353, 53, b"query")


def test_ipv6_payload_length_zero_trusts_the_capture() -> None:
    body = tcp(bytes(9000))
    frame = ETH + ipv6(body, 6, plen=0)
    ip = _ip(frame, 14, V6)
    assert (ip.length, ip.end) == (40 + len(body), len(frame))
    assert len(_tr(frame, ip).payload) == 9000


def test_ipv6_hop_by_hop_routing_destination_options() -> None:
    chain = ext(ROUTING) + ext(DEST_OPTS, 2) + ext(6, 1)
    frame = ETH + ipv6(chain + tcp(b"GET /"), HOP_BY_HOP)
    ip = _ip(frame, 14, V6)
    assert (ip.proto, ip.l4) == (6, 14 + 40 + 8 + 24 + 16)
    assert _tr(frame, ip).payload == b"GET /"


def test_ipv6_first_fragment() -> None:
    body = frag(17, 0, True, 0xDEADBEEF) + udp(bytes(1000), ulen=8 + 2000)
    frame = ETH + ipv6(body, FRAGMENT)
    ip = _ip(frame, 14, V6)
    assert (ip.proto, ip.l4) == (17, 14 + 48)
    assert (ip.frag_offset, ip.more_fragments, ip.frag_id) == (0, True, 0xDEADBEEF)
    tr = _tr(frame, ip)
    assert (tr.sport, len(tr.payload)) == (50000, 1000)


def test_ipv6_later_fragment_after_hop_by_hop() -> None:
    body = ext(FRAGMENT) + frag(17, 1448, False, 7) + bytes(552)
    ip = _ip(ETH + ipv6(body, HOP_BY_HOP), 14, V6)
    assert (ip.proto, ip.frag_offset, ip.more_fragments, ip.frag_id) == (17, 1448, False, 7)


@pytest.mark.parametrize(
    ("proto", "l4"), [(6, tcp(b"tls", sport=40002)), (17, udp(b"dns", sport=40002))]
)
def test_ipv6_authentication_header(proto: int, l4: bytes) -> None:
    frame = ETH + ipv6(ah(proto) + l4, AH)
    ip = _ip(frame, 14, V6)
    assert (ip.proto, ip.l4) == (proto, 14 + 40 + 24)
    tr = _tr(frame, ip)
    assert (tr.sport, tr.payload) == (40002, l4[-3:])


def test_ipv6_long_chain_of_different_headers() -> None:
    chain = ext(DEST_OPTS) + ext(ROUTING, 1) + frag(AH, 0, False, 1) + ah(DEST_OPTS, 20)
    chain += ext(17)
    frame = ETH + ipv6(chain + udp(b"x"), HOP_BY_HOP)
    ip = _ip(frame, 14, V6)
    assert (ip.proto, ip.l4) == (17, 14 + 40 + 8 + 16 + 8 + 32 + 8)
    assert _tr(frame, ip).payload == b"x"


def dest_opts_chain(count: int, last: int = 6) -> bytes:
    return b"".join(ext(DEST_OPTS if i < count - 1 else last) for i in range(count))


def test_seven_extension_headers_are_walked() -> None:
    frame = ETH + ipv6(dest_opts_chain(7) + tcp(b"ok"), DEST_OPTS)
    ip = _ip(frame, 14, V6)
    assert (ip.proto, ip.l4) == (6, 14 + 40 + 56)


def test_eight_extension_headers_are_walked() -> None:
    ip = _ip(ETH + ipv6(dest_opts_chain(8) + tcp(b"ok"), DEST_OPTS), 14, V6)
    assert (ip.proto, ip.l4) == (6, 14 + 40 + 64)


def test_too_many_extension_headers_is_weird() -> None:
    frame = ETH + ipv6(dest_opts_chain(9) + tcp(), DEST_OPTS)
    assert parse_ip(frame, 14, V6) == Weird("ip6.too_many_ext_headers")


@pytest.mark.parametrize(
    ("nh", "body"),
    [
        (HOP_BY_HOP, ext(6)[:4]),  # the header itself is cut
        (HOP_BY_HOP, ext(6, 2)[:16]),  # says 24 bytes, 16 are there
        (FRAGMENT, frag(17, 0, True, 1)[:6]),
        (AH, ah(6)[:7]),
        (AH, ah(6, icv=40)[:30]),
        (ROUTING, ext(DEST_OPTS) + ext(6)[:3]),  # the second header is cut
    ],
    ids=["hbh-header", "hbh-body", "fragment", "ah-header", "ah-icv", "second"],
)
def test_truncated_extension_headers_are_weird(nh: int, body: bytes) -> None:
    assert parse_ip(ETH + ipv6(body, nh), 14, V6) == Weird("ip6.truncated_ext_header")


@pytest.mark.parametrize("nh", [ESP, NO_NEXT, 58])
def test_ipv6_upper_layers_that_are_not_tcp_or_udp(nh: int) -> None:
    frame = ETH + ipv6(bytes(32), nh)
    ip = _ip(frame, 14, V6)
    assert (ip.proto, ip.l4) == (nh, 54)
    assert parse_transport(frame, ip) == Weird("ip.not_tcp_udp")


def test_ipv6_payload_length_bounds_the_extension_headers() -> None:
    # The payload length covers only the hop-by-hop header; what follows is padding.
    frame = ETH + ipv6(ext(6) + tcp(b"not mine"), HOP_BY_HOP, plen=8)
    ip = _ip(frame, 14, V6)
    assert ip.end == 14 + 48
    assert parse_transport(frame, ip) == Weird("tcp.truncated")


@pytest.mark.parametrize(
    ("packet", "reason"),
    [(ipv6(b"", 6)[:39], "ip.truncated"), (b"\x45" + ipv6(tcp(), 6)[1:], "ip.bad_version")],
)
def test_ipv6_weird(packet: bytes, reason: str) -> None:
    assert parse_ip(ETH + packet, 14, V6) == Weird(reason)


# --- TCP and UDP -------------------------------------------------------------------------------


def test_tcp_options_and_fields() -> None:
    options = b"\x02\x04\x05\xb4\x01\x03\x03\x07" + b"\x04\x02\x00\x00"  # MSS, WS, SACK-permitted
    frame = ETH + ipv4(tcp(b"\x16\x03\x01", seq=123456789, flags=0x02, options=options)) + PAD
    tr = _tr(frame, _ip(frame, 14, V4))
    assert tr == Transport(40001, 443, b"\x16\x03\x01", 123456789, 0x02)


@pytest.mark.parametrize(
    ("segment", "reason"),
    [
        (tcp(doff=4), "tcp.bad_data_offset"),
        (tcp()[:19], "tcp.truncated"),
        (tcp(doff=15) + bytes(8), "tcp.truncated"),
    ],
    ids=["doff-4", "short", "options-cut"],
)
def test_tcp_weird(segment: bytes, reason: str) -> None:
    frame = ETH + ipv4(segment) + PAD  # the padding must not be read as the missing bytes
    assert parse_transport(frame, _ip(frame, 14, V4)) == Weird(reason)


@pytest.mark.parametrize(
    ("ulen", "payload"),
    [
        (8 + 3, b"abc"),
        (8 + 10, b"abcdefghij"),
        (0, b"abcdefghij"),
        (9000, b"abcdefghij"),
        (4, b"abcdefghij"),
    ],
    ids=["shorter", "exact", "zero", "longer", "below-header"],
)
def test_udp_length(ulen: int, payload: bytes) -> None:
    frame = ETH + ipv4(udp(ALL, ulen=ulen), 17) + PAD
    assert _tr(frame, _ip(frame, 14, V4)).payload == payload


def test_udp_truncated() -> None:
    frame = ETH + ipv4(udp()[:6], 17) + PAD
    assert parse_transport(frame, _ip(frame, 14, V4)) == Weird("udp.truncated")


# --- never raises ------------------------------------------------------------------------------

EXT = [HOP_BY_HOP, ROUTING, FRAGMENT, AH, DEST_OPTS, 135, 139, 140, 6, 17, ESP]


def _check(frame: bytes, off: int, ethertype: int) -> None:
    ip = parse_ip(frame, off, ethertype)
    if isinstance(ip, Weird):
        assert ip.reason.split(".")[0] in ("ip", "ip6", "link")
        return
    assert off <= ip.l4 <= len(frame)
    assert off <= ip.end <= len(frame)
    assert len(ip.src) == len(ip.dst) == (4 if ip.version == 4 else 16)
    tr = parse_transport(frame, ip)
    if isinstance(tr, Weird):
        assert tr.reason.split(".")[0] in ("ip", "tcp", "udp")
        return
    assert 0 <= tr.sport < 65536 and 0 <= tr.dport < 65536
    assert len(tr.payload) <= max(0, ip.end - ip.l4)


@settings(database=None, max_examples=400)
@given(
    st.binary(max_size=120),
    st.integers(0, 20),
    st.sampled_from([V4, V6, 0x0806, 0x1234]),
)
def test_random_bytes_never_raise(frame: bytes, off: int, ethertype: int) -> None:
    _check(frame, min(off, len(frame)), ethertype)


@settings(database=None, max_examples=400)
@given(
    st.integers(0x40, 0x4F),
    st.binary(min_size=19, max_size=80),
    st.sampled_from([6, 17]),
)
def test_ipv4_like_bytes_never_raise(vihl: int, rest: bytes, proto: int) -> None:
    frame = bytes([vihl]) + rest[:8] + bytes([proto]) + rest[9:]
    _check(ETH + frame, 14, V4)


@settings(database=None, max_examples=400)
@given(
    st.lists(
        st.tuples(st.sampled_from(EXT), st.integers(0, 255), st.binary(max_size=12)), max_size=10
    ),
    st.sampled_from(EXT),
    st.integers(0, 300),
    st.binary(max_size=30),
)
def test_ipv6_extension_chains_never_raise(
    chain: list[tuple[int, int, bytes]], first: int, plen: int, tail: bytes
) -> None:
    body = b"".join(bytes([nh, length]) + fill for nh, length, fill in chain) + tail
    _check(ETH + ipv6(body, first, plen=plen), 14, V6)
