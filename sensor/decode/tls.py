"""TLS ClientHello decoding: where is a TCP client going (SNI), which versions and ALPN it offers.

Pure functions, bytes in, records out; nothing here raises on bad input. Malformed input comes back
as a `Weird` with a stable dotted reason (the counter label):

- ``tls.not_tls``: the stream does not start with a TLS handshake record.
- ``tls.bad_record``: a later record header is not a handshake record, or has a bad length.
- ``tls.not_client_hello``: the first handshake message is not a ClientHello.
- ``tls.truncated``: the message is shorter than its length fields say.
- ``tls.bad_client_hello``: a fixed ClientHello field is out of range or the lengths disagree.
- ``tls.bad_version``: legacy_version is not SSL 3.0 .. TLS 1.3 (0x0300 .. 0x0304).
- ``tls.bad_extension`` / ``tls.duplicate_extension``: the extension block is malformed.
- ``tls.bad_sni`` / ``tls.bad_alpn`` / ``tls.bad_supported_versions``: one of the extensions we
  read is malformed. (A malformed signature_algorithms only leaves it out of the JA4: it names
  nothing, and the hello's name matters more than its fingerprint.)
- ``tls.reassembly_overflow``: `ClientHelloAssembler` gave up (too many bytes or segments).

`parse_client_hello` is also what the QUIC decoder uses on the reassembled CRYPTO stream. Every
hello gets its JA4 (`sensor.decode.ja4`) and is marked when it carries an Encrypted Client Hello
extension (RFC 9849, 0xfe0d).
"""

from __future__ import annotations

from sensor.decode import ja4
from sensor.model import ClientHello, Weird

__all__ = [
    "ClientHelloAssembler",
    "is_grease",
    "looks_like_tls",
    "parse_client_hello",
]

_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_EXT_SIGNATURE_ALGORITHMS = 13
_EXT_ECH = 0xFE0D
"""RFC 9849: encrypted_client_hello; in a ClientHelloOuter its first byte is 0 (outer)."""
_MAX_RECORD = 1 << 14
"""RFC 8446 5.1: a plaintext record carries at most 2^14 bytes."""

_NOT_TLS = Weird("tls.not_tls")
_BAD_RECORD = Weird("tls.bad_record")
_NOT_CLIENT_HELLO = Weird("tls.not_client_hello")
_TRUNCATED = Weird("tls.truncated")
_BAD_CLIENT_HELLO = Weird("tls.bad_client_hello")
_BAD_VERSION = Weird("tls.bad_version")
_BAD_EXTENSION = Weird("tls.bad_extension")
_DUPLICATE_EXTENSION = Weird("tls.duplicate_extension")
_BAD_SNI = Weird("tls.bad_sni")
_BAD_ALPN = Weird("tls.bad_alpn")
_BAD_SUPPORTED_VERSIONS = Weird("tls.bad_supported_versions")
_OVERFLOW = Weird("tls.reassembly_overflow")


