from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode.dhcp import parse_dhcp, parse_dhcpv6
from sensor.model import DhcpMessage, Weird
from tests.builders_proto import (
    dhcp_request,
    dhcpv6_relay_forw,
    dhcpv6_solicit,
    duid_en,
    duid_llt,
    encode_name,
    v6_option,
)

OPTIONS_AT = 240


def _v4(data: bytes) -> DhcpMessage:
    got = parse_dhcp(data)
    assert isinstance(got, DhcpMessage), got
    return got


def _v6(data: bytes) -> DhcpMessage:
    got = parse_dhcpv6(data)
    assert isinstance(got, DhcpMessage), got
    return got


def _v4_with_options(options: bytes) -> bytes:
    base = dhcp_request(hostname=None, vendor_class=None, requested_ip=None, params=())
    return base[:OPTIONS_AT] + options


# --- DHCPv4 -----------------------------------------------------------------------------------


def test_request() -> None:
    msg = _v4(dhcp_request("02:00:5E:10:00:01", "Laptop-7", "MSFT 5.0", params=(1, 3, 6, 15)))
    assert msg == DhcpMessage(
        version=4,
        message_type=3,
        client_mac="02:00:5e:10:00:01",
        requested_ip="192.0.2.10",
        hostname="Laptop-7",
        vendor_class="MSFT 5.0",
        param_list=(1, 3, 6, 15),
        client_ip=None,
        your_ip=None,
    )


def test_ack_addresses() -> None:
    msg = _v4(
        dhcp_request(op=2, msg_type=5, ciaddr="192.0.2.10", yiaddr="192.0.2.10", requested_ip=None)
    )
    assert (msg.message_type, msg.client_ip, msg.your_ip) == (5, "192.0.2.10", "192.0.2.10")


def test_hostname_nul_padding_and_control_characters() -> None:
    msg = _v4(dhcp_request(hostname="tv\x1b[31m\x00\x00"))
    assert msg.hostname == "tv?[31m"
    raw = _v4_with_options(b"\x0c\x04\xffab\x00\xff")
    assert _v4(raw).hostname == "\\xffab"


@pytest.mark.parametrize(
    ("fqdn", "expected"),
    [
        (b"\x05\x00\x00" + encode_name("Kitchen.Example.com"), "kitchen.example.com"),
        (b"\x05\x00\x00\x07kitchen", "kitchen"),  # partial wire name
        (b"\x01\x00\x00kitchen.example.com.", "kitchen.example.com"),  # ASCII (E bit clear)
        (b"\x05\x00\x00", None),
        (b"\x05\x00\x00\x3fshort", None),
    ],
)
def test_client_fqdn_is_hostname_fallback(fqdn: bytes, expected: str | None) -> None:
    assert _v4(dhcp_request(hostname=None, fqdn=fqdn)).hostname == expected
    # Option 12 wins when both are present.
    assert _v4(dhcp_request(hostname="short", fqdn=fqdn)).hostname == "short"


def test_non_ethernet_chaddr_gives_no_mac() -> None:
    assert _v4(dhcp_request(htype=6)).client_mac is None
    assert _v4(dhcp_request(hlen=16)).client_mac is None


def test_pad_missing_end_and_concatenated_options() -> None:
    opts = b"\x00\x00\x35\x01\x01" + b"\x0c\x03abc" + b"\x0c\x03def" + b"\x37\x02\x01\x03"
    msg = _v4(_v4_with_options(opts))
    assert (msg.message_type, msg.hostname, msg.param_list) == (1, "abcdef", (1, 3))


def test_options_after_end_are_ignored() -> None:
    msg = _v4(_v4_with_options(b"\x35\x01\x01\xff\x0c\x03abc"))
    assert msg.hostname is None


def test_overloaded_file_and_sname() -> None:
    data = bytearray(_v4_with_options(b"\x35\x01\x03\x34\x01\x03\xff"))
    data[108:115] = b"\x0c\x04nas1\xff"  # file: hostname
    data[44:55] = b"\x3c\x08vendor-x\xff"  # sname: vendor class
    msg = _v4(bytes(data))
    assert (msg.hostname, msg.vendor_class) == ("nas1", "vendor-x")
    # Without the overload option the same bytes are just names, not options.
    data[OPTIONS_AT + 3 : OPTIONS_AT + 6] = b"\x00\x00\x00"
    assert _v4(bytes(data)).hostname is None


def test_bad_magic_and_op() -> None:
    data = dhcp_request()
    assert parse_dhcp(data[:236] + b"\x00\x00\x00\x00" + data[240:]) == Weird("dhcp.bad_magic")
    assert parse_dhcp(b"\x03" + data[1:]) == Weird("dhcp.bad_op")


def test_every_prefix_is_handled() -> None:
    data = dhcp_request(fqdn=b"\x05\x00\x00" + encode_name("a.example.com"))
    option_starts = set()
    off = OPTIONS_AT
    while data[off] != 0xFF:
        option_starts.add(off)
        off += 2 + data[off + 1]
    option_starts.add(off)
    for cut in range(len(data)):
        got = parse_dhcp(data[:cut])
        if cut < OPTIONS_AT:
            assert got == Weird("dhcp.truncated"), cut
        elif cut in option_starts or cut == OPTIONS_AT:
            assert isinstance(got, DhcpMessage), cut  # options end cleanly, no END option
        else:
            assert got == Weird("dhcp.truncated_option"), cut


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(parse_dhcp(data), DhcpMessage | Weird)


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=120))
def test_random_options_never_raise(options: bytes) -> None:
    # Past the fixed header, so the option walker (and the overload path) sees the bytes.
    assert isinstance(parse_dhcp(_v4_with_options(options)), DhcpMessage | Weird)


