"""IPv6 Router Advertisements (RFC 4861): the resolvers a router hands out in its RDNSS
options (RFC 8106). Pure: bytes in, addresses out; malformed input returns a `Weird`."""

from __future__ import annotations

import ipaddress
import struct

from sensor.model import Weird

ICMPV6 = 58
ROUTER_ADVERTISEMENT = 134
RA_HEADER = 16
"""Type, code, checksum, hop limit, flags, router lifetime, reachable time, retrans timer."""
OPT_RDNSS = 25
MAX_RESOLVERS = 8
"""Resolvers kept from one advertisement (an RA can hold hundreds)."""

_U32 = struct.Struct("!I")


def parse_ra_resolvers(icmp: bytes) -> tuple[str, ...] | Weird | None:
    """The recursive DNS servers an ICMPv6 message advertises; None when it is not a Router
    Advertisement. Servers with a lifetime of 0 (the router withdraws them) are left out."""
    if len(icmp) < 4 or icmp[0] != ROUTER_ADVERTISEMENT:
        return None
    if icmp[1] != 0 or len(icmp) < RA_HEADER:
        return Weird("ndp.bad_ra")
    out: list[str] = []
    off = RA_HEADER
    while off + 2 <= len(icmp):
        opt, units = icmp[off], icmp[off + 1]
        if units == 0:
            return Weird("ndp.zero_length_option")  # RFC 4861 4.6: discard the packet
        end = off + units * 8
        if end > len(icmp):
            return Weird("ndp.truncated_option")
        # RDNSS: type, length (3 + 2 per address), reserved, lifetime, addresses.
        if opt == OPT_RDNSS and units >= 3 and _U32.unpack_from(icmp, off + 4)[0]:
            for pos in range(off + 8, end - 15, 16):
                addr = str(ipaddress.IPv6Address(icmp[pos : pos + 16]))
                if addr not in out and len(out) < MAX_RESOLVERS:
                    out.append(addr)
        off = end
    return tuple(out)
