"""Capture file readers: pcap and pcapng, damaged files, chunk boundaries, merging, the CLI.

Files are written by hand with struct (pcapng features PcapWriter does not produce: several
interfaces, sections of either byte order, if_tsresol, simple packet blocks, unknown blocks) or
with sensor.lab.synth where a realistic conversation is needed. Expected timestamps are stated in
the units of the file (microseconds, nanoseconds, ticks) and compared with exact arithmetic.
"""

from __future__ import annotations

import io
import json
import math
import random
import struct
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import pytest

import sensor.sources.pcap as capture
from sensor.cli import main
from sensor.lab.synth import PHONE, RESOLVER, Capture, PcapWriter, TcpSession, client_hello
from sensor.sources.pcap import (
    CaptureError,
    CaptureFile,
    Chunk,
    Packet,
    pack_chunks,
    read_captures,
)

# --- writing captures by hand ------------------------------------------------------------------

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D


def pcap_file(
    records: Iterable[tuple[int, int, bytes]],
    *,
    endian: str = "<",
    nano: bool = False,
    linktype: int = 1,
    major: int = 2,
) -> bytes:
    """A pcap file; records are (seconds, fraction in the file's unit, frame)."""
    magic = PCAP_MAGIC_NS if nano else PCAP_MAGIC_US
    out = [struct.pack(endian + "IHHiIII", magic, major, 4, 0, 0, 262144, linktype)]
    for sec, frac, frame in records:
        out.append(struct.pack(endian + "IIII", sec, frac, len(frame), len(frame)) + frame)
    return b"".join(out)


def ng_block(btype: int, body: bytes, endian: str = "<") -> bytes:
    pad = (-len(body)) % 4
    blen = 12 + len(body) + pad
    return (
        struct.pack(endian + "II", btype, blen)
        + body
        + b"\0" * pad
        + struct.pack(endian + "I", blen)
    )


def ng_option(code: int, value: bytes, endian: str = "<") -> bytes:
    return struct.pack(endian + "HH", code, len(value)) + value + b"\0" * ((-len(value)) % 4)


def ng_end_of_options(endian: str = "<") -> bytes:
    return struct.pack(endian + "HH", 0, 0)


def ng_shb(endian: str = "<") -> bytes:
    return ng_block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)


def ng_idb(
    linktype: int, *, tsresol: int | None = None, endian: str = "<", name: bytes = b""
) -> bytes:
    opts = b""
    if name:  # an option before if_tsresol, with padding, so the option walk is exercised
        opts += ng_option(2, name, endian)
    if tsresol is not None:
        opts += ng_option(9, bytes([tsresol]), endian)
    if opts:
        opts += ng_end_of_options(endian)
    return ng_block(1, struct.pack(endian + "HHI", linktype, 0, 0) + opts, endian)


def ng_epb(
    ifid: int,
    ticks: int,
    frame: bytes,
    *,
    origlen: int | None = None,
    options: bytes = b"",
    endian: str = "<",
) -> bytes:
    olen = len(frame) if origlen is None else origlen
    head = struct.pack(endian + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), olen)
    return ng_block(6, head + frame + b"\0" * ((-len(frame)) % 4) + options, endian)


def ng_spb(frame: bytes, endian: str = "<") -> bytes:
    return ng_block(3, struct.pack(endian + "I", len(frame)) + frame, endian)


def frame_n(i: int, size: int = 60) -> bytes:
    """A frame that says which packet it is."""
    head = struct.pack(">I", i)
    return head + bytes((i + k) & 0xFF for k in range(size - len(head)))


# --- reading -----------------------------------------------------------------------------------


def walk(chunk: Chunk) -> Iterator[Packet]:
    """Read a chunk the way the pipeline does: records in place, then mark where it stopped."""
    pos, end, buf = chunk.start, chunk.end, chunk.buf
    n = 0
    while pos + 16 <= end:
        sec, frac, caplen, _ = chunk.header.unpack_from(buf, pos)
        nxt = pos + 16 + caplen
        if nxt > end:
            break
        yield sec + frac * chunk.tsres, chunk.linktype, buf[pos + 16 : nxt]
        pos = nxt
        n += 1
    chunk.stop, chunk.count = pos, n