# --- DHCPv6 -----------------------------------------------------------------------------------


def test_solicit() -> None:
    msg = _v6(dhcpv6_solicit("02:00:5E:10:00:02", "Phone.Example.com", ("MSFT 5.0",)))
    assert msg == DhcpMessage(
        version=6,
        message_type=1,
        client_mac="02:00:5e:10:00:02",
        requested_ip=None,
        hostname="phone.example.com",
        vendor_class="MSFT 5.0",
        param_list=(23, 24, 39),
    )


def test_duid_llt_and_en() -> None:
    llt = _v6(dhcpv6_solicit(duid=duid_llt("02:00:5e:10:00:03")))
    assert llt.client_mac == "02:00:5e:10:00:03"
    assert _v6(dhcpv6_solicit(duid=duid_en())).client_mac is None
    not_ethernet = struct.pack("!HH", 3, 6) + bytes(6)
    assert _v6(dhcpv6_solicit(duid=not_ethernet)).client_mac is None
    assert _v6(dhcpv6_solicit(mac=None)).client_mac is None


def test_vendor_class_items_and_ia_na() -> None:
    msg = _v6(
        dhcpv6_solicit(vendor_class=("dhcpcd-10", "Linux"), msg_type=3, ia_addr="2001:db8::10")
    )
    assert (msg.message_type, msg.vendor_class, msg.requested_ip) == (
        3,
        "dhcpcd-10 Linux",
        "2001:db8::10",
    )
    reply = _v6(dhcpv6_solicit(msg_type=7, ia_addr="2001:db8::11"))
    assert (reply.requested_ip, reply.your_ip) == (None, "2001:db8::11")


def test_no_optional_options() -> None:
    msg = _v6(dhcpv6_solicit(hostname=None, vendor_class=(), oro=(), msg_type=11))
    assert (msg.message_type, msg.hostname, msg.vendor_class, msg.param_list) == (
        11,
        None,
        None,
        (),
    )


def test_relay_forw_is_unwrapped() -> None:
    inner = dhcpv6_solicit(ia_addr="2001:db8::12", msg_type=3)
    msg = _v6(dhcpv6_relay_forw(dhcpv6_relay_forw(inner), hops=1))
    assert (msg.message_type, msg.client_mac, msg.requested_ip) == (
        3,
        "02:00:5e:10:00:02",
        "2001:db8::12",
    )


def test_relay_problems() -> None:
    empty_relay = dhcpv6_relay_forw(b"")[:34]
    assert parse_dhcpv6(empty_relay) == Weird("dhcpv6.relay_without_message")
    deep = dhcpv6_solicit()
    for _ in range(20):
        deep = dhcpv6_relay_forw(deep)
    assert parse_dhcpv6(deep) == Weird("dhcpv6.relay_too_deep")
    assert parse_dhcpv6(dhcpv6_relay_forw(b"\x01")) == Weird("dhcpv6.truncated")


def test_v6_every_prefix_is_handled() -> None:
    data = dhcpv6_solicit(ia_addr="2001:db8::10", extra_opts=[v6_option(25, b"\x00" * 12)])
    boundaries = {4}
    off = 4
    while off < len(data):
        off += 4 + struct.unpack_from("!H", data, off + 2)[0]
        boundaries.add(off)
    for cut in range(len(data)):
        got = parse_dhcpv6(data[:cut])
        if cut in boundaries:
            assert isinstance(got, DhcpMessage), cut
        else:
            assert got == Weird("dhcpv6.truncated"), cut


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_v6_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(parse_dhcpv6(data), DhcpMessage | Weird)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from([1, 3, 6, 9, 16, 39]), st.binary(max_size=40))))
def test_v6_random_option_values_never_raise(opts: list[tuple[int, bytes]]) -> None:
    data = b"\x01\x00\x00\x01" + b"".join(v6_option(code, value) for code, value in opts)
    assert isinstance(parse_dhcpv6(data), DhcpMessage | Weird)
    assert isinstance(parse_dhcpv6(dhcpv6_relay_forw(data)), DhcpMessage | Weird)


# --- resolvers handed out (issue 16: DNS bypass) --------------------------------------------------


def test_ack_hands_out_resolvers() -> None:
    dns = ipaddress.IPv4Address("192.0.2.1").packed + ipaddress.IPv4Address("192.0.2.2").packed
    ack = dhcp_request(op=2, msg_type=5, yiaddr="192.0.2.10", extra_opts=[(6, dns)])
    assert _v4(ack).dns_servers == ("192.0.2.1", "192.0.2.2")


def test_client_option_6_is_no_resolver_and_odd_lengths_are_cut() -> None:
    # A client's message lists what it asks for; only a server's hands resolvers out.
    dns = ipaddress.IPv4Address("192.0.2.1").packed
    assert _v4(dhcp_request(extra_opts=[(6, dns)])).dns_servers == ()
    # A trailing partial address, duplicates and 0.0.0.0 are left out.
    raw = dns + dns + b"\x00\x00\x00\x00" + b"\xc0\x00"
    ack = dhcp_request(op=2, msg_type=5, extra_opts=[(6, raw)])
    assert _v4(ack).dns_servers == ("192.0.2.1",)


def test_dhcpv6_reply_hands_out_resolvers() -> None:
    dns = b"".join(ipaddress.IPv6Address(a).packed for a in ("2001:db8::53", "::"))
    reply = dhcpv6_solicit(msg_type=7, oro=(), extra_opts=[v6_option(23, dns + b"\x01")])
    assert _v6(reply).dns_servers == ("2001:db8::53",)
    solicit = dhcpv6_solicit(extra_opts=[v6_option(23, dns)])
    assert _v6(solicit).dns_servers == ()
