"""QUIC client Initial decoding: the ClientHello inside a client's first flight (v1 and v2).

Initial packets are encrypted, but with keys anyone can derive from the packet itself (RFC 9001
5.2, RFC 9369 3.3): HKDF over the client's Destination Connection ID with a per-version salt.
This module removes header protection (AES-128-ECB on a 16-byte sample), decrypts the payload
(AES-128-GCM), walks the frames and reassembles the CRYPTO stream into a TLS ClientHello, which
`sensor.decode.tls.parse_client_hello` then decodes.

The helpers are pure functions; `QuicInitialTracker` holds the per-flow reassembly state. Nothing
raises on bad input; it comes back as a `Weird` with a stable dotted reason:

- ``quic.truncated``: a header or packet is shorter than its fields say.
- ``quic.bad_header``: a connection ID longer than 20 bytes or a malformed length field.
- ``quic.unsupported_version``: a long header with a version other than v1 or v2.
- ``quic.decrypt_failed``: the AEAD tag did not verify (not a client Initial for this DCID).
- ``quic.bad_frame``: a frame runs past the payload end.
- ``quic.unknown_frame``: a frame type not allowed in Initial packets.
- ``quic.crypto_overflow``: the CRYPTO stream is larger or more fragmented than the bounds.
- ``quic.not_client_hello``: the CRYPTO stream does not start with a ClientHello.
- ``tls.*``: the reassembled ClientHello is malformed (see `sensor.decode.tls`).
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sensor.decode.tls import parse_client_hello
from sensor.model import ClientHello, Weird

__all__ = [
    "PACKET_0RTT",
    "PACKET_HANDSHAKE",
    "PACKET_INITIAL",
    "PACKET_RETRY",
    "VERSION_1",
    "VERSION_2",
    "InitialKeys",
    "InitialPayload",
    "LongHeader",
    "QuicInitialTracker",
    "decode_packet_number",
    "decrypt_initial",
    "initial_keys",
    "is_quic_long_header",
    "parse_initial_frames",
    "parse_long_header",
    "read_varint",
]

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF

# Packet types, numbered as in v1 (v2 permutes the wire bits; `parse_long_header` maps back).
PACKET_INITIAL = 0
PACKET_0RTT = 1
PACKET_HANDSHAKE = 2
PACKET_RETRY = 3

_MAX_CID = 20
_SAMPLE = 16
_TAG = 16
_MAX_PENDING_FRAGMENTS = 256

_TRUNCATED = Weird("quic.truncated")
_BAD_HEADER = Weird("quic.bad_header")
_UNSUPPORTED_VERSION = Weird("quic.unsupported_version")
_DECRYPT_FAILED = Weird("quic.decrypt_failed")
_BAD_FRAME = Weird("quic.bad_frame")
_UNKNOWN_FRAME = Weird("quic.unknown_frame")
_CRYPTO_OVERFLOW = Weird("quic.crypto_overflow")
_NOT_CLIENT_HELLO = Weird("quic.not_client_hello")


@dataclass(frozen=True, slots=True)
class _VersionParams:
    salt: bytes
    label_prefix: bytes
    """"quic " for v1, "quicv2 " for v2 (then "key", "iv", "hp")."""


_VERSIONS: dict[int, _VersionParams] = {
    VERSION_1: _VersionParams(
        salt=bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), label_prefix=b"quic "
    ),
    VERSION_2: _VersionParams(
        salt=bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), label_prefix=b"quicv2 "
    ),
}


# --- pure helpers ------------------------------------------------------------------------------


def is_quic_long_header(datagram: bytes) -> bool:
    """Cheap check: the datagram starts with a long-header packet of a version we decode."""
    return (
        len(datagram) >= 7
        and datagram[0] & 0x80 != 0
        and int.from_bytes(datagram[1:5], "big") in _VERSIONS
    )


def read_varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """RFC 9000 16 variable-length integer at ``pos``: (value, next position), None if truncated."""
    if pos >= len(data):
        return None
    first = data[pos]
    size = 1 << (first >> 6)
    end = pos + size
    if end > len(data):
        return None
    value = first & 0x3F
    for i in range(pos + 1, end):
        value = (value << 8) | data[i]
    return value, end


def decode_packet_number(truncated: int, nbits: int, largest: int) -> int:
    """RFC 9000 A.3: the full packet number closest to ``largest + 1`` (-1: none received)."""
    expected = largest + 1
    win = 1 << nbits
    hwin = win >> 1
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """RFC 8446 7.1 HKDF-Expand-Label with SHA-256, empty context, length <= 32."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", "sha256")[:length]