def from_chunks(chunks: Iterable[Chunk]) -> list[Packet]:
    out: list[Packet] = []
    for chunk in chunks:
        out.extend(walk(chunk))
    return out


def read(path: Path, how: str = "iter") -> tuple[list[Packet], CaptureFile]:
    cf = CaptureFile(path)
    packets = list(cf) if how == "iter" else from_chunks(cf.chunks())
    return packets, cf


READERS = ["iter", "chunks"]
"""The two ways the pipeline reads a file: packets (merging) and chunks (one file)."""


def assert_us(ts: float, sec: int, usec: int) -> None:
    assert round(ts * 1_000_000) == sec * 1_000_000 + usec, (ts, sec, usec)


def assert_exact(ts: float, exact: Fraction) -> None:
    """`ts` is the float nearest the exact time (within one unit in the last place)."""
    assert abs(Fraction(ts) - exact) <= Fraction(math.ulp(ts)), (ts, float(exact))


# --- pcap --------------------------------------------------------------------------------------

US_TIMES = [(1_700_000_000, 0), (1_700_000_000, 1), (1_700_000_001, 999_999), (4_000_000_000, 500)]
NS_TIMES = [(1_700_000_000, 0), (1_700_000_000, 123_456_789), (1_700_000_002, 999_999_999)]


@pytest.mark.parametrize("how", READERS)
@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_microseconds(tmp_path: Path, endian: str, how: str) -> None:
    records = [(s, us, frame_n(i, 60 + i)) for i, (s, us) in enumerate(US_TIMES)]
    path = tmp_path / "us.pcap"
    path.write_bytes(pcap_file(records, endian=endian, linktype=113))
    packets, cf = read(path, how)
    assert cf.format == "pcap" and cf.linktype == 113
    assert [(lt, f) for _, lt, f in packets] == [(113, f) for _, _, f in records]
    for (ts, _, _), (sec, usec, _) in zip(packets, records, strict=True):
        assert_us(ts, sec, usec)
    assert cf.warnings == [] and cf.packets == len(records)


@pytest.mark.parametrize("how", READERS)
@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_nanoseconds(tmp_path: Path, endian: str, how: str) -> None:
    records = [(s, ns, frame_n(i)) for i, (s, ns) in enumerate(NS_TIMES)]
    path = tmp_path / "ns.pcap"
    path.write_bytes(pcap_file(records, endian=endian, nano=True))
    packets, cf = read(path, how)
    assert [f for _, _, f in packets] == [f for _, _, f in records]
    for (ts, lt, _), (sec, ns, _) in zip(packets, records, strict=True):
        assert lt == 1
        assert_exact(ts, Fraction(sec) + Fraction(ns, 10**9))
    assert cf.warnings == []


def test_pcap_linktype_ignores_fcs_bits(tmp_path: Path) -> None:
    # The top bits of the link-type field say whether frames carry an FCS; the type is below.
    path = tmp_path / "fcs.pcap"
    path.write_bytes(pcap_file([(1, 0, frame_n(0))], linktype=(0b1010 << 28) | (1 << 26) | 1))
    packets, cf = read(path)
    assert cf.linktype == 1 and packets[0][1] == 1


def test_pcap_writer_round_trip(tmp_path: Path) -> None:
    for nano in (False, True):
        buf = io.BytesIO()
        w = PcapWriter(buf, 101, nano=nano)
        w.write(1_700_000_000.25, b"\x45" + bytes(39))
        w.write(1_700_000_000.000125, b"\x60" + bytes(59))
        path = tmp_path / f"w{nano}.pcap"
        path.write_bytes(buf.getvalue())
        packets, _ = read(path)
        assert [(lt, len(f)) for _, lt, f in packets] == [(101, 40), (101, 60)]
        assert_us(packets[0][0], 1_700_000_000, 250_000)
        assert_us(packets[1][0], 1_700_000_000, 125)


def test_pcap_empty_body_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "header-only.pcap"
    path.write_bytes(pcap_file([]))
    packets, cf = read(path)
    assert packets == [] and cf.warnings == [] and cf.packets == 0


# --- pcapng ------------------------------------------------------------------------------------

T0 = 1_700_000_000