def is_grease(value: int) -> bool:
    """True for the RFC 8701 GREASE code points 0x0A0A, 0x1A1A, ... 0xFAFA."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def looks_like_tls(payload: bytes) -> bool:
    """Cheap check that a TCP payload starts a TLS handshake record (0x16, 0x03 0x00..0x04).

    Only the first three bytes are looked at; a shorter payload is not TLS.
    """
    return len(payload) >= 3 and payload[0] == _HANDSHAKE and payload[1] == 3 and payload[2] <= 4


def _starts_like_tls(data: bytes | bytearray) -> bool:
    """Like `looks_like_tls`, but a prefix (under 3 bytes) of a record header also passes."""
    n = len(data)
    return n > 0 and data[0] == _HANDSHAKE and (n < 2 or data[1] == 3) and (n < 3 or data[2] <= 4)


def parse_client_hello(msg: bytes, *, quic: bool = False) -> ClientHello | Weird:
    """Decode a TLS handshake message (type byte, 3-byte length, body) holding a ClientHello.

    Bytes after the message (e.g. a following handshake message) are ignored. The SNI is the
    first host_name entry, lower-cased and without a trailing dot; None when the extension is
    absent. GREASE values are dropped from supported_versions and ALPN (kept in the cipher,
    extension and signature algorithm lists, which are as sent). `quic`: the hello came in
    QUIC CRYPTO frames (its JA4 starts with "q").
    """
    if len(msg) < 4:
        return _TRUNCATED
    if msg[0] != _CLIENT_HELLO:
        return _NOT_CLIENT_HELLO
    end = 4 + int.from_bytes(msg[1:4], "big")
    if len(msg) < end:
        return _TRUNCATED

    # legacy_version(2) random(32) session_id<0..32>
    pos = 4 + 2 + 32
    if pos + 1 > end:
        return _TRUNCATED
    legacy_version = int.from_bytes(msg[4:6], "big")
    if not 0x0300 <= legacy_version <= 0x0304:
        return _BAD_VERSION
    sid_len = msg[pos]
    if sid_len > 32:
        return _BAD_CLIENT_HELLO
    pos += 1 + sid_len

    # cipher_suites<2..2^16-2>
    if pos + 2 > end:
        return _TRUNCATED
    cs_len = int.from_bytes(msg[pos : pos + 2], "big")
    if cs_len < 2 or cs_len % 2:
        return _BAD_CLIENT_HELLO
    if pos + 2 + cs_len > end:
        return _TRUNCATED
    ciphers = _u16_list(msg, pos + 2, pos + 2 + cs_len)
    pos += 2 + cs_len

    # legacy_compression_methods<1..2^8-1>
    if pos + 1 > end:
        return _TRUNCATED
    comp_len = msg[pos]
    if comp_len < 1:
        return _BAD_CLIENT_HELLO
    pos += 1 + comp_len
    if pos > end:
        return _TRUNCATED
    if pos == end:
        # Pre-TLS 1.2 clients may omit the extension block entirely.
        return _hello(quic, None, legacy_version, (), (), ciphers, (), (), None, ech=False)

    if pos + 2 > end:
        return _TRUNCATED
    ext_end = pos + 2 + int.from_bytes(msg[pos : pos + 2], "big")
    if ext_end > end:
        return _TRUNCATED
    if ext_end != end:
        return _BAD_CLIENT_HELLO
    return _parse_extensions(msg, pos + 2, ext_end, legacy_version, ciphers, quic)


def _u16_list(data: bytes, start: int, end: int) -> tuple[int, ...]:
    return tuple(int.from_bytes(data[i : i + 2], "big") for i in range(start, end - 1, 2))


def _hello(
    quic: bool,
    sni: str | None,
    legacy_version: int,
    versions: tuple[int, ...],
    alpn: tuple[str, ...],
    ciphers: tuple[int, ...],
    extensions: tuple[int, ...],
    sigs: tuple[int, ...],
    first_alpn: bytes | None,
    *,
    ech: bool,
) -> ClientHello:
    fp = ja4.fingerprint(
        quic=quic,
        legacy_version=legacy_version,
        supported_versions=versions,
        ciphers=ciphers,
        extensions=extensions,
        signature_algorithms=sigs,
        first_alpn=first_alpn,
    )
    return ClientHello(
        sni=sni,
        legacy_version=legacy_version,
        supported_versions=versions,
        alpn=alpn,
        ech=ech,
        ja4=fp,
        ciphers=ciphers,
        extensions=extensions,
        signature_algorithms=sigs,
    )


def _parse_extensions(
    msg: bytes, pos: int, end: int, legacy_version: int, ciphers: tuple[int, ...], quic: bool
) -> ClientHello | Weird:
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    first_alpn: bytes | None = None
    versions: tuple[int, ...] = ()
    sigs: tuple[int, ...] = ()
    ech = False
    seen: dict[int, None] = {}
    while pos < end:
        if pos + 4 > end:
            return _BAD_EXTENSION
        ext_type = int.from_bytes(msg[pos : pos + 2], "big")
        data_end = pos + 4 + int.from_bytes(msg[pos + 2 : pos + 4], "big")
        if data_end > end:
            return _BAD_EXTENSION
        if ext_type in seen:
            return _DUPLICATE_EXTENSION
        seen[ext_type] = None  # wire order, for JA4
        data = msg[pos + 4 : data_end]
        pos = data_end
        if ext_type == _EXT_SERVER_NAME:
            parsed_sni = _parse_sni(data)
            if isinstance(parsed_sni, Weird):
                return parsed_sni
            sni = parsed_sni
        elif ext_type == _EXT_ALPN:
            parsed_alpn = _parse_alpn(data)
            if isinstance(parsed_alpn, Weird):
                return parsed_alpn
            # JA4 reads the first name as sent, GREASE or not (as the reference tools do).
            first_alpn = parsed_alpn[0]
            # Names are opaque bytes; escape the odd non-ASCII one rather than reject the hello.
            alpn = tuple(
                raw.decode("ascii", "backslashreplace")
                for raw in parsed_alpn
                if not (len(raw) == 2 and is_grease(int.from_bytes(raw, "big")))
            )
        elif ext_type == _EXT_SIGNATURE_ALGORITHMS:
            if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
                sigs = _u16_list(data, 2, len(data))
        elif ext_type == _EXT_ECH:
            ech = data[:1] == b"\x00"
        elif ext_type == _EXT_SUPPORTED_VERSIONS:
            parsed_versions = _parse_supported_versions(data)
            if isinstance(parsed_versions, Weird):
                return parsed_versions
            versions = parsed_versions
    return _hello(
        quic, sni, legacy_version, versions, alpn, ciphers, tuple(seen), sigs, first_alpn, ech=ech
    )


def _parse_sni(data: bytes) -> str | Weird | None:
    """RFC 6066 3: ServerNameList; returns the first host_name (type 0) entry."""
    if len(data) < 2 or int.from_bytes(data[:2], "big") != len(data) - 2:
        return _BAD_SNI
    pos = 2
    while pos < len(data):
        if pos + 3 > len(data):
            return _BAD_SNI
        name_type = data[pos]
        name_end = pos + 3 + int.from_bytes(data[pos + 1 : pos + 3], "big")
        if name_end > len(data):
            return _BAD_SNI
        if name_type == 0:
            raw = data[pos + 3 : name_end]
            if not raw or not raw.isascii():
                return _BAD_SNI
            name = raw.decode("ascii").lower().removesuffix(".")
            if not name or not name.isprintable():
                return _BAD_SNI
            return name
        pos = name_end
    return None


def _parse_alpn(data: bytes) -> tuple[bytes, ...] | Weird:
    """RFC 7301 3.1: ProtocolNameList of non-empty opaque names, as sent."""
    if len(data) < 2 or int.from_bytes(data[:2], "big") != len(data) - 2 or len(data) == 2:
        return _BAD_ALPN
    names: list[bytes] = []
    pos = 2
    while pos < len(data):
        name_end = pos + 1 + data[pos]
        if name_end == pos + 1 or name_end > len(data):
            return _BAD_ALPN
        names.append(data[pos + 1 : name_end])
        pos = name_end
    return tuple(names)


def _parse_supported_versions(data: bytes) -> tuple[int, ...] | Weird:
    """RFC 8446 4.2.1, ClientHello form: a 1-byte length, then 2-byte versions."""
    if len(data) < 3 or data[0] != len(data) - 1 or data[0] % 2:
        return _BAD_SUPPORTED_VERSIONS
    values = (int.from_bytes(data[i : i + 2], "big") for i in range(1, len(data), 2))
    return tuple(v for v in values if not is_grease(v))


class ClientHelloAssembler:
    """Reassembles the ClientHello of one TCP direction from segments in any order.

    Feed it every payload-carrying segment of the client-to-server direction until it returns
    something other than None; after that it is finished, holds no data and returns None for
    every feed. Retransmitted and overlapping segments are fine (the bytes first seen win).
    Sequence numbers wrap at 2**32.

    With ``isn`` (the sequence number of the first payload byte, i.e. the SYN's ISN + 1) the
    stream start is known. Without it the lowest sequence number seen so far is the candidate
    start, and the bytes there are accepted once they begin with a TLS handshake record holding
    a well-formed ClientHello. Anything else at the candidate start may just mean the real start
    has not arrived yet (a segment inside the stream can begin with bytes that look like a record
    header), so without ``isn`` every Weird is provisional: the assembler keeps waiting and
    reports it only when a bound is reached (``tls.not_tls`` when nothing TLS-like was ever at
    the start, ``tls.reassembly_overflow`` when the bytes there were a plausible unfinished hello).

    Bounds: only the first ``max_bytes`` of the stream are kept (record headers included; later
    bytes are dropped), and the assembler gives up once that window is full without a complete
    ClientHello, or after ``max_segments`` segments that brought new bytes or lay past the window.
    """

    __slots__ = (
        "_base",
        "_buf",
        "_done",
        "_held",
        "_hs",
        "_known_start",
        "_max_bytes",
        "_max_segments",
        "_pending",
        "_rec_pos",
        "_segments",
        "_tentative",
    )

    def __init__(
        self, max_bytes: int = 16384, isn: int | None = None, *, max_segments: int = 32
    ) -> None:
        self._max_bytes = max_bytes
        self._max_segments = max_segments
        self._known_start = isn is not None
        self._base: int | None = None if isn is None else isn & 0xFFFFFFFF
        """Sequence number of stream offset 0 (known, or the current candidate)."""
        self._buf = bytearray()
        """Contiguous stream bytes from offset 0."""
        self._pending: dict[int, bytes] = {}
        """Out-of-order segments by stream offset (always > len(_buf))."""
        self._held = 0
        """Bytes in _pending."""
        self._segments = 0
        self._rec_pos = 0
        """Offset in _buf of the first record not yet moved into _hs."""
        self._hs = bytearray()
        """Handshake bytes from the complete records before _rec_pos."""
        self._tentative: Weird | None = None
        """Without a known start: the last verdict on the candidate start, not yet final."""
        self._done = False

    @property
    def done(self) -> bool:
        """True once feed() has returned a result."""
        return self._done

    def feed(self, seq: int, payload: bytes) -> ClientHello | Weird | None:
        """Add one segment; the ClientHello or a Weird once decided, None for "need more"."""
        if self._done or not payload:
            return None
        seq &= 0xFFFFFFFF
        if self._base is None:
            self._base = seq
        off = _seq_diff(seq, self._base)
        if off < 0:
            if self._known_start:
                if off + len(payload) <= 0:
                    return None  # entirely before the stream start: nothing we want
                payload = payload[-off:]
            else:
                self._rebase(seq, -off)
            off = 0

        # A segment past the window is dropped but counted, so that a hole never filled ends.
        if off < self._max_bytes and not self._insert(off, payload[: self._max_bytes - off]):
            return None
        self._segments += 1
        if self._segments > self._max_segments or self._held > self._max_bytes:
            return self._finish(self._give_up())
        result = self._scan()
        if not self._known_start and not isinstance(result, ClientHello):
            self._tentative, result = result, None
        if result is None and len(self._buf) >= self._max_bytes:
            result = self._give_up()
        return None if result is None else self._finish(result)

    def _rebase(self, seq: int, shift: int) -> None:
        """Make ``seq`` the new candidate start; what we held moves ``shift`` bytes later."""
        pending = {k + shift: v for k, v in self._pending.items()}
        if self._buf:
            pending[shift] = bytes(self._buf)
        window = self._max_bytes
        self._pending = {k: v[: window - k] for k, v in pending.items() if k < window}
        self._held = sum(map(len, self._pending.values()))
        self._buf = bytearray()
        self._rec_pos = 0
        self._hs = bytearray()
        self._base = seq

    def _insert(self, off: int, payload: bytes) -> bool:
        """Store a segment; False when it brought nothing new (a pure retransmit)."""
        buf = self._buf
        if off > len(buf):
            old = self._pending.get(off)
            if old is not None and len(old) >= len(payload):
                return False
            self._held += len(payload) - (0 if old is None else len(old))
            self._pending[off] = payload
            return True
        if off + len(payload) <= len(buf):
            return False
        buf += payload[len(buf) - off :]
        if self._pending:
            for start in sorted(self._pending):
                if start > len(buf):
                    break
                data = self._pending.pop(start)
                self._held -= len(data)
                if start + len(data) > len(buf):
                    buf += data[len(buf) - start :]
        return True

    def _scan(self) -> ClientHello | Weird | None:
        """Walk the records in the contiguous prefix; decide if enough is there."""
        buf = self._buf
        if not buf:
            return None
        if self._rec_pos == 0 and not _starts_like_tls(buf):
            return _NOT_TLS
        pos = self._rec_pos
        hs = self._hs
        while True:
            if len(buf) - pos < 5:
                return self._check_message(hs)
            if buf[pos] != _HANDSHAKE or buf[pos + 1] != 3 or buf[pos + 2] > 4:
                return _BAD_RECORD
            length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
            if length == 0 or length > _MAX_RECORD:
                return _BAD_RECORD
            end = pos + 5 + length
            if end > len(buf):
                # Peek into the partial record: the message header may already be there.
                return self._check_message(hs + buf[pos + 5 :])
            hs += buf[pos + 5 : end]
            pos = self._rec_pos = end
            result = self._check_message(hs)
            if result is not None:
                return result

    def _check_message(self, hs: bytearray) -> ClientHello | Weird | None:
        if not hs:
            return None
        if hs[0] != _CLIENT_HELLO:
            return _NOT_CLIENT_HELLO
        if len(hs) < 4:
            return None
        end = 4 + int.from_bytes(hs[1:4], "big")
        if end + 5 > self._max_bytes:
            return _OVERFLOW  # cannot fit in the window even as a single record
        if len(hs) < end:
            return None
        return parse_client_hello(bytes(hs[:end]))

    def _give_up(self) -> Weird:
        if self._known_start:
            return _OVERFLOW
        if self._tentative is not None:
            return self._tentative
        return _OVERFLOW if _starts_like_tls(self._buf) else _NOT_TLS

    def _finish(self, result: ClientHello | Weird) -> ClientHello | Weird:
        self._done = True
        self._buf = bytearray()
        self._hs = bytearray()
        self._pending = {}
        self._held = 0
        return result


def _seq_diff(a: int, b: int) -> int:
    """a - b in 32-bit TCP sequence space, as a signed value in [-2**31, 2**31)."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000
