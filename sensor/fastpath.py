"""The packet loop's accelerator (numpy): a chunk of pcap-format records as columns.

The pure loop in `sensor.pipeline` spends about a microsecond of Python on every packet. With
numpy, the pipeline walks a chunk's records once (the only per-packet Python left), then this
module reads every header field the loop needs in whole-array operations and groups the
packets that the pure loop would count on its fast path ("simple": IPv4 with a 20-byte header,
not fragmented, or IPv6 without extension headers; TCP or UDP; long enough) by flow key, so that
the pipeline looks each key up once per chunk instead of once per packet.

What counts as simple, and which bytes form the key, mirror the pure loop exactly (same link
layouts, same minimum lengths): both paths must give the same results. Pure functions over
bytes; nothing here knows about flows.
"""

from __future__ import annotations

import bisect
import struct

import numpy as np
from numpy.typing import NDArray

from sensor.decode.link import FIXED_LAYOUTS
from sensor.sources.pcap import MAX_RECORD, Chunk

I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]

LINKS = FIXED_LAYOUTS
"""Per link type: where the EtherType is in the frame (None: raw IP) and where the network
header starts (sensor.decode.link, as for the pure loop; tagged Ethernet frames are not
simple)."""

_MIN4 = 40
"""Bytes past the link header a simple IPv4 frame needs (the pure loop's IPv4 + TCP headers)."""
_MIN6 = 60

_HASH = np.array(
    [
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0x27D4EB2F165667C5,
        0x85EBCA77C2B2AE63,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
        0x94D049BB133111EB,
        0xBF58476D1CE4E5B9,
        0xD6E8FEB86659FD93,
        0xE7037ED1A0B428DB,
    ],
    dtype=np.uint64,
)
"""Odd multipliers mixing a key's 32-bit words, its protocol and its IP version into one 64-bit
number. A collision cannot merge two flows: the grouping is checked against the key bytes and
redone on the bytes themselves if one occurs."""


class Columns:
    """One chunk's packets, in capture order, as arrays."""

    __slots__ = ("end", "iplen", "key", "key_tcp", "keys", "n", "payload", "start", "ts")

    def __init__(self, n: int) -> None:
        self.n = n
        self.ts: NDArray[np.float64] = np.zeros(n)
        """Packet time, computed as the pure loop computes it (the same float, bit for bit)."""
        self.start: I64 = np.zeros(n, np.int64)
        """Where each frame starts in the chunk's buffer."""
        self.end: I64 = np.zeros(n, np.int64)
        self.key: I64 = np.zeros(n, np.int64)
        """Index into `keys` for a simple packet; len(keys) for every other packet."""
        self.keys: list[bytes] = []
        """The distinct flow keys of the chunk's simple packets, as the flow table holds them."""
        self.key_tcp: list[bool] = []
        """Per key: TCP (else UDP)."""
        self.iplen: I64 = np.zeros(n, np.int64)
        """IP length (header included) of a simple packet, 0 for others."""
        self.payload: NDArray[np.bool_] = np.zeros(n, np.bool_)
        """A simple packet carries transport payload."""


def walk(chunk: Chunk) -> I64:
    """Record boundaries: n + 1 offsets, record i spanning [b[i], b[i + 1]) with its 16-byte
    header first. Sets `chunk.stop` and `chunk.count` as the pure loop does: the walk stops at
    the first incomplete record or one claiming more than MAX_RECORD bytes."""
    buf, pos, end = chunk.buf, chunk.start, chunk.end
    fmt = chunk.header.format
    caplen = struct.Struct((fmt[0] if fmt[:1] in ("<", ">", "!", "=") else "=") + "8xI").unpack_from
    view = buf if end == len(buf) else memoryview(buf)[:end]
    ends = [pos]
    append = ends.append
    # What a million-packet capture pays per packet: one unpack, two adds, one append. The end
    # of the buffer stops the loop (an unpack past it raises); offsets past `end` (a record cut
    # short) and past a record over the size limit are thrown away afterwards. Beyond a
    # corrupt record the walk only reads garbage offsets, all of them discarded.
    try:
        while True:
            (c,) = caplen(view, pos)
            pos += c + 16
            append(pos)
    except struct.error:
        pass
    bounds = np.array(ends, dtype=np.int64)
    bounds = bounds[: int(np.searchsorted(bounds, end, "right"))]
    big = np.flatnonzero(np.diff(bounds) > MAX_RECORD + 16)
    if len(big):
        bounds = bounds[: big[0] + 1]
    chunk.stop = int(bounds[-1])
    chunk.count = len(bounds) - 1
    return bounds