@pytest.mark.parametrize("how", READERS)
def test_pcapng_interfaces_tsresol_and_unknown_blocks(tmp_path: Path, how: str) -> None:
    eth, raw, sll = frame_n(1, 64), b"\x45" + frame_n(2, 43), frame_n(3, 61)
    us_ticks = T0 * 10**6 + 654_321
    ns_ticks = T0 * 10**9 + 123_456_789
    bin_ticks = T0 * 2**20 + 3  # 2^-20 s per tick
    data = b"".join(
        [
            ng_shb(),
            ng_idb(1, name=b"eth0"),  # no if_tsresol: microseconds
            ng_block(4, struct.pack("<HH", 0, 0)),  # name resolution block
            ng_idb(101, tsresol=9, name=b"wg0-tunnel"),  # 10^-9
            ng_idb(113, tsresol=0x80 | 20),  # 2^-20
            ng_epb(0, us_ticks, eth),
            ng_block(0x00000BAD, b"custom block, copyable\0\0"),
            ng_epb(1, ns_ticks, raw),
            ng_block(5, struct.pack("<III", 0, 0, 0)),  # interface statistics block
            ng_epb(2, bin_ticks, sll, options=ng_option(2, struct.pack("<I", 1)) + b"\0" * 4),
            ng_block(0x0000000A, b"\0" * 16),  # decryption secrets block
        ]
    )
    path = tmp_path / "multi.pcapng"
    path.write_bytes(data)
    packets, cf = read(path, how)
    assert cf.format == "pcapng"
    assert [(lt, f) for _, lt, f in packets] == [(1, eth), (101, raw), (113, sll)]
    assert_us(packets[0][0], T0, 654_321)
    assert_exact(packets[1][0], Fraction(ns_ticks, 10**9))
    assert packets[2][0] == bin_ticks / 2**20  # exactly representable
    assert cf.warnings == [] and cf.packets == 3


def test_pcapng_sections_reset_interfaces_and_byte_order(tmp_path: Path) -> None:
    first = ng_shb("<") + ng_idb(1, endian="<") + ng_epb(0, T0 * 10**6 + 1, frame_n(0), endian="<")
    # The second section is big-endian and its interface 0 is raw IP with nanoseconds.
    second = (
        ng_shb(">")
        + ng_idb(101, tsresol=9, endian=">")
        + ng_epb(0, T0 * 10**9 + 7, b"\x60" + frame_n(1, 59), endian=">")
    )
    third = ng_shb("<") + ng_idb(276) + ng_epb(0, (T0 + 5) * 10**6, frame_n(2, 80))
    path = tmp_path / "sections.pcapng"
    path.write_bytes(first + second + third)
    packets, cf = read(path)
    assert [(lt, len(f)) for _, lt, f in packets] == [(1, 60), (101, 60), (276, 80)]
    assert_us(packets[0][0], T0, 1)
    assert_exact(packets[1][0], Fraction(T0 * 10**9 + 7, 10**9))
    assert_us(packets[2][0], T0 + 5, 0)
    assert cf.warnings == []


def test_pcapng_interface_ids_do_not_leak_across_sections(tmp_path: Path) -> None:
    # Interface 1 exists in the first section only; the second section's EPB naming it is bad.
    data = (
        ng_shb()
        + ng_idb(1)
        + ng_idb(101)
        + ng_epb(1, 1, b"\x45" + bytes(19))
        + ng_shb()
        + ng_idb(1)
        + ng_epb(1, 2, frame_n(9))
        + ng_epb(0, 3, frame_n(10))
    )
    path = tmp_path / "ids.pcapng"
    path.write_bytes(data)
    packets, cf = read(path)
    assert [(lt, f) for _, lt, f in packets] == [(101, b"\x45" + bytes(19)), (1, frame_n(10))]
    assert len(cf.warnings) == 1 and str(path) in cf.warnings[0]


def test_pcapng_snapped_packet_and_options_after_data(tmp_path: Path) -> None:
    frame = frame_n(5, 97)  # odd length: the block pads it before the options
    opts = ng_option(2, struct.pack("<I", 0x1)) + ng_end_of_options()  # epb_flags
    data = ng_shb() + ng_idb(1) + ng_epb(0, 10, frame, origlen=1514, options=opts)
    path = tmp_path / "snap.pcapng"
    path.write_bytes(data)
    packets, _ = read(path)
    assert [f for _, _, f in packets] == [frame]


