"""The packet loop's fast path in pure Python: count a packet of a known flow from a few header
reads, without decoding it. Both of sensor.pipeline's loops (over a chunk's pcap records, over
single frames from a live source) use it; sensor.fastpath does the same in whole-array
operations when numpy is there. The link layouts are sensor.decode.link's."""

from __future__ import annotations

import struct

from sensor.decode.link import FIXED_LAYOUTS
from sensor.flows import Half


def _lead(eto: int | None, l3: int) -> struct.Struct:
    """Reads, at a frame's start, the link's EtherType (unless `eto` is None: raw IP) and the
    IPv4 fields the fast path needs: version/IHL, total length, flags/fragment, protocol."""
    ip = "BxHxxHxB"
    return struct.Struct(f">{l3}x{ip}" if eto is None else f">{eto}xH{l3 - eto - 2}x{ip}")


LINK_LAYOUTS: dict[int, tuple[struct.Struct, int, bool]] = {
    lt: (_lead(eto, l3), l3, eto is None) for lt, (eto, l3) in FIXED_LAYOUTS.items()
}
"""Per link type (sensor.decode.link's fixed layouts; tagged Ethernet frames go slow): the
struct above, the network header's offset, whether the link is raw IP."""
_V6_HEADER = struct.Struct(">4xHB")
"""IPv6 payload length and next header."""


def count_known(
    tcp: dict[bytes, Half],
    udp: dict[bytes, Half],
    ts: float,
    layout: tuple[struct.Struct, int, bool],
    buf: bytes,
    s: int,
    caplen: int,
) -> bool:
    """The packet loop's fast path, for the frame of `caplen` bytes at `buf[s:]`: when it is a
    simple packet (IPv4 with a 20-byte header, not fragmented, or IPv6 without extension
    headers; TCP or UDP) of a known flow whose payload inspection is over (or that carries no
    payload), count it to its flow and say True; else False, and the slow path decodes it.

    Every read stays in the frame: the length checks come first (the buffer may go on past
    it, so no IndexError would say otherwise). One function for both loops (records of a
    chunk, single frames), at the price of a call per packet.
    """
    lead, l3, raw = layout
    try:
        # Link type, IPv4 version/IHL, total length, flags/fragment, protocol.
        if raw:
            vihl, iplen, frag, p = lead.unpack_from(buf, s)
            et = 0x0800 if vihl >> 4 == 4 else 0x86DD
        else:
            et, vihl, iplen, frag, p = lead.unpack_from(buf, s)
        off = s + l3
        if et == 0x0800 and vihl == 0x45 and not frag & 0x3FFF and caplen >= l3 + 40:
            key = buf[off + 12 : off + 24]
            hl = 20
        elif et == 0x86DD and caplen >= l3 + 60:
            plen, p = _V6_HEADER.unpack_from(buf, off)
            key = buf[off + 8 : off + 44]
            iplen = plen + 40
            hl = 40
        else:
            return False
        if p == 6:
            h = tcp.get(key)
            if h is None or iplen <= hl:
                return False
            if h.inspect and iplen - hl - ((buf[off + hl + 12] >> 4) << 2) > 0:
                return False
        elif p == 17:
            h = udp.get(key)
            if h is None or iplen <= hl or (h.inspect and iplen - hl > 8):
                return False
        else:
            return False
    except (IndexError, struct.error):
        return False
    h.packets += 1
    h.nbytes += iplen
    h.last = ts
    return True