class InitialKeys:
    """The client's Initial packet protection for one (version, DCID): derived once, reused."""

    __slots__ = ("_hp", "aead", "hp", "iv", "key")

    def __init__(self, key: bytes, iv: bytes, hp: bytes) -> None:
        self.key = key
        self.iv = iv
        self.hp = hp
        self.aead = AESGCM(key)
        # ECB has no chaining, so one encryptor context serves every sample.
        self._hp: CipherContext = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()

    def hp_mask(self, sample: bytes) -> bytes:
        """The 16-byte header-protection mask for a 16-byte ciphertext sample."""
        return self._hp.update(sample)


def initial_keys(dcid: bytes, version: int) -> InitialKeys | None:
    """Derive the client Initial keys from the client's first Destination Connection ID.

    None for a version we do not know.
    """
    params = _VERSIONS.get(version)
    if params is None:
        return None
    initial_secret = hmac.digest(params.salt, dcid, "sha256")
    client_secret = _hkdf_expand_label(initial_secret, b"client in", 32)
    prefix = params.label_prefix
    return InitialKeys(
        key=_hkdf_expand_label(client_secret, prefix + b"key", 16),
        iv=_hkdf_expand_label(client_secret, prefix + b"iv", 12),
        hp=_hkdf_expand_label(client_secret, prefix + b"hp", 16),
    )


@dataclass(frozen=True, slots=True)
class LongHeader:
    """The unprotected part of a long-header packet, positions absolute in the datagram."""

    start: int
    first: int
    """The first byte, still header-protected."""
    version: int
    packet_type: int
    """PACKET_INITIAL, PACKET_0RTT, PACKET_HANDSHAKE or PACKET_RETRY (v1 numbering)."""
    dcid: bytes
    scid: bytes
    token: bytes
    """Initial packets only; empty otherwise."""
    pn_offset: int
    """Where the protected packet number starts (Retry: the end of the SCID)."""
    end: int
    """End of this packet; the next coalesced packet starts here."""


def parse_long_header(datagram: bytes, pos: int = 0) -> LongHeader | Weird:
    """Parse the long header of the packet starting at ``pos`` (first byte must have 0x80 set)."""
    if pos + 7 > len(datagram):
        return _TRUNCATED
    first = datagram[pos]
    version = int.from_bytes(datagram[pos + 1 : pos + 5], "big")
    if version not in _VERSIONS:
        return _UNSUPPORTED_VERSION
    wire_type = (first >> 4) & 3
    packet_type = (wire_type - 1) & 3 if version == VERSION_2 else wire_type

    p = pos + 5
    dcid_len = datagram[p]
    if dcid_len > _MAX_CID:
        return _BAD_HEADER
    dcid = datagram[p + 1 : p + 1 + dcid_len]
    p += 1 + dcid_len
    if p >= len(datagram):
        return _TRUNCATED
    scid_len = datagram[p]
    if scid_len > _MAX_CID:
        return _BAD_HEADER
    scid = datagram[p + 1 : p + 1 + scid_len]
    p += 1 + scid_len
    if p > len(datagram):
        return _TRUNCATED
    if packet_type == PACKET_RETRY:
        # No Length field: a Retry fills the rest of the datagram.
        return LongHeader(pos, first, version, packet_type, dcid, scid, b"", p, len(datagram))

    token = b""
    if packet_type == PACKET_INITIAL:
        token_len = read_varint(datagram, p)
        if token_len is None:
            return _TRUNCATED
        p = token_len[1] + token_len[0]
        if p > len(datagram):
            return _TRUNCATED
        token = datagram[token_len[1] : p]
    length = read_varint(datagram, p)
    if length is None:
        return _TRUNCATED
    pn_offset = length[1]
    end = pn_offset + length[0]
    if end > len(datagram):
        return _TRUNCATED
    return LongHeader(pos, first, version, packet_type, dcid, scid, token, pn_offset, end)