def columns(chunk: Chunk) -> Columns:
    """Walk a chunk (see `walk`) and read its packets' fields. The chunk's link type must be
    one of `LINKS`."""
    bounds = walk(chunk)
    n = len(bounds) - 1
    cols = Columns(n)
    if n == 0:
        return cols
    buf = chunk.buf
    eto, l3 = LINKS[chunk.linktype]
    rec = bounds[:-1]
    # The first bytes of every record (pcap header, link header, IP and transport headers up
    # to the key and TCP's data offset) as the rows of one matrix: one gather, then column
    # reads. Short frames get what follows them (or zeros): they fail the length checks.
    width = 16 + l3 + _MIN6
    rows = _rows(buf, rec, width)
    order = "<" if chunk.header.format[:1] == "<" else ">"
    head = rows[:, :8].view(order + "u4")
    ts = head[:, 0].astype(np.float64) + head[:, 1].astype(np.float64) * chunk.tsres
    start = rec + 16
    end = bounds[1:]
    caplen = end - start
    cols.ts, cols.start, cols.end = ts, start, end

    ip = 16 + l3
    vihl = rows[:, ip]
    if eto is None:
        is4 = (vihl >> 4) == 4
        is6 = ~is4
    else:
        et = _be16(rows, 16 + eto)
        is4 = et == 0x0800
        is6 = et == 0x86DD
    p4 = rows[:, ip + 9]
    len4 = _be16(rows, ip + 2)
    i4 = np.flatnonzero(
        is4
        & (vihl == 0x45)
        & ((_be16(rows, ip + 6) & 0x3FFF) == 0)
        & ((p4 == 6) | (p4 == 17))
        & (len4 > 20)
        & (caplen >= l3 + _MIN4)
    )
    p6 = rows[:, ip + 6]
    plen = _be16(rows, ip + 4)
    i6 = np.flatnonzero(is6 & ((p6 == 6) | (p6 == 17)) & (plen > 0) & (caplen >= l3 + _MIN6))
    proto = np.concatenate([p4[i4], p6[i6]])
    ipl = np.concatenate([len4[i4], plen[i6].astype(np.int64) + 40])
    hl = np.concatenate([np.full(len(i4), 20), np.full(len(i6), 40)])
    doff = np.concatenate([rows[i4, ip + 32], rows[i6, ip + 52]]).astype(np.int64)
    tcp = proto == 6
    idx = np.concatenate([i4, i6])
    cols.iplen[idx] = ipl
    cols.payload[idx] = ipl - hl - np.where(tcp, (doff >> 4) << 2, 8) > 0

    k4 = np.ascontiguousarray(rows[i4, ip + 12 : ip + 24])
    k6 = np.ascontiguousarray(rows[i6, ip + 8 : ip + 44])
    inv, first = _group(k4, k6, proto)
    v4 = first < len(i4)
    blob4 = k4[first[v4]].tobytes()
    blob6 = k6[first[~v4] - len(i4)].tobytes()
    keys4 = (blob4[i : i + 12] for i in range(0, len(blob4), 12))
    keys6 = (blob6[i : i + 36] for i in range(0, len(blob6), 36))
    keys = [next(keys4) if is_v4 else next(keys6) for is_v4 in v4.tolist()]
    cols.keys = keys
    cols.key_tcp = tcp[first].tolist()
    cols.key[:] = len(keys)
    cols.key[idx] = inv
    return cols