def test_pcapng_simple_packet_blocks(tmp_path: Path) -> None:
    frames = [frame_n(0, 60), frame_n(1, 64)]
    data = ng_shb() + ng_idb(1) + b"".join(ng_spb(f) for f in frames)
    path = tmp_path / "spb.pcapng"
    path.write_bytes(data)
    packets, cf = read(path)
    assert [(lt, f) for _, lt, f in packets] == [(1, f) for f in frames]
    assert cf.packets == 2


def test_pcapng_simple_packet_block_unaligned_length(tmp_path: Path) -> None:
    frame = frame_n(7, 61)
    path = tmp_path / "spb61.pcapng"
    path.write_bytes(ng_shb() + ng_idb(1) + ng_spb(frame))
    packets, _ = read(path)
    assert [f for _, _, f in packets] == [frame]


def test_pcapng_writer_nanoseconds(tmp_path: Path) -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, 1, pcapng=True, nano=True)
    w.write(T0 + 0.123456789, frame_n(0))
    path = tmp_path / "w.pcapng"
    path.write_bytes(buf.getvalue())
    packets, _ = read(path)
    assert_exact(packets[0][0], Fraction(T0 * 10**9 + 123_456_789, 10**9))


# --- damaged files -----------------------------------------------------------------------------


def small_pcap(n: int = 10) -> tuple[bytes, list[bytes]]:
    frames = [frame_n(i, 60 + 3 * i) for i in range(n)]
    return pcap_file([(T0 + i, 0, f) for i, f in enumerate(frames)]), frames


@pytest.mark.parametrize("how", READERS)
@pytest.mark.parametrize("cut", [1, 5, 16, 17, 40])
def test_pcap_truncated_mid_record(tmp_path: Path, cut: int, how: str) -> None:
    """`cut` bytes of the last record survive: inside its header, at its end, inside its frame."""
    data, frames = small_pcap()
    last = 16 + len(frames[-1])
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[: len(data) - last + cut])
    packets, cf = read(path, how)
    assert [f for _, _, f in packets] == frames[:-1]
    assert cf.packets == len(frames) - 1
    assert len(cf.warnings) == 1
    assert str(path) in cf.warnings[0] and "truncated" in cf.warnings[0]


@pytest.mark.parametrize("how", READERS)
def test_pcap_corrupt_length_beyond_the_data_stops(tmp_path: Path, how: str) -> None:
    data, frames = small_pcap()
    buf = bytearray(data)
    pos = 24 + sum(16 + len(f) for f in frames[:4])
    struct.pack_into("<I", buf, pos + 8, 0xFFFFFF00)  # captured length of packet 5
    path = tmp_path / "corrupt.pcap"
    path.write_bytes(bytes(buf))
    packets, cf = read(path, how)
    assert [f for _, _, f in packets] == frames[:4]
    assert len(cf.warnings) == 1
    assert str(path) in cf.warnings[0] and "corrupt" in cf.warnings[0]


def test_pcap_corrupt_length_within_the_chunk_stops(tmp_path: Path) -> None:
    frames = [frame_n(i, 3000) for i in range(200)]
    records = [(T0 + i, 0, f) for i, f in enumerate(frames)]
    buf = bytearray(pcap_file(records))
    pos = 24 + 50 * (16 + 3000)
    struct.pack_into("<II", buf, pos + 8, 300_000, 300_000)  # > 256 KiB, < what follows
    path = tmp_path / "corrupt-inside.pcap"
    path.write_bytes(bytes(buf))
    packets, cf = read(path)
    assert [f for _, _, f in packets] == frames[:50]
    assert len(cf.warnings) == 1 and "corrupt" in cf.warnings[0]


def small_pcapng(n: int = 6) -> tuple[bytes, list[bytes], int]:
    """(file, frames, offset of the last block)."""
    frames = [frame_n(i, 61 + i) for i in range(n)]
    head = ng_shb() + ng_idb(1)
    blocks = [ng_epb(0, (T0 + i) * 10**6, f) for i, f in enumerate(frames)]
    return head + b"".join(blocks), frames, len(head) + sum(len(b) for b in blocks[:-1])


