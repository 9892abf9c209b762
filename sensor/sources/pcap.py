"""Packets from capture files: pcap and pcapng readers yielding (timestamp, linktype, frame).

Readers stream in chunks (memory stays bounded whatever the file size), never raise on a damaged
file after its header: a truncated or corrupt tail ends the stream with a warning, keeping every
packet read before it. A file that is not a capture at all raises `CaptureError`.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import heapq
import lzma
import os
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, cast

Packet = tuple[float, int, bytes]
"""(Unix time in seconds, link-layer type, frame bytes)."""

STDIN_NAME = "<stdin>"
"""How standard input (`-`) is named in warnings and in the stats record."""

_CHUNK = 4 << 20
MAX_RECORD = 1 << 18
"""A record claiming more than 256 KiB is corruption (GRO frames top out at 64 KiB)."""

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


class Chunk:
    """A buffer of pcap-format records: 16-byte header (seconds, fraction, captured length,
    original length) then the frame; the last record may be incomplete.

    The packet loop walks these in place, without a Python object per packet, and records in
    `stop` where the first incomplete record starts, so the reader knows what to carry over
    without walking the records a second time.
    """

    __slots__ = ("buf", "count", "end", "header", "linktype", "start", "stop", "tsres")

    def __init__(
        self, linktype: int, buf: bytes, start: int, end: int, tsres: float, header: struct.Struct
    ) -> None:
        self.linktype = linktype
        self.buf = buf
        self.start = start
        self.end = end
        self.tsres = tsres
        """Seconds per unit of the header's fraction field (1e-6 or 1e-9)."""
        self.header = header
        self.stop = -1
        self.count = 0
        """Whole records the consumer walked (set along with `stop`)."""


def walk_records(chunk: Chunk) -> None:
    """Set `stop` and `count` for a chunk whose consumer did not."""
    pos, end, buf = chunk.start, chunk.end, chunk.buf
    unpack_from = chunk.header.unpack_from
    n = 0
    while pos + 16 <= end:
        caplen = unpack_from(buf, pos)[2]
        nxt = pos + 16 + caplen
        if nxt > end or caplen > MAX_RECORD:
            break
        pos = nxt
        n += 1
    chunk.stop, chunk.count = pos, n


class CaptureError(Exception):
    """The file cannot be read as a capture at all."""