def _rows(buf: bytes, at: I64, width: int) -> U8:
    """`width` bytes from each offset, zero-padded past the end of the buffer."""
    size = len(buf)
    if size >= width:
        # Rows as opaque items: numpy copies each with one memcpy.
        window = np.ndarray((size - width + 1,), np.dtype((np.void, width)), buf, 0, (1,))
        rows: U8 = window[np.minimum(at, size - width)].view(np.uint8).reshape(-1, width)
    else:
        rows = np.zeros((len(at), width), np.uint8)
    for i in np.flatnonzero(at > size - width).tolist():
        tail = buf[at[i] : at[i] + width]
        rows[i] = np.frombuffer(tail + bytes(width - len(tail)), np.uint8)
    return rows


def _be16(rows: U8, col: int) -> NDArray[np.uint16]:
    """A big-endian 16-bit field of every row (a view)."""
    return rows[:, col : col + 2].view(">u2")[:, 0]


def _group(k4: U8, k6: U8, proto: U8) -> tuple[I64, I64]:
    """Group the simple packets (IPv4 ones first) by (IP version, key bytes, protocol): the
    group of each, and one packet of each group (groups in no particular order)."""
    n4 = len(k4)
    w4 = k4.view(np.uint32)
    w6 = k6.view(np.uint32)
    h = proto.astype(np.uint64) * _HASH[-2]
    h[n4:] += _HASH[-1]
    for w, part in ((w4, h[:n4]), (w6, h[n4:])):
        for j in range(w.shape[1]):
            part += w[:, j].astype(np.uint64) * _HASH[j]
    # The top 16 bits first: numpy sorts 16-bit numbers in linear time. A collision there
    # (likely with hundreds of flows in a chunk) falls back to all 64 bits.
    for bits in (h >> np.uint64(48)).astype(np.uint16), h:
        inv, first = _unique(bits)
        if _same(w4, w6, proto, first[inv]):
            return inv, first
    # Two keys with the same 64-bit hash: group on the bytes themselves.
    groups: list[I64] = []
    firsts: list[I64] = []
    for part, lo in ((k4, 0), (k6, n4)):
        if not len(part):
            continue
        full = np.ascontiguousarray(np.concatenate([part, proto[lo : lo + len(part), None]], 1))
        _, f, g = np.unique(
            full.view(np.dtype((np.void, full.shape[1]))).ravel(),
            return_index=True,
            return_inverse=True,
        )
        groups.append(g.astype(np.int64) + sum(len(x) for x in firsts))
        firsts.append(f.astype(np.int64) + lo)
    return np.concatenate(groups), np.concatenate(firsts)


def _unique(bits: NDArray[np.uint16] | NDArray[np.uint64]) -> tuple[I64, I64]:
    """np.unique's inverse, and each value's first index (faster than np.unique, which does
    not sort 16-bit numbers with the linear-time radix sort)."""
    order = np.argsort(bits, kind="stable")
    s = bits[order]
    head = np.empty(len(s), np.bool_)
    head[:1] = True
    np.not_equal(s[1:], s[:-1], out=head[1:])
    inv = np.empty(len(s), np.int64)
    inv[order] = np.cumsum(head) - 1
    return inv, order[head]


def _same(w4: NDArray[np.uint32], w6: NDArray[np.uint32], proto: U8, rep: I64) -> bool:
    """Every packet has the same IP version, key and protocol as its group's representative."""
    n4 = len(w4)
    r4, r6 = rep[:n4], rep[n4:]
    if (r4 >= n4).any() or (r6 < n4).any() or not (proto == proto[rep]).all():
        return False
    return bool((w4 == w4[r4]).all() and (w6 == w6[r6 - n4]).all())


def first_at_least(ts: NDArray[np.float64], start: int, value: float) -> int:
    """The first index from `start` on whose time is at least `value`; len(ts) if none."""
    hit = np.flatnonzero(ts[start:] >= value)
    return start + int(hit[0]) if len(hit) else len(ts)


