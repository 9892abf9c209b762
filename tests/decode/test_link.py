"""Link-layer decoding: Ethernet and its VLAN tags, Linux cooked SLL/SLL2, raw IP, BSD null."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode.ip import IpPacket, parse_ip
from sensor.decode.link import (
    ETH_ARP,
    ETH_IPV4,
    ETH_IPV6,
    FIXED_LAYOUTS,
    PACKET_HOST,
    PACKET_OUTGOING,
    SLL2_HEADER,
    SUPPORTED_LINKTYPES,
    Link,
    mac_str,
    parse_link,
)
from sensor.model import Weird

DST = bytes.fromhex("020000000001")  # the gateway
SRC = bytes.fromhex("640980123456")  # a phone
IPV4 = bytes([0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 192, 168, 1, 23, 198, 51, 100, 20])
IPV6 = bytes([0x60, 0, 0, 0, 0, 0, 6, 64]) + bytes.fromhex(
    "fd000001000000000000000000000023" + "20010db8000000000000000000000020"
)


def _link(linktype: int, frame: bytes) -> Link:
    got = parse_link(linktype, frame)
    assert isinstance(got, Link), got
    return got


def eth(ethertype: int, payload: bytes, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    """An Ethernet frame; tags are (TPID, TCI) pairs, outermost first."""
    tag_bytes = b"".join(struct.pack(">HH", tpid, tci) for tpid, tci in tags)
    return DST + SRC + tag_bytes + struct.pack(">H", ethertype) + payload


def sll(pkttype: int, ethertype: int, payload: bytes, addr: bytes = SRC) -> bytes:
    return struct.pack(">HHH8sH", pkttype, 1, len(addr), addr.ljust(8, b"\0"), ethertype) + payload


def sll2(pkttype: int, ethertype: int, payload: bytes, addr: bytes = SRC) -> bytes:
    head = struct.pack(">HHIHBB8s", ethertype, 0, 3, 1, pkttype, len(addr), addr.ljust(8, b"\0"))
    return head + payload


# --- Ethernet ----------------------------------------------------------------------------------


def test_ethernet_ipv4() -> None:
    frame = eth(ETH_IPV4, IPV4)
    link = _link(1, frame)
    assert link == Link(14, ETH_IPV4, SRC, DST, (), None)
    assert frame[link.offset :] == IPV4
    assert mac_str(link.src_mac or b"") == "64:09:80:12:34:56"


def test_ethernet_ipv6_and_arp_pass_their_ethertype() -> None:
    assert _link(1, eth(ETH_IPV6, IPV6)).ethertype == ETH_IPV6
    arp = _link(1, eth(ETH_ARP, bytes(28)))
    assert arp.ethertype == ETH_ARP
    assert parse_ip(eth(ETH_ARP, bytes(28)), arp.offset, arp.ethertype) == Weird("link.arp")


def test_8021q_tag_keeps_the_vlan_id_without_priority_bits() -> None:
    frame = eth(ETH_IPV6, IPV6, ((0x8100, (5 << 13) | (1 << 12) | 42),))
    link = _link(1, frame)
    assert (link.offset, link.ethertype, link.vlans) == (18, ETH_IPV6, (42,))
    assert (link.src_mac, link.dst_mac) == (SRC, DST)
    assert frame[link.offset :] == IPV6


@pytest.mark.parametrize("outer", [0x88A8, 0x9100, 0x8100])
def test_qinq_outer_then_inner(outer: int) -> None:
    frame = eth(ETH_IPV4, IPV4, ((outer, 100), (0x8100, 10)))
    link = _link(1, frame)
    assert (link.offset, link.ethertype, link.vlans) == (22, ETH_IPV4, (100, 10))
    ip = parse_ip(frame, link.offset, link.ethertype)
    assert isinstance(ip, IpPacket) and ip.src == bytes([192, 168, 1, 23])


def test_four_tags_are_accepted_five_are_weird() -> None:
    four = tuple((0x8100, v) for v in (1, 2, 3, 4))
    assert _link(1, eth(ETH_IPV4, IPV4, four)).vlans == (1, 2, 3, 4)
    five = tuple((0x8100, v) for v in (1, 2, 3, 4, 5))
    assert parse_link(1, eth(ETH_IPV4, IPV4, five)) == Weird("link.too_many_vlan_tags")


def test_llc_length_field_is_weird() -> None:
    assert parse_link(1, eth(0x05DC, bytes(46))) == Weird("link.llc_frame")


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        DST + SRC + b"\x08",  # 13 bytes
        DST + SRC + b"\x81\x00\x00\x2a",  # a tag without the EtherType after it
        DST + SRC + b"\x88\xa8\x00\x64\x81\x00\x00\x0a\x08",  # inner tag cut short
    ],
    ids=["empty", "13-bytes", "tag-cut", "inner-tag-cut"],
)
def test_truncated_ethernet_is_weird(frame: bytes) -> None:
    assert parse_link(1, frame) == Weird("link.truncated")


def test_ethernet_header_only_is_a_link_with_nothing_above() -> None:
    link = _link(1, eth(ETH_IPV4, b""))
    assert link.offset == 14
    assert parse_ip(eth(ETH_IPV4, b""), link.offset, link.ethertype) == Weird("ip.truncated")


# --- Linux cooked capture ----------------------------------------------------------------------


def test_sll_host_reports_the_sender_mac() -> None:
    frame = sll(PACKET_HOST, ETH_IPV4, IPV4)
    link = _link(113, frame)
    assert (link.offset, link.ethertype, link.src_mac, link.dst_mac) == (16, ETH_IPV4, SRC, None)
    assert link.pkttype == PACKET_HOST
    assert frame[link.offset :] == IPV4


def test_sll_outgoing_keeps_its_packet_type() -> None:
    link = _link(113, sll(PACKET_OUTGOING, ETH_IPV6, IPV6, addr=DST))
    assert (link.offset, link.ethertype, link.pkttype) == (16, ETH_IPV6, PACKET_OUTGOING)


@pytest.mark.parametrize(("linktype", "build"), [(113, sll), (276, sll2)], ids=["sll", "sll2"])
def test_cooked_outgoing_reports_no_source_mac(linktype: int, build: Callable[..., bytes]) -> None:
    link = _link(linktype, build(PACKET_OUTGOING, ETH_IPV4, IPV4, addr=DST))
    assert link.src_mac is None


@pytest.mark.parametrize("addr", [b"", b"\x7f\0\0\x01", bytes(8)], ids=["none", "4", "8"])
def test_sll_address_that_is_not_a_mac(addr: bytes) -> None:
    assert _link(113, sll(PACKET_HOST, ETH_IPV4, IPV4, addr=addr)).src_mac is None
    assert _link(276, sll2(PACKET_HOST, ETH_IPV4, IPV4, addr=addr)).src_mac is None


def test_sll_address_length_beyond_the_field_is_capped() -> None:
    frame = bytearray(sll(PACKET_HOST, ETH_IPV4, IPV4))
    frame[4:6] = b"\xff\xff"
    link = _link(113, bytes(frame))
    assert link.src_mac is None and link.offset == 16


def test_sll_vlan_tag_in_the_cooked_header() -> None:
    frame = sll(PACKET_HOST, 0x8100, struct.pack(">HH", (3 << 13) | 7, ETH_IPV4) + IPV4)
    link = _link(113, frame)
    assert (link.offset, link.ethertype, link.vlans) == (20, ETH_IPV4, (7,))
    assert frame[link.offset :] == IPV4


def test_sll2_host() -> None:
    frame = sll2(PACKET_HOST, ETH_IPV6, IPV6)
    link = _link(276, frame)
    assert (link.offset, link.ethertype, link.src_mac, link.pkttype) == (
        20,
        ETH_IPV6,
        SRC,
        PACKET_HOST,
    )
    assert frame[link.offset :] == IPV6


def test_sll2_outgoing_keeps_its_packet_type() -> None:
    link = _link(276, sll2(PACKET_OUTGOING, ETH_IPV4, IPV4, addr=DST))
    assert (link.offset, link.pkttype) == (20, PACKET_OUTGOING)


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (113, sll(PACKET_HOST, ETH_IPV4, b"")[:15]),
        (276, sll2(PACKET_HOST, ETH_IPV4, b"")[:19]),
        (113, sll(PACKET_HOST, 0x8100, b"\x00\x07")),  # tag without its EtherType
        (113, sll(PACKET_HOST, 0x8100, struct.pack(">HH", 1, 0x8100) * 5 + IPV4)),
    ],
    ids=["sll-15", "sll2-19", "sll-tag-cut", "sll-five-tags"],
)
def test_truncated_cooked_is_weird(linktype: int, frame: bytes) -> None:
    assert isinstance(parse_link(linktype, frame), Weird)


# --- raw IP and BSD null -----------------------------------------------------------------------


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip_version_from_the_first_nibble(linktype: int) -> None:
    assert _link(linktype, IPV4) == Link(0, ETH_IPV4, None, None)
    assert _link(linktype, IPV6) == Link(0, ETH_IPV6, None, None)
    assert parse_link(linktype, b"\x55" + IPV4[1:]) == Weird("link.raw_not_ip")
    assert parse_link(linktype, b"") == Weird("link.truncated")


def test_ipv4_and_ipv6_linktypes() -> None:
    assert _link(228, IPV4) == Link(0, ETH_IPV4, None, None)
    assert _link(229, IPV6) == Link(0, ETH_IPV6, None, None)


@pytest.mark.parametrize(
    ("family", "packet", "ethertype"),
    [(2, IPV4, ETH_IPV4), (24, IPV6, ETH_IPV6), (28, IPV6, ETH_IPV6), (30, IPV6, ETH_IPV6)],
)
def test_bsd_null(family: int, packet: bytes, ethertype: int) -> None:
    frame = struct.pack("<I", family) + packet
    link = _link(0, frame)
    assert (link.offset, link.ethertype, link.src_mac) == (4, ethertype, None)
    assert frame[link.offset :] == packet


@pytest.mark.parametrize("frame", [b"", b"\x02\0\0", b"\x02\0\0\0"])
def test_bsd_null_truncated(frame: bytes) -> None:
    assert parse_link(0, frame) == Weird("link.truncated")


def test_unsupported_linktype() -> None:
    assert parse_link(127, bytes(64)) == Weird("link.unsupported_linktype")


# --- never raises ------------------------------------------------------------------------------

LINKTYPES = [0, 1, 12, 14, 101, 113, 127, 228, 229, 276]


@settings(database=None, max_examples=400)
@given(
    st.sampled_from(LINKTYPES),
    st.one_of(
        st.binary(max_size=64),
        # Frames that start like tagged Ethernet or cooked headers, to go past the first checks.
        st.tuples(
            st.binary(min_size=12, max_size=12),
            st.lists(st.sampled_from([b"\x81\x00", b"\x88\xa8", b"\x91\x00"]), max_size=6),
            st.binary(max_size=24),
        ).map(lambda t: t[0] + b"".join(tag + b"\x00\x05" for tag in t[1]) + t[2]),
    ),
)
def test_parse_link_never_raises(linktype: int, frame: bytes) -> None:
    got = parse_link(linktype, frame)
    if isinstance(got, Weird):
        assert got.reason.startswith("link.")
        return
    assert 0 <= got.offset <= len(frame)
    assert got.src_mac is None or len(got.src_mac) == 6
    assert got.dst_mac is None or len(got.dst_mac) == 6
    assert len(got.vlans) <= 4 and all(0 <= v < 4096 for v in got.vlans)


@pytest.mark.parametrize("linktype", sorted(FIXED_LAYOUTS))
def test_fixed_layouts_agree_with_parse_link(linktype: int) -> None:
    """The fast paths read the EtherType and the network header where `parse_link` finds them."""
    eto, l3 = FIXED_LAYOUTS[linktype]
    assert linktype in SUPPORTED_LINKTYPES
    ip = IPV6 if linktype == 229 else IPV4
    head = bytearray(l3)
    et = ETH_IPV6 if linktype == 229 else ETH_IPV4
    if eto is not None:
        if linktype == 1:
            head[:12] = DST + SRC
        struct.pack_into(">H", head, eto, et)
    link = parse_link(linktype, bytes(head) + ip)
    assert isinstance(link, Link)
    assert (link.offset, link.ethertype) == (l3, et)


def test_sll2_header_layout() -> None:
    head = SLL2_HEADER.pack(ETH_IPV4, 0, 3, 1, PACKET_HOST, 6, SRC)
    link = parse_link(276, head + IPV4)
    assert isinstance(link, Link) and SLL2_HEADER.size == link.offset == 20
    assert link.src_mac == SRC and link.pkttype == PACKET_HOST