class CaptureFile:
    """One pcap or pcapng capture; iterate it for packets; `warnings` fills in as it is read.

    `path` is a file name, or "-" for standard input. The file is read front to back and never
    seeked, so pipes, /dev/stdin and process substitutions work; a gzip, xz or bzip2 capture
    is recognised by its first bytes (not its name) and decompressed on the fly."""

    def __init__(self, path: str | Path) -> None:
        self.path = STDIN_NAME if str(path) == "-" else str(path)
        self.warnings: list[str] = []
        self.packets = 0
        self.compression: str | None = None
        self.linktypes: set[int] = set()
        """Link-layer types the file declares (pcapng: one per interface)."""
        try:
            if str(path) == "-":
                raw: BinaryIO = open(0, "rb", buffering=0, closefd=False)  # noqa: SIM115
            else:
                # Unbuffered: we read big chunks ourselves, so a buffer layer would only copy.
                raw = open(path, "rb", buffering=0)  # noqa: SIM115 - iterator closes
            st = os.fstat(raw.fileno())
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        if stat.S_ISDIR(st.st_mode):
            raw.close()
            raise CaptureError(f"{self.path}: is a directory")
        self.size = st.st_size if stat.S_ISREG(st.st_mode) else None
        """Bytes on disk, for progress; None for pipes and other streams."""
        self._source = _Source(raw)
        self._fh: _Reader = self._source
        try:
            head = _read_full(self._fh, 24)
            self.compression = _compression(head)
            if self.compression is not None:
                self._fh = _Decompressed(self.compression, _Source(raw, head, self._source), self)
                head = _read_full(self._fh, 24)
            self._parse_head(head)
        except BaseException:
            self.close()
            raise

    def _parse_head(self, head: bytes) -> None:
        path = self.path
        packed = f" ({self.compression}-compressed)" if self.compression else ""
        if len(head) < 4:
            if self.warnings:  # the decompressor's: the data ends before a header
                raise CaptureError(self.warnings[0])
            raise CaptureError(f"{path}: not a capture file{packed} (empty or too short)")
        magic = head[:4]
        if magic in _PCAP_MAGIC:
            if len(head) < 24:
                raise CaptureError(f"{path}: truncated pcap file header")
            self.format = "pcap"
            self._endian, self._tsres = _PCAP_MAGIC[magic]
            major, _minor, _tz, _sig, _snaplen, network = struct.unpack(
                self._endian + "HHiIII", head[4:24]
            )
            if major != 2:
                raise CaptureError(f"{path}: unsupported pcap version {major}")
            # The FCS/flag bits live in the top of the link-type field; the type is the low 16.
            self.linktype = network & 0xFFFF
            self.linktypes.add(self.linktype)
            self._start = head[24:]
        elif magic == _PCAPNG_SHB:
            if len(head) < 12 or head[8:12] not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                raise CaptureError(f"{path}: not a pcapng capture (bad section header)")
            self.format = "pcapng"
            self.linktype = -1
            self._start = head
        else:
            hint = _other_format(head)
            raise CaptureError(
                f"{path}: not a pcap or pcapng capture file{packed}"
                + (f" ({hint})" if hint else "")
            )

    @property
    def bytes_read(self) -> int:
        """Bytes taken from the file so far (compressed bytes for a compressed capture)."""
        return self._source.count

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(OSError):
            self._source.close()

    def __iter__(self) -> Iterator[Packet]:
        try:
            if self.format == "pcap":
                yield from self._read_pcap()
            else:
                yield from self._read_pcapng()
        finally:
            self.close()

    def _warn(self, text: str) -> None:
        self.warnings.append(f"{self.path}: {text}")

    def _read_pcap(self) -> Iterator[Packet]:
        for chunk in self._pcap_chunks():
            unpack_from = chunk.header.unpack_from
            buf, pos, end, res, lt = chunk.buf, chunk.start, chunk.end, chunk.tsres, chunk.linktype
            n = 0
            while pos + 16 <= end:
                sec, frac, caplen, _origlen = unpack_from(buf, pos)
                nxt = pos + 16 + caplen
                if nxt > end or caplen > MAX_RECORD:
                    break
                yield sec + frac * res, lt, buf[pos + 16 : nxt]
                pos = nxt
                n += 1
            chunk.stop, chunk.count = pos, n

    def _pcap_chunks(self) -> Iterator[Chunk]:
        """The file as it is, a few megabytes at a time; the consumer walks the records.

        Never seeks: the incomplete record at the end of a chunk is carried into the next."""
        fh = self._fh
        header = struct.Struct(self._endian + "IIII")
        carry = self._start
        while True:
            want = _CHUNK - len(carry)
            more = _read_full(fh, want)
            buf = carry + more if carry else more
            eof = len(more) < want
            end = len(buf)
            chunk = Chunk(self.linktype, buf, 0, end, self._tsres, header)
            yield chunk
            if chunk.stop < 0:
                walk_records(chunk)
            pos = chunk.stop
            self.packets += chunk.count
            if pos + 16 <= end and header.unpack_from(buf, pos)[2] > MAX_RECORD:
                self._warn(
                    f"corrupt record header after packet {self.packets} "
                    f"(length {header.unpack_from(buf, pos)[2]}); stopped"
                )
                return
            if eof:
                if pos < end:
                    self._warn(
                        f"truncated: {end - pos} bytes of an incomplete record after "
                        f"packet {self.packets}; kept the {self.packets} whole packets"
                    )
                return
            if pos == 0:  # one record bigger than a chunk: cannot happen below MAX_RECORD
                self._warn(f"record larger than the read buffer after packet {self.packets}")
                return
            carry = buf[pos:]

    def chunks(self) -> Iterator[Chunk]:
        """Packets as runs of pcap-format records (see `Chunk`), the packet loop's input."""
        try:
            if self.format == "pcap":
                yield from self._pcap_chunks()
            else:
                yield from pack_chunks(self._read_pcapng())
        finally:
            self.close()

    def _read_pcapng(self) -> Iterator[Packet]:
        """Section header, interface description, enhanced/simple packet blocks."""
        fh = self._fh
        buf = self._start + fh.read(_CHUNK)
        pos = 0
        count = 0
        endian = "<"
        # per interface: (linktype, seconds per tick)
        ifaces: list[tuple[int, float]] = []
        last_ts = 0.0
        while True:
            if len(buf) - pos < 12:
                self.packets = count  # for the progress line, once per read
                more = fh.read(_CHUNK)
                if not more:
                    if pos < len(buf):
                        self._warn(
                            f"truncated: {len(buf) - pos} bytes of an incomplete block after "
                            f"packet {count}; kept the {count} whole packets"
                        )
                    self.packets = count
                    return
                buf = buf[pos:] + more
                pos = 0
                continue
            btype_raw = buf[pos : pos + 4]
            if btype_raw == _PCAPNG_SHB:
                bom = buf[pos + 8 : pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    self._warn(f"bad byte-order magic in section header after packet {count}")
                    self.packets = count
                    return
                ifaces = []
            btype, blen = struct.unpack_from(endian + "II", buf, pos)
            if blen < 12 or blen % 4 or blen > MAX_RECORD + 64:
                self._warn(f"corrupt block (type {btype:#x}, length {blen}) after packet {count}")
                self.packets = count
                return
            if len(buf) - pos < blen:
                more = fh.read(max(_CHUNK, blen))
                if not more:
                    self._warn(
                        f"truncated: incomplete block of {blen} bytes after packet {count}; "
                        f"kept the {count} whole packets"
                    )
                    self.packets = count
                    return
                buf = buf[pos:] + more
                pos = 0
                continue
            body = buf[pos + 8 : pos + blen - 4]
            pos += blen
            if btype == 1:  # Interface Description Block
                if len(body) < 8:
                    self._warn("short interface description block")
                    continue
                linktype = struct.unpack_from(endian + "H", body, 0)[0]
                self.linktypes.add(linktype)
                ifaces.append((linktype, _if_tsresol(body[8:], endian)))
            elif btype == 6:  # Enhanced Packet Block
                if len(body) < 20:
                    self._warn(f"short packet block after packet {count}")
                    continue
                ifid, tsh, tsl, caplen, _olen = struct.unpack_from(endian + "IIIII", body, 0)
                if ifid >= len(ifaces) or 20 + caplen > len(body):
                    self._warn(f"packet block with bad interface or length after packet {count}")
                    continue
                lt, res = ifaces[ifid]
                count += 1
                last_ts = ((tsh << 32) | tsl) * res
                yield last_ts, lt, body[20 : 20 + caplen]
            elif btype == 3:  # Simple Packet Block: no timestamp, interface 0
                if not ifaces or len(body) < 4:
                    continue
                olen = struct.unpack_from(endian + "I", body, 0)[0]
                count += 1
                # No timestamp of its own: it takes the last one seen, so merges keep order.
                yield last_ts, ifaces[0][0], body[4 : 4 + min(olen, len(body) - 4)]
            # other blocks (name resolution, statistics, custom) carry no packets


def _read_full(fh: _Reader, size: int) -> bytes:
    """Read `size` bytes, or fewer only at the end of the file (pipes return short reads)."""
    data = fh.read(size) or b""
    if data and len(data) < size:
        parts = [data]
        got = len(data)
        while got < size:
            more = fh.read(size - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class _Source:
    """The raw file: counts the bytes taken (progress) and serves `prefix` first (the bytes
    read to recognise a compressed file, which cannot be pushed back into a pipe)."""

    def __init__(self, raw: BinaryIO, prefix: bytes = b"", counter: _Source | None = None) -> None:
        self.raw = raw
        self.prefix = prefix
        self.counter = counter or self
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        if self.prefix:
            data, self.prefix = (
                (self.prefix, b"") if size < 0 else (self.prefix[:size], self.prefix[size:])
            )
            return data
        data = self.raw.read(size) or b""
        self.counter.count += len(data)
        return data

    def close(self) -> None:
        self.raw.close()


_COMPRESSED = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
)


def _compression(head: bytes) -> str | None:
    for magic, name in _COMPRESSED:
        if head.startswith(magic):
            return name
    return None


_OTHER_FORMATS = (
    (
        b"\x28\xb5\x2f\xfd",
        "zstd-compressed: decompress it first, e.g. zstd -dc FILE | phonehome analyze -",
    ),
    (
        b"\x04\x22\x4d\x18",
        "lz4-compressed: decompress it first, e.g. lz4 -dc FILE | phonehome analyze -",
    ),
    (b"PK\x03\x04", "a zip archive: unpack it first"),
    (b"\x0aETL", "an ETL trace"),
)


def _other_format(head: bytes) -> str | None:
    for magic, hint in _OTHER_FORMATS:
        if head.startswith(magic):
            return hint
    return None


_PIECE = 1 << 16


class _Decompressed:
    """A gzip, xz or bzip2 stream over `_Source`; a truncated or corrupt stream ends the data
    with a warning (the packets before it are kept), never an exception."""

    def __init__(self, kind: str, source: _Source, owner: CaptureFile) -> None:
        self.kind = kind
        self.owner = owner
        fileobj = cast(BinaryIO, source)
        self.stream: gzip.GzipFile | lzma.LZMAFile | bz2.BZ2File
        if kind == "gzip":
            self.stream = gzip.GzipFile(fileobj=fileobj, mode="rb")
        elif kind == "xz":
            self.stream = lzma.LZMAFile(fileobj)  # noqa: SIM115 - closed by close()
        else:
            self.stream = bz2.BZ2File(fileobj)
        self.failed = False

    def read(self, size: int = -1, /) -> bytes:
        # In pieces: an error deep into a big read must not lose the data before it.
        parts: list[bytes] = []
        got = 0
        while not self.failed and (size < 0 or got < size):
            want = _PIECE if size < 0 else min(_PIECE, size - got)
            try:
                data = self.stream.read(want)
            except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
                self.failed = True
                self.owner._warn(
                    f"{self.kind} data ends early or is corrupt ({exc}); "
                    "kept the packets before that point"
                )
                break
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def close(self) -> None:
        self.stream.close()


def _if_tsresol(options: bytes, endian: str) -> float:
    """The if_tsresol option of an interface description block; default microseconds."""
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(endian + "HH", options, pos)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = options[pos + 4]
            return float(2 ** -(v & 0x7F)) if v & 0x80 else float(10 ** -(v & 0x7F))
        pos += 4 + ((length + 3) & ~3)
    return 1e-6


def read_captures(files: Iterable[CaptureFile]) -> Iterator[Chunk]:
    """Chunks of one file as read, or of several files merged into time order."""
    files = list(files)
    if len(files) == 1:
        return files[0].chunks()
    return pack_chunks(heapq.merge(*files, key=lambda p: p[0]))


_NS_HEADER = struct.Struct("<IIII")


def pack_chunks(packets: Iterable[Packet], batch: int = 512) -> Iterator[Chunk]:
    """Re-pack single packets (pcapng, merged files, live sources) into pcap-format chunks.

    Timestamps keep nanosecond precision; a change of link type starts a new chunk.
    """
    parts: list[bytes] = []
    lt_cur = -1
    pack = _NS_HEADER.pack
    for ts, lt, frame in packets:
        if lt != lt_cur or len(parts) >= batch:
            if parts:
                buf = b"".join(parts)
                yield Chunk(lt_cur, buf, 0, len(buf), 1e-9, _NS_HEADER)
                parts = []
            lt_cur = lt
        sec = int(ts)
        parts.append(pack(sec, round((ts - sec) * 1e9), len(frame), len(frame)))
        parts.append(frame)
    if parts:
        buf = b"".join(parts)
        yield Chunk(lt_cur, buf, 0, len(buf), 1e-9, _NS_HEADER)
