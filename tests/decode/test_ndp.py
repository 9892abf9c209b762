from __future__ import annotations

import ipaddress
import struct

import dpkt

from sensor.decode.ndp import parse_ra_resolvers
from sensor.model import Weird


def rdnss(lifetime: int, *addrs: str) -> bytes:
    body = b"".join(ipaddress.IPv6Address(a).packed for a in addrs)
    return struct.pack("!BBHI", 25, 1 + 2 * len(addrs), 0, lifetime) + body


def router_advertisement(*options: bytes) -> bytes:
    """An ICMPv6 RA as dpkt packs it (checksum left zero: the decoder does not need it)."""
    ra = struct.pack("!BBHII", 64, 0, 1800, 0, 0)
    msg = dpkt.icmp6.ICMP6(type=134, code=0, data=ra + b"".join(options))
    return bytes(msg)


def test_rdnss_addresses() -> None:
    prefix_info = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + bytes(16)
    mtu = struct.pack("!BBHI", 5, 1, 0, 1500)
    ra = router_advertisement(
        prefix_info, mtu, rdnss(600, "fd00:77::1", "2001:db8::53"), rdnss(600, "fd00:77::1")
    )
    assert parse_ra_resolvers(ra) == ("fd00:77::1", "2001:db8::53")


def test_withdrawn_servers_and_other_messages() -> None:
    assert parse_ra_resolvers(router_advertisement(rdnss(0, "fd00:77::1"))) == ()
    assert parse_ra_resolvers(router_advertisement()) == ()
    echo = bytes(dpkt.icmp6.ICMP6(type=128, code=0, data=b"\x00\x01\x00\x01"))
    assert parse_ra_resolvers(echo) is None


def test_malformed_options_are_weird() -> None:
    ra = router_advertisement(rdnss(600, "fd00:77::1"))
    assert parse_ra_resolvers(ra[:-8]) == Weird("ndp.truncated_option")
    assert parse_ra_resolvers(ra[:16] + b"\x19\x00" + bytes(6)) == Weird("ndp.zero_length_option")
    assert parse_ra_resolvers(ra[:10]) == Weird("ndp.bad_ra")