class Segment:
    """Packets [a, b) of a chunk, grouped by key: where each key's packets and payload
    packets are (chunk indices, ascending), for visiting them one by one in capture order."""

    def __init__(self, cols: Columns, a: int, b: int) -> None:
        nk = len(cols.keys)
        key = cols.key[a:b]
        # Stable, and linear time for 16-bit numbers.
        order = np.argsort(key.astype(np.int16) if nk < 1 << 15 else key, kind="stable")
        ks = key[order]
        self._at = order + a
        groups = np.searchsorted(ks, np.arange(nk + 1))
        self._lo: list[int] = groups.tolist()
        self._hi: list[int] = [*self._lo[1:], len(key)]
        with_payload = cols.payload[self._at]
        self._pat = self._at[with_payload]
        self._plo: list[int] = np.searchsorted(ks[with_payload], np.arange(nk + 1)).tolist()
        self._phi: list[int] = [*self._plo[1:], len(self._pat)]
        counts = np.diff(np.append(groups, len(key)))
        present = np.flatnonzero(counts[:nk])
        self.keys: list[int] = present.tolist()
        """Keys with packets here."""
        self.packets: list[int] = counts[present].tolist()
        self.last: list[float] = cols.ts[self._at[groups[present] + counts[present] - 1]].tolist()
        """Per key: time of its last packet here."""
        self.others: list[int] = self._at[self._lo[nk] :].tolist()
        """Packets that are not simple."""
        ts = cols.ts[a:b]
        self.ordered = bool((ts[1:] >= ts[:-1]).all())
        """Timestamps never decrease."""
        self._lists: dict[int, list[int]] = {}
        self._plists: dict[int, list[int]] = {}

    def first(self, k: int) -> int | None:
        lo = self._lo[k]
        return self._at.item(lo) if lo < self._hi[k] else None

    def first_payload(self, k: int) -> int | None:
        lo = self._plo[k]
        return self._pat.item(lo) if lo < self._phi[k] else None

    def after(self, k: int, i: int) -> int | None:
        """The key's next packet after chunk index i."""
        at = self._lists.get(k)
        if at is None:
            at = self._lists[k] = self._at[self._lo[k] : self._hi[k]].tolist()
        j = bisect.bisect_right(at, i)
        return at[j] if j < len(at) else None

    def payload_after(self, k: int, i: int) -> int | None:
        """The key's next packet with payload after chunk index i."""
        at = self._plists.get(k)
        if at is None:
            at = self._plists[k] = self._pat[self._plo[k] : self._phi[k]].tolist()
        j = bisect.bisect_right(at, i)
        return at[j] if j < len(at) else None


def pending(
    cols: Columns, a: int, b: int
) -> tuple[list[float], list[int], list[int], list[int], list[bool], list[int]]:
    """Packets [a, b) as lists: (time, frame start, frame end, key, carries payload, IP
    length)."""
    return (
        cols.ts[a:b].tolist(),
        cols.start[a:b].tolist(),
        cols.end[a:b].tolist(),
        cols.key[a:b].tolist(),
        cols.payload[a:b].tolist(),
        cols.iplen[a:b].tolist(),
    )


def summed(
    cols: Columns, a: int, b: int, visited: list[int]
) -> tuple[list[int], list[int], list[int], list[float], list[bool]]:
    """The simple packets in [a, b) that were not visited one by one, per key: (key, packets,
    IP bytes, time of the last of them, whether that one comes after the key's last visited
    packet)."""
    nk = len(cols.keys)
    key = cols.key[a:b]
    rest = key < nk
    seen = np.array(visited, dtype=np.int64) - a
    rest[seen] = False
    k = key[rest]
    i = np.flatnonzero(rest)
    packets = np.bincount(k, minlength=nk)
    # Float sums of integers stay exact up to 2**53, far beyond a chunk's bytes.
    nbytes = np.bincount(k, weights=cols.iplen[a:b][rest], minlength=nk)
    last = np.full(nk, -1, np.int64)
    np.maximum.at(last, k, i)
    last_seen = np.full(nk, -1, np.int64)
    np.maximum.at(last_seen, key[seen], seen)
    present = np.flatnonzero(packets)
    lp = last[present]
    return (
        present.tolist(),
        packets[present].tolist(),
        nbytes[present].astype(np.int64).tolist(),
        cols.ts[a:b][lp].tolist(),
        (lp > last_seen[present]).tolist(),
    )