def decrypt_initial(
    datagram: bytes, header: LongHeader, keys: InitialKeys, largest_pn: int = -1
) -> tuple[int, bytes] | Weird:
    """Remove header protection and decrypt one Initial packet: (packet number, plaintext).

    ``largest_pn`` is the largest packet number already received on the connection (-1: none),
    used to expand the truncated packet number.
    """
    pn_offset = header.pn_offset
    if pn_offset + 4 + _SAMPLE > header.end:
        return _TRUNCATED
    mask = keys.hp_mask(datagram[pn_offset + 4 : pn_offset + 4 + _SAMPLE])
    first = header.first ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    protected_pn = datagram[pn_offset : pn_offset + pn_len]
    pn_bytes = bytes(b ^ m for b, m in zip(protected_pn, mask[1 : 1 + pn_len], strict=True))
    truncated = int.from_bytes(pn_bytes, "big")
    pn = decode_packet_number(truncated, pn_len * 8, largest_pn)
    aad = bytes([first]) + datagram[header.start + 1 : pn_offset] + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    ciphertext = datagram[pn_offset + pn_len : header.end]
    if len(ciphertext) < _TAG:
        return _TRUNCATED
    try:
        plaintext = keys.aead.decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError, OverflowError):
        return _DECRYPT_FAILED
    return pn, plaintext


@dataclass(frozen=True, slots=True)
class InitialPayload:
    """What the frames of one decrypted Initial packet carry that we care about."""

    crypto: tuple[tuple[int, bytes], ...]
    """(stream offset, data) of each CRYPTO frame, in packet order."""
    closed: bool
    """A CONNECTION_CLOSE frame was present."""


def parse_initial_frames(plaintext: bytes) -> InitialPayload | Weird:
    """Walk the frames of an Initial packet: PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE.

    Any other frame type (none is allowed in Initial packets) is ``quic.unknown_frame``.
    """
    crypto: list[tuple[int, bytes]] = []
    closed = False
    pos = 0
    n = len(plaintext)
    while pos < n:
        ftype = plaintext[pos]
        if ftype == 0x00:  # PADDING, usually a long run to the end
            rest = plaintext[pos:].lstrip(b"\x00")
            pos = n - len(rest)
            continue
        pos += 1
        if ftype == 0x01:  # PING
            continue
        if ftype in (0x02, 0x03):  # ACK, ACK_ECN
            skipped = _skip_ack(plaintext, pos, ecn=ftype == 0x03)
            if skipped is None:
                return _BAD_FRAME
            pos = skipped
        elif ftype == 0x06:  # CRYPTO
            offset = read_varint(plaintext, pos)
            if offset is None:
                return _BAD_FRAME
            length = read_varint(plaintext, offset[1])
            if length is None:
                return _BAD_FRAME
            end = length[1] + length[0]
            if end > n:
                return _BAD_FRAME
            crypto.append((offset[0], plaintext[length[1] : end]))
            pos = end
        elif ftype in (0x1C, 0x1D):  # CONNECTION_CLOSE (transport, application)
            skipped = _skip_close(plaintext, pos, transport=ftype == 0x1C)
            if skipped is None:
                return _BAD_FRAME
            pos = skipped
            closed = True
        else:
            return _UNKNOWN_FRAME
    return InitialPayload(tuple(crypto), closed)


def _skip_varints(data: bytes, pos: int, count: int) -> int | None:
    for _ in range(count):
        item = read_varint(data, pos)
        if item is None:
            return None
        pos = item[1]
    return pos


def _skip_ack(data: bytes, pos: int, *, ecn: bool) -> int | None:
    """RFC 9000 19.3: largest, delay, range count, first range, ranges, [ECN counts]."""
    head = _skip_varints(data, pos, 2)
    if head is None:
        return None
    range_count = read_varint(data, head)
    if range_count is None or range_count[0] > len(data):
        return None  # each range takes at least two bytes; a huge count is garbage
    return _skip_varints(data, range_count[1], 1 + 2 * range_count[0] + (3 if ecn else 0))


def _skip_close(data: bytes, pos: int, *, transport: bool) -> int | None:
    """RFC 9000 19.19: error code, [frame type], reason phrase length, reason phrase."""
    p = _skip_varints(data, pos, 2 if transport else 1)
    if p is None:
        return None
    reason = read_varint(data, p)
    if reason is None or reason[1] + reason[0] > len(data):
        return None
    return reason[1] + reason[0]


# --- per-flow reassembly -----------------------------------------------------------------------