@pytest.mark.parametrize("how", READERS)
@pytest.mark.parametrize("keep", [3, 11, 30])
def test_pcapng_truncated_mid_block(tmp_path: Path, keep: int, how: str) -> None:
    data, frames, last = small_pcapng()
    path = tmp_path / "cut.pcapng"
    path.write_bytes(data[: last + keep])
    packets, cf = read(path, how)
    assert [f for _, _, f in packets] == frames[:-1]
    assert cf.packets == len(frames) - 1
    assert len(cf.warnings) == 1
    assert str(path) in cf.warnings[0] and "truncated" in cf.warnings[0]


@pytest.mark.parametrize("blen", [13, 8, 0x7FFFFFF0])
def test_pcapng_corrupt_block_length_stops(tmp_path: Path, blen: int) -> None:
    data, frames, last = small_pcapng()
    buf = bytearray(data)
    struct.pack_into("<I", buf, last + 4, blen)
    path = tmp_path / "corrupt.pcapng"
    path.write_bytes(bytes(buf))
    packets, cf = read(path)
    assert [f for _, _, f in packets] == frames[:-1]
    assert len(cf.warnings) == 1
    assert str(path) in cf.warnings[0] and "corrupt" in cf.warnings[0]


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("notes.txt", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "not a pcap"),
        ("empty.pcap", b"", "empty"),
        ("three.pcap", b"\xd4\xc3\xb2", "empty or too short"),
        ("short.pcap", struct.pack("<IHH", PCAP_MAGIC_US, 2, 4), "truncated pcap file header"),
        ("v3.pcap", pcap_file([], major=3), "version"),
        ("elf.pcap", b"\x7fELF" + bytes(60), "not a pcap"),
    ],
)
def test_not_a_capture(tmp_path: Path, name: str, content: bytes, says: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CaptureError) as err:
        CaptureFile(path)
    assert str(path) in str(err.value) and says in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pcap"
    with pytest.raises(CaptureError, match="cannot open") as err:
        CaptureFile(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "content",
    [b"\x0a\x0d\x0d\x0a\x1c\x00", b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00WXYZ" + bytes(16)],
    ids=["short-shb", "bad-byte-order-magic"],
)
def test_pcapng_without_a_valid_section_header_is_not_a_capture(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "bad.pcapng"
    path.write_bytes(content)
    with pytest.raises(CaptureError):
        list(CaptureFile(path))


# --- chunk boundaries --------------------------------------------------------------------------


def records_to(target: int, rng: random.Random, start: int = 0) -> list[bytes]:
    """Frames whose pcap records (16-byte header + frame) add up to exactly `target` bytes."""
    frames: list[bytes] = []
    total = 0
    while target - total > 3100:
        f = struct.pack(">I", start + len(frames)) + rng.randbytes(rng.randrange(56, 1510))
        frames.append(f)
        total += 16 + len(f)
    rest = target - total - 32
    for size in (rest // 2, rest - rest // 2):
        f = struct.pack(">I", start + len(frames)) + rng.randbytes(size - 4)
        frames.append(f)
    return frames


@pytest.mark.parametrize(
    ("offset", "after"),
    [(7, 40), (16 + 100, 40), (0, 40), (0, 0)],
    ids=["boundary-in-header", "boundary-in-frame", "boundary-between", "ends-on-boundary"],
)
def test_pcap_larger_than_a_chunk(tmp_path: Path, offset: int, after: int) -> None:
    """The first read chunk ends `offset` bytes into a record (0: between two records)."""
    rng = random.Random(offset + after)
    frames = records_to(capture._CHUNK - offset, rng)
    frames += [struct.pack(">I", len(frames) + i) + rng.randbytes(1200) for i in range(after)]
    records = [(T0 + i // 1000, i % 1000 * 1000, f) for i, f in enumerate(frames)]
    path = tmp_path / "big.pcap"
    path.write_bytes(pcap_file(records))
    assert path.stat().st_size > capture._CHUNK
    for how in READERS:
        packets, cf = read(path, how)
        assert len(packets) == len(frames), how
        assert [f for _, _, f in packets] == frames, how
        assert all(
            round(ts * 1e6) == sec * 10**6 + us
            for (ts, _, _), (sec, us, _) in zip(packets, records, strict=True)
        )
        assert cf.warnings == [] and cf.packets == len(frames)


def test_pcap_larger_than_a_chunk_truncated(tmp_path: Path) -> None:
    rng = random.Random(3)
    frames = records_to(capture._CHUNK + 5000, rng)
    path = tmp_path / "big-cut.pcap"
    data = pcap_file([(T0, i, f) for i, f in enumerate(frames)])
    path.write_bytes(data[:-9])
    packets, cf = read(path, "chunks")
    assert [f for _, _, f in packets] == frames[:-1]
    assert len(cf.warnings) == 1 and "truncated" in cf.warnings[0]


def test_pcapng_larger_than_a_chunk(tmp_path: Path) -> None:
    rng = random.Random(5)
    frames = [struct.pack(">I", i) + rng.randbytes(rng.randrange(56, 1510)) for i in range(5600)]
    buf = io.BytesIO()
    w = PcapWriter(buf, 1, pcapng=True)
    for i, f in enumerate(frames):
        w.write(T0 + i / 1000, f)
    path = tmp_path / "big.pcapng"
    path.write_bytes(buf.getvalue())
    assert path.stat().st_size > capture._CHUNK
    packets, cf = read(path, "chunks")
    assert [f for _, _, f in packets] == frames
    assert [round(ts * 1000) for ts, _, _ in packets] == [T0 * 1000 + i for i in range(len(frames))]
    assert cf.warnings == [] and cf.packets == len(frames)


# --- merging and re-packing ----------------------------------------------------------------------


def test_read_captures_merges_files_in_time_order(tmp_path: Path) -> None:
    a = tmp_path / "a.pcap"
    a.write_bytes(pcap_file([(T0 + t, 0, frame_n(t)) for t in (1, 3, 5)]))
    b = tmp_path / "b.pcapng"
    b.write_bytes(
        ng_shb()
        + ng_idb(101)
        + b"".join(ng_epb(0, (T0 + t) * 10**6, b"\x45" + frame_n(t, 39)) for t in (2, 4, 6))
    )
    c = tmp_path / "c.pcap"
    c.write_bytes(pcap_file([(T0 + 4, 500_000_000, frame_n(45))], nano=True, linktype=113))
    got = from_chunks(read_captures([CaptureFile(p) for p in (a, b, c)]))
    assert [(round(ts * 10), lt) for ts, lt, _ in got] == [
        (T0 * 10 + 10, 1),
        (T0 * 10 + 20, 101),
        (T0 * 10 + 30, 1),
        (T0 * 10 + 40, 101),
        (T0 * 10 + 45, 113),
        (T0 * 10 + 50, 1),
        (T0 * 10 + 60, 101),
    ]
    assert got[4][2] == frame_n(45) and got[1][2] == b"\x45" + frame_n(2, 39)


def test_read_captures_keeps_warnings_of_merged_files(tmp_path: Path) -> None:
    data, frames = small_pcap(4)
    good = tmp_path / "good.pcap"
    good.write_bytes(data)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-3])
    files = [CaptureFile(good), CaptureFile(cut)]
    got = from_chunks(read_captures(files))
    assert len(got) == 2 * len(frames) - 1
    assert files[0].warnings == []
    assert len(files[1].warnings) == 1 and str(cut) in files[1].warnings[0]


def test_read_captures_of_one_file_is_its_chunks(tmp_path: Path) -> None:
    data, _ = small_pcap(3)
    path = tmp_path / "one.pcap"
    path.write_bytes(data)
    chunks = list(read_captures([CaptureFile(path)]))
    # The file's own buffer, in microseconds, not a re-packed nanosecond copy.
    assert chunks[0].tsres == 1e-6
    packets, _ = read(path)
    assert from_chunks(chunks) == packets


def test_pack_chunks_round_trip() -> None:
    rng = random.Random(9)
    packets: list[Packet] = []
    for i in range(40):
        lt = (1, 1, 1, 101, 113)[i % 5] if i < 20 else 276
        ts = T0 + i * 0.001 + rng.randrange(1000) * 1e-9
        packets.append((ts, lt, rng.randbytes(rng.randrange(0, 200))))
    chunks = list(pack_chunks(packets, batch=7))
    got = []
    for chunk in chunks:
        recs = list(walk(chunk))
        assert 0 < len(recs) <= 7
        assert {lt for _, lt, _ in recs} == {chunk.linktype}  # one link type per chunk
        assert chunk.stop == chunk.end  # no partial record in a packed chunk
        got.extend(recs)
    assert [(lt, f) for _, lt, f in got] == [(lt, f) for _, lt, f in packets]
    for (ts2, _, _), (ts, _, _) in zip(got, packets, strict=True):
        assert abs(ts2 - ts) <= math.ulp(ts)
    # 20 packets alternating Ethernet/raw/SLL runs, then 20 of SLL2 in batches of 7
    assert [c.linktype for c in chunks][-3:] == [276, 276, 276]
    assert list(pack_chunks([])) == []


# --- the command line --------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["analyze", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_not_a_capture_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "readme.txt"
    path.write_text("this is not a capture\n")
    rc, out, err = run_cli(capsys, "--json", str(path))
    assert rc == 2
    assert out == ""
    assert str(path) in err and "not a pcap or pcapng capture file" in err


def test_cli_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing.pcap"
    rc, out, err = run_cli(capsys, str(path))
    assert rc == 2 and out == "" and str(path) in err


def _conversation(cap: Capture) -> None:
    cap.dns_lookup(PHONE, RESOLVER, "kept.example.com", ["198.51.100.20"])
    s = TcpSession(cap, PHONE, "198.51.100.20", 40002, 443)
    s.open()
    s.send(client_hello("kept.example.com"))
    s.send(bytes(3000), up=False)
    s.close()
    s = TcpSession(cap, PHONE, "203.0.113.9", 40003, 443)
    s.open()
    s.send(bytes(500))


def test_cli_truncated_capture_warns_and_keeps_flows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buf = io.BytesIO()
    cap = Capture(PcapWriter(buf))
    _conversation(cap)
    path = tmp_path / "cut.pcap"
    path.write_bytes(buf.getvalue()[:-10])  # inside the last packet (the server's ACK)
    rc, out, err = run_cli(capsys, "--json", str(path))
    assert rc == 0
    assert f"phonehome: warning: {path}: truncated" in err
    recs = [json.loads(line) for line in out.splitlines()]
    (stats,) = [r for r in recs if r["type"] == "stats"]
    assert len(stats["warnings"]) == 1
    assert str(path) in stats["warnings"][0] and "truncated" in stats["warnings"][0]
    assert stats["files"] == [{"path": str(path), "format": "pcap", "packets": cap.packets - 1}]
    assert stats["packets_read"] == cap.packets - 1
    flows = {(r["proto"], r["dst_ip"], r["dst_port"]): r for r in recs if r["type"] == "flow"}
    assert set(flows) == {
        ("udp", RESOLVER, 53),
        ("tcp", "198.51.100.20", 443),
        ("tcp", "203.0.113.9", 443),
    }
    assert flows["tcp", "198.51.100.20", 443]["server_name"] == "kept.example.com"
    assert flows["udp", RESOLVER, 53]["dns_queries"] == ["kept.example.com"]
    # The last flow lost the server's ACK that was cut off; SYN, ACK and data up are counted.
    assert flows["tcp", "203.0.113.9", 443]["packets_up"] == 3
    assert flows["tcp", "203.0.113.9", 443]["bytes_up"] == 40 + 40 + 540
    assert flows["tcp", "203.0.113.9", 443]["packets_down"] == 1


def test_cli_warning_names_the_damaged_file_among_several(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = small_pcap(3)
    good, cut = tmp_path / "good.pcap", tmp_path / "cut.pcap"
    good.write_bytes(data)
    cut.write_bytes(data[:-1])
    rc, out, err = run_cli(capsys, "--json", str(good), str(cut))
    assert rc == 0
    stats = json.loads(out.splitlines()[-1])
    assert stats["type"] == "stats"
    assert [w.split(": ")[0] for w in stats["warnings"]] == [str(cut)]
    assert str(good) not in err and str(cut) in err
    assert [f["packets"] for f in stats["files"]] == [3, 2]