class _Conn:
    """Reassembly state of one client flow; ``done`` marks a tombstone (result already given)."""

    __slots__ = ("buf", "dcid", "done", "held", "keys", "largest_pn", "pending", "version")

    def __init__(self, version: int, dcid: bytes, keys: InitialKeys) -> None:
        self.version = version
        self.dcid = dcid
        self.keys: InitialKeys | None = keys
        self.largest_pn = -1
        self.buf = bytearray()
        """Contiguous CRYPTO bytes from offset 0."""
        self.pending: dict[int, bytes] = {}
        """Out-of-order CRYPTO fragments by offset (always > len(buf))."""
        self.held = 0
        """Bytes in pending."""
        self.done = False

    def size(self) -> int:
        return len(self.buf) + self.held

    def restart(self, version: int, dcid: bytes, keys: InitialKeys) -> None:
        """A new CRYPTO stream under new keys (after Retry or version negotiation)."""
        self.version = version
        self.dcid = dcid
        self.keys = keys
        self.largest_pn = -1
        self.buf = bytearray()
        self.pending = {}
        self.held = 0

    def retire(self) -> None:
        self.done = True
        self.keys = None
        self.buf = bytearray()
        self.pending = {}
        self.held = 0

    def add(self, offset: int, data: bytes, limit: int) -> bool:
        """Store one CRYPTO fragment; False when it breaks the bounds."""
        end = offset + len(data)
        if end > limit:
            return False
        buf = self.buf
        if offset > len(buf):
            old = self.pending.get(offset)
            if old is None or len(old) < len(data):
                self.held += len(data) - (0 if old is None else len(old))
                self.pending[offset] = data
            return len(self.pending) <= _MAX_PENDING_FRAGMENTS and self.held <= limit
        if end > len(buf):
            buf += data[len(buf) - offset :]
            for start in sorted(self.pending):
                if start > len(buf):
                    break
                frag = self.pending.pop(start)
                self.held -= len(frag)
                if start + len(frag) > len(buf):
                    buf += frag[len(buf) - start :]
        return True

    def client_hello(self, limit: int) -> ClientHello | Weird | None:
        buf = self.buf
        if not buf:
            return None
        if buf[0] != 1:
            return _NOT_CLIENT_HELLO
        if len(buf) < 4:
            return None
        end = 4 + int.from_bytes(buf[1:4], "big")
        if end > limit:
            return _CRYPTO_OVERFLOW
        if len(buf) < end:
            return None
        return parse_client_hello(bytes(buf[:end]))


class QuicInitialTracker:
    """Reassembles the ClientHello from client Initial packets, per client flow.

    Feed it the client-to-server datagrams of UDP flows (``key`` is whatever identifies the flow,
    e.g. the 4-tuple). CRYPTO frames may be spread over several packets and datagrams and arrive
    in any order. Each flow's ClientHello is returned once; the flow is then remembered only as a
    tombstone (no keys, no data) so its later Initials (ACKs) are ignored without decrypting,
    until it falls out of the LRU.

    Bounds: at most ``max_connections`` flows (least recently fed evicted first), CRYPTO data up
    to offset ``max_crypto_bytes`` per flow, and ``max_total_bytes`` buffered over all flows.
    Keys are derived once per (version, DCID) and cached for ``max_connections`` DCIDs.
    """

    __slots__ = (
        "_bytes",
        "_conns",
        "_evictions",
        "_keys",
        "_max_connections",
        "_max_crypto_bytes",
        "_max_total_bytes",
    )

    def __init__(
        self,
        max_connections: int = 1024,
        max_crypto_bytes: int = 65536,
        *,
        max_total_bytes: int = 8 << 20,
    ) -> None:
        self._max_connections = max(1, max_connections)
        self._max_crypto_bytes = max_crypto_bytes
        self._max_total_bytes = max_total_bytes
        self._conns: OrderedDict[Hashable, _Conn] = OrderedDict()
        self._keys: OrderedDict[tuple[int, bytes], InitialKeys] = OrderedDict()
        self._bytes = 0
        """CRYPTO bytes buffered over all flows."""
        self._evictions = 0

    def __len__(self) -> int:
        """Flows tracked, tombstones included."""
        return len(self._conns)

    @property
    def evictions(self) -> int:
        """Flows dropped by a bound before their ClientHello was complete."""
        return self._evictions

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    def feed(self, datagram: bytes, key: Hashable) -> ClientHello | Weird | None:
        """Process one client datagram; the ClientHello or a Weird when decided, else None.

        None also covers datagrams with nothing to decode here (short-header, 0-RTT or Handshake
        packets only, or a flow whose ClientHello was already returned). When a datagram gives
        no ClientHello, the first Weird among its packets is returned.
        """
        conn = self._conns.get(key)
        if conn is not None:
            self._conns.move_to_end(key)
            if conn.done:
                return None
        weird: Weird | None = None
        pos = 0
        while pos < len(datagram) and datagram[pos] & 0x80:
            header = parse_long_header(datagram, pos)
            if isinstance(header, Weird):
                return weird or header
            pos = header.end
            if header.packet_type != PACKET_INITIAL:
                continue  # 0-RTT and Handshake are not ours to read; Retry ends the datagram
            result = self._initial(datagram, header, key)
            if isinstance(result, ClientHello):
                return result
            if result is not None:
                weird = weird or result
            conn = self._conns.get(key)
            if conn is not None and conn.done:
                break
        # A first byte without 0x80 is a short-header packet (or zero padding): nothing for us.
        return weird

    def _initial(
        self, datagram: bytes, header: LongHeader, key: Hashable
    ) -> ClientHello | Weird | None:
        conn = self._conns.get(key)
        if conn is None:
            keys = self._keys_for(header.version, header.dcid)
            if isinstance(keys, Weird):
                return keys
            decrypted = decrypt_initial(datagram, header, keys)
            if isinstance(decrypted, Weird):
                return decrypted  # no state for flows that never decrypt
            conn = _Conn(header.version, header.dcid, keys)
            self._add_conn(key, conn)
        else:
            decrypted = self._decrypt_for(conn, datagram, header)
            if isinstance(decrypted, Weird):
                return decrypted

        pn, plaintext = decrypted
        conn.largest_pn = max(conn.largest_pn, pn)
        payload = parse_initial_frames(plaintext)
        if isinstance(payload, Weird):
            self._retire(conn)
            return payload
        before = conn.size()
        for offset, data in payload.crypto:
            if not conn.add(offset, data, self._max_crypto_bytes):
                self._retire(conn, before)
                return _CRYPTO_OVERFLOW
        if payload.closed:
            self._retire(conn, before)
            return None
        result = conn.client_hello(self._max_crypto_bytes)
        if result is not None:
            self._retire(conn, before)
            return result
        self._bytes += conn.size() - before
        self._enforce_total(key)
        return None

    def _decrypt_for(
        self, conn: _Conn, datagram: bytes, header: LongHeader
    ) -> tuple[int, bytes] | Weird:
        """Decrypt a packet of a known flow, following DCID changes."""
        if conn.keys is not None and header.version == conn.version:
            # Also for a new DCID: Initial keys do not change when the client adopts the
            # server's connection ID (RFC 9001 5.2).
            decrypted = decrypt_initial(datagram, header, conn.keys, conn.largest_pn)
            if not isinstance(decrypted, Weird) or header.dcid == conn.dcid:
                return decrypted
        # After a Retry or version negotiation the client starts over under new keys.
        keys = self._keys_for(header.version, header.dcid)
        if isinstance(keys, Weird):
            return keys
        decrypted = decrypt_initial(datagram, header, keys)
        if not isinstance(decrypted, Weird):
            self._bytes -= conn.size()
            conn.restart(header.version, header.dcid, keys)
        return decrypted

    def _keys_for(self, version: int, dcid: bytes) -> InitialKeys | Weird:
        cache_key = (version, dcid)
        keys = self._keys.get(cache_key)
        if keys is not None:
            self._keys.move_to_end(cache_key)
            return keys
        derived = initial_keys(dcid, version)
        if derived is None:
            return _UNSUPPORTED_VERSION  # parse_long_header already refuses these
        self._keys[cache_key] = derived
        if len(self._keys) > self._max_connections:
            self._keys.popitem(last=False)
        return derived

    def _add_conn(self, key: Hashable, conn: _Conn) -> None:
        self._conns[key] = conn
        while len(self._conns) > self._max_connections:
            _, old = self._conns.popitem(last=False)
            if not old.done:
                self._evictions += 1
                self._bytes -= old.size()

    def _retire(self, conn: _Conn, counted: int | None = None) -> None:
        """Turn a flow into a tombstone; ``counted`` is its size already in _bytes."""
        self._bytes -= conn.size() if counted is None else counted
        conn.retire()

    def _enforce_total(self, keep: Hashable) -> None:
        """Evict the least recently fed live flows (never ``keep``) while over the byte bound."""
        if self._bytes <= self._max_total_bytes:
            return
        for key in list(self._conns):
            if self._bytes <= self._max_total_bytes:
                break
            conn = self._conns[key]
            if key == keep or conn.done:
                continue
            del self._conns[key]
            self._evictions += 1
            self._bytes -= conn.size()
