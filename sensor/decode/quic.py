"""QUIC client Initial decoding: the server name in a client's first flight, every version.

IETF QUIC Initial packets are encrypted, but with keys anyone can derive from the packet itself
(RFC 9001 5.2, RFC 9369 3.3): HKDF over the client's Destination Connection ID with a
per-version salt. This module removes header protection (AES-128-ECB on a 16-byte sample),
decrypts the payload (AES-128-GCM), walks the frames and reassembles the CRYPTO stream into a
TLS ClientHello, which `sensor.decode.tls.parse_client_hello` then decodes.

Versions: v1, v2, IETF drafts 22-34, every mvfst version (Meta's apps), and Google's gQUIC:
Q024-Q043 (legacy public header) and Q046 send the CHLO handshake message in cleartext STREAM
frames; Q050 encrypts it like an IETF Initial (its own salt, gQUIC frames); T050 and T051 carry
a TLS ClientHello the same way. The CHLO's SNI tag becomes a `ClientHello` too. An Initial with
a version forcing negotiation (0x?a?a?a?a) is read when draft-29 or v1 keys open it (the QUIC
interop runner's clients protect it so, and tshark reads it so); otherwise it is skipped
quietly, as the real attempt follows.

The helpers are pure functions; `QuicInitialTracker` holds the per-flow reassembly state. Nothing
raises on bad input; it comes back as a `Weird` with a stable dotted reason:

- ``quic.truncated``: a header or packet is shorter than its fields say.
- ``quic.bad_header``: a connection ID longer than 20 bytes or a malformed length field.
- ``quic.unsupported_version``: a long header with a version we do not know.
- ``quic.decrypt_failed``: the AEAD tag did not verify (not a client Initial for this DCID).
- ``quic.bad_frame``: a frame runs past the payload end.
- ``quic.unknown_frame``: a frame type not allowed in Initial packets.
- ``quic.crypto_overflow``: the CRYPTO stream is larger or more fragmented than the bounds.
- ``quic.not_client_hello``: the CRYPTO stream does not start with a ClientHello (or CHLO).
- ``quic.bad_chlo``: a gQUIC CHLO whose tag table or SNI value is malformed.
- ``tls.*``: the reassembled ClientHello is malformed (see `sensor.decode.tls`).
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sensor.decode.gquic import chlo_length, parse_chlo
from sensor.decode.tls import parse_client_hello
from sensor.model import ClientHello, Weird

__all__ = [
    "GQUIC_Q043",
    "GQUIC_Q046",
    "GQUIC_Q050",
    "GQUIC_T050",
    "GQUIC_T051",
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
    "chlo_length",
    "cleartext_payload",
    "decode_packet_number",
    "decrypt_initial",
    "initial_keys",
    "is_forcing_negotiation",
    "is_quic_long_header",
    "looks_like_quic",
    "parse_chlo",
    "parse_gquic_frames",
    "parse_initial_frames",
    "parse_long_header",
    "parse_public_header",
    "read_varint",
    "version_name",
]

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF
GQUIC_Q043 = 0x51303433
GQUIC_Q046 = 0x51303436
GQUIC_Q050 = 0x51303530
GQUIC_T050 = 0x54303530
GQUIC_T051 = 0x54303531

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
_FORCING_UNREAD = Weird("quic.forcing_negotiation")
"""Not counted: a version-forcing Initial we cannot read is normal (the real attempt follows)."""


@dataclass(frozen=True, slots=True)
class _VersionParams:
    salt: bytes
    """HKDF-Extract salt of the Initial secret; empty for gQUIC versions sent in cleartext."""
    label_prefix: bytes = b"quic "
    """"quic " for all but v2, "quicv2 " for v2 (then "key", "iv", "hp")."""
    v2_types: bool = False
    """Long-header packet types permuted as in RFC 9369 3.2."""
    gquic_frames: bool = False
    """gQUIC frame encoding (CRYPTO is type 0x08, STREAM 0x80-0xff) instead of RFC 9000's."""
    chlo: bool = False
    """The handshake is a gQUIC CHLO message, not a TLS ClientHello."""
    nibble_cids: bool = False
    """Q046's header: one byte with both CID lengths (4 bits each), no token, no Length."""


_SALT_D22 = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")
_SALT_D23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
_SALT_D29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_MVFST_EXPERIMENTAL = bytes.fromhex("ca6b74a5ce82fc04436bf2ea75e78c56c8c08d24")
_SALT_Q050 = bytes.fromhex("504574efd066fe2f9d945cfcdbd3a7f0d3b56b45")
_SALT_T050 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
_SALT_T051 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")


def _version_table() -> dict[int, _VersionParams]:
    """Every client Initial format we decode, by version.

    Sources: RFC 9001 5.2 and RFC 9369 3.3 (v1, v2); draft-ietf-quic-tls-22..34 (22: its own
    salt, 23-28 one salt, 29-32 another, 33-34 v1's); mvfst's QuicVersion enum and
    getQuicVersionSalt (quic/QuicConstants.h, quic/handshake/HandshakeLayer.cpp: MVFST and its
    aliases the draft-23 salt, the v1 aliases v1's, EXPERIMENTAL4/5 their own; 0xfaceb001, the
    draft-24 era version, the draft-22 salt); Chromium's crypto_utils.cc (Q050, T050, T051
    salts); Chromium's QUIC wire format docs for Q043/Q046 (cleartext CHLO).
    """
    table: dict[int, _VersionParams] = {
        VERSION_1: _VersionParams(_SALT_V1),
        VERSION_2: _VersionParams(_SALT_V2, b"quicv2 ", v2_types=True),
    }
    for draft in range(22, 35):
        salt = (
            _SALT_D22
            if draft == 22
            else _SALT_D23
            if draft <= 28
            else _SALT_D29
            if draft <= 32
            else _SALT_V1
        )
        table[0xFF000000 | draft] = _VersionParams(salt)
    mvfst = {
        0xFACEB001: _SALT_D22,
        0xFACEB002: _SALT_D23,
        0xFACEB003: _SALT_V1,
        0xFACEB004: _SALT_V1,
        0xFACEB00E: _SALT_D23,
        0xFACEB010: _SALT_D23,
        0xFACEB011: _SALT_D23,
        0xFACEB013: _SALT_D23,
        0xFACEB014: _SALT_MVFST_EXPERIMENTAL,
        0xFACEB015: _SALT_MVFST_EXPERIMENTAL,
        0xFACEFEED: _SALT_V1,
    }
    for version, salt in mvfst.items():
        table[version] = _VersionParams(salt)
    table[GQUIC_Q050] = _VersionParams(_SALT_Q050, gquic_frames=True, chlo=True)
    table[GQUIC_T050] = _VersionParams(_SALT_T050, gquic_frames=True)
    table[GQUIC_T051] = _VersionParams(_SALT_T051, gquic_frames=True)
    table[GQUIC_Q046] = _VersionParams(b"", gquic_frames=True, chlo=True, nibble_cids=True)
    return table


_VERSIONS: dict[int, _VersionParams] = _version_table()
_FORCING_LAYOUT = _VersionParams(_SALT_D29)
"""The packet layout read for a version-forcing Initial (v1's)."""
_PUBLIC_HEADER_VERSIONS = frozenset(int.from_bytes(b"Q0%02d" % n, "big") for n in range(24, 44))
"""gQUIC versions with the legacy public header (no long-header bit): Q024-Q043."""
_LITTLE_ENDIAN_BELOW = int.from_bytes(b"Q039", "big")
"""gQUIC before Q039 wrote frame fields little-endian."""
_PRIVATE_FLAGS_BELOW = int.from_bytes(b"Q034", "big")
"""gQUIC before Q034 had a private-flags byte after the message hash."""
_FORCING_SALTS = (_SALT_D29, _SALT_V1)
"""Keys tried on a version-forcing Initial (0x?a?a?a?a): test clients (the QUIC interop
runner's) protect it as draft-29 or v1, and tshark reads it as draft-29. Only a verified AEAD
tag counts, so a wrong guess is a failed decryption, never a wrong name."""


def version_name(version: int) -> str:
    """How flow records show a version: gQUIC by its tag ("Q046"), others as 0x%08x."""
    tag = version.to_bytes(4, "big")
    if tag[:1] in (b"Q", b"T") and tag[1:].isdigit():
        return tag.decode()
    return f"0x{version:08x}"


def is_forcing_negotiation(version: int) -> bool:
    """A reserved 0x?a?a?a?a version a client uses to make the server list its versions."""
    return version & 0x0F0F0F0F == 0x0A0A0A0A


# --- pure helpers ------------------------------------------------------------------------------


def is_quic_long_header(datagram: bytes) -> bool:
    """Cheap check: the datagram starts with a long-header packet of a version we decode."""
    return (
        len(datagram) >= 7
        and datagram[0] & 0x80 != 0
        and int.from_bytes(datagram[1:5], "big") in _VERSIONS
    )


def looks_like_quic(datagram: bytes) -> bool:
    """Cheap check for a client's first datagram: a long header of a version we decode or one
    forcing version negotiation, or a gQUIC public header (Q039-Q043) with a version."""
    if len(datagram) < 7:
        return False
    if datagram[0] & 0x80:
        version = int.from_bytes(datagram[1:5], "big")
        return version in _VERSIONS or is_forcing_negotiation(version)
    return (
        datagram[0] & 0x09 == 0x09
        and len(datagram) >= 13
        and int.from_bytes(datagram[9:13], "big") in _PUBLIC_HEADER_VERSIONS
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


def initial_keys(dcid: bytes, version: int, salt: bytes | None = None) -> InitialKeys | None:
    """Derive the client Initial keys from the client's first Destination Connection ID.

    None for a version we do not know (``salt`` overrides the version's, "quic " labels).
    """
    params = _VERSIONS.get(version)
    if salt is None:
        if params is None or not params.salt:
            return None
        salt = params.salt
    elif params is None:
        params = _FORCING_LAYOUT
    initial_secret = hmac.digest(salt, dcid, "sha256")
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
    params = _VERSIONS.get(version)
    if params is None:
        if not is_forcing_negotiation(version):
            return _UNSUPPORTED_VERSION
        params = _FORCING_LAYOUT
    wire_type = (first >> 4) & 3
    packet_type = (wire_type - 1) & 3 if params.v2_types else wire_type

    p = pos + 5
    if params.nibble_cids:
        # Q046: lengths 3-18 coded as 0-15 (0: absent); no token, no Length: the packet fills
        # the datagram; the packet number is in clear (its length in the first byte).
        lengths = datagram[p]
        dcid_len = (lengths >> 4) + 3 if lengths >> 4 else 0
        scid_len = (lengths & 15) + 3 if lengths & 15 else 0
        dcid = datagram[p + 1 : p + 1 + dcid_len]
        scid = datagram[p + 1 + dcid_len : p + 1 + dcid_len + scid_len]
        p += 1 + dcid_len + scid_len
        if p > len(datagram):
            return _TRUNCATED
        return LongHeader(pos, first, version, packet_type, dcid, scid, b"", p, len(datagram))
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


def parse_public_header(datagram: bytes) -> LongHeader | Weird:
    """gQUIC's legacy public header (Q039-Q043) of a client packet that carries its version.

    Flags: 0x01 version present, 0x08 an 8-byte connection ID, 0x30 the packet number length
    (1, 2, 4 or 6 bytes). Returned as a `LongHeader` of an Initial packet whose packet number
    starts at ``pn_offset`` and which fills the datagram.
    """
    if len(datagram) < 13:
        return _TRUNCATED
    flags = datagram[0]
    if flags & 0x09 != 0x09 or flags & 0x80:
        return _BAD_HEADER
    version = int.from_bytes(datagram[9:13], "big")
    if version not in _PUBLIC_HEADER_VERSIONS:
        return _UNSUPPORTED_VERSION
    dcid = datagram[1:9]
    pos = 13
    # 0x04 announces a diversification nonce only from servers (older versions used 0x0c for
    # the 8-byte CID); clients send none.
    if pos > len(datagram):
        return _TRUNCATED
    return LongHeader(0, flags, version, PACKET_INITIAL, dcid, b"", b"", pos, len(datagram))


_GQUIC_PN_LENGTHS = (1, 2, 4, 6)
_GQUIC_HASH = 12
"""FNV-1a message hash in front of a cleartext gQUIC payload (not checked: tshark does not)."""


def cleartext_payload(datagram: bytes, header: LongHeader) -> tuple[int, bytes] | Weird:
    """(packet number, frames) of a cleartext gQUIC packet (Q024-Q043 public header, Q046)."""
    if header.version in _PUBLIC_HEADER_VERSIONS:
        pn_len = _GQUIC_PN_LENGTHS[(header.first >> 4) & 3]
    else:
        pn_len = (header.first & 3) + 1
    start = header.pn_offset + pn_len + _GQUIC_HASH
    if header.version < _PRIVATE_FLAGS_BELOW:
        start += 1
    if start > header.end:
        return _TRUNCATED
    pn = int.from_bytes(datagram[header.pn_offset : header.pn_offset + pn_len], "big")
    return pn, datagram[start : header.end]


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
            end = _read_crypto(plaintext, pos, crypto)
            if end is None:
                return _BAD_FRAME
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


def _read_crypto(plaintext: bytes, pos: int, crypto: list[tuple[int, bytes]]) -> int | None:
    """A CRYPTO frame's body at `pos` (varint offset, varint length, data), appended to
    `crypto` as (offset, data): where the next frame starts, or None when it is cut short."""
    offset = read_varint(plaintext, pos)
    if offset is None:
        return None
    length = read_varint(plaintext, offset[1])
    if length is None:
        return None
    end = length[1] + length[0]
    if end > len(plaintext):
        return None
    crypto.append((offset[0], plaintext[length[1] : end]))
    return end


def parse_gquic_frames(
    plaintext: bytes, byteorder: Literal["big", "little"] = "big"
) -> InitialPayload | Weird:
    """Walk the frames of a gQUIC client packet: PADDING, PING, STREAM (stream 1, the
    handshake stream of Q039-Q046), CRYPTO (0x08: Q050, T050, T051), CONNECTION_CLOSE.

    gQUIC frames carry no generic length, so a frame of any other type (ACK, STOP_WAITING...)
    ends the walk: what came before it counts, and a packet with nothing before it is
    ``quic.unknown_frame``.
    """
    crypto: list[tuple[int, bytes]] = []
    pos = 0
    n = len(plaintext)
    while pos < n:
        ftype = plaintext[pos]
        if ftype == 0x00:
            rest = plaintext[pos:].lstrip(b"\x00")
            pos = n - len(rest)
            continue
        pos += 1
        if ftype == 0x07:  # PING
            continue
        if ftype == 0x08:  # CRYPTO: varint offset, varint length
            end = _read_crypto(plaintext, pos, crypto)
            if end is None:
                return _BAD_FRAME
            pos = end
        elif ftype & 0x80:  # STREAM: 1 F D OOO SS (little-endian fields before Q039)
            id_len = (ftype & 3) + 1
            off_len = (ftype >> 2) & 7
            off_len = off_len + 1 if off_len else 0
            head = pos + id_len + off_len + (2 if ftype & 0x20 else 0)
            if head > n:
                return _BAD_FRAME
            stream_id = int.from_bytes(plaintext[pos : pos + id_len], byteorder)
            offset_value = int.from_bytes(
                plaintext[pos + id_len : pos + id_len + off_len], byteorder
            )
            end = head + int.from_bytes(plaintext[head - 2 : head], byteorder) if ftype & 32 else n
            if end > n:
                return _BAD_FRAME
            if stream_id == 1:
                crypto.append((offset_value, plaintext[head:end]))
            pos = end
        elif ftype == 0x02:  # CONNECTION_CLOSE
            return InitialPayload(tuple(crypto), True)
        elif crypto:
            break
        else:
            return _UNKNOWN_FRAME
    return InitialPayload(tuple(crypto), False)


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

    def __init__(self, version: int, dcid: bytes, keys: InitialKeys | None) -> None:
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

    def restart(self, version: int, dcid: bytes, keys: InitialKeys | None) -> None:
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
        if _is_chlo(self.version):
            if not b"CHLO".startswith(bytes(buf[:4])):
                return _NOT_CLIENT_HELLO
            length = chlo_length(buf)
            if length is None:
                return None
            if length > limit:
                return _CRYPTO_OVERFLOW
            if len(buf) < length:
                return None
            return parse_chlo(bytes(buf[:length]))
        if buf[0] != 1:
            return _NOT_CLIENT_HELLO
        if len(buf) < 4:
            return None
        end = 4 + int.from_bytes(buf[1:4], "big")
        if end > limit:
            return _CRYPTO_OVERFLOW
        if len(buf) < end:
            return None
        return parse_client_hello(bytes(buf[:end]), quic=True)


def _is_chlo(version: int) -> bool:
    params = _VERSIONS.get(version)
    return params.chlo if params is not None else version in _PUBLIC_HEADER_VERSIONS


def _is_cleartext(version: int) -> bool:
    params = _VERSIONS.get(version)
    return not params.salt if params is not None else version in _PUBLIC_HEADER_VERSIONS


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
        "last_version",
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
        self._keys: OrderedDict[tuple[int, bytes, bytes], InitialKeys] = OrderedDict()
        self._bytes = 0
        """CRYPTO bytes buffered over all flows."""
        self._evictions = 0
        self.last_version: int | None = None
        """The version of the last client packet `feed` read a header of (None: none)."""

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
        packets only, a version forcing negotiation, or a flow whose ClientHello was already
        returned). When a datagram gives no ClientHello, the first Weird among its packets is
        returned. gQUIC's CHLO comes back as a `ClientHello` too (its SNI, legacy_version 0).
        """
        self.last_version = None
        conn = self._conns.get(key)
        if conn is not None:
            self._conns.move_to_end(key)
            if conn.done:
                self.last_version = conn.version
                return None
        if datagram and not datagram[0] & 0x80:
            if len(datagram) < 13 or datagram[0] & 0xC9 != 0x09 or datagram[9] != 0x51:
                return None  # a short header (fixed bit 0x40), or gQUIC without its version
            header = parse_public_header(datagram)
            if isinstance(header, Weird):
                return header
            self.last_version = header.version
            return self._initial(datagram, header, key)
        weird: Weird | None = None
        pos = 0
        while pos < len(datagram) and datagram[pos] & 0x80:
            if pos + 5 <= len(datagram):
                self.last_version = int.from_bytes(datagram[pos + 1 : pos + 5], "big")
            header = parse_long_header(datagram, pos)
            if isinstance(header, Weird):
                return weird or header
            pos = header.end
            if header.packet_type != PACKET_INITIAL:
                continue  # 0-RTT and Handshake are not ours to read; Retry ends the datagram
            result = self._initial(datagram, header, key)
            if isinstance(result, ClientHello):
                return result
            if result is not None and result is not _FORCING_UNREAD:
                weird = weird or result
            conn = self._conns.get(key)
            if conn is not None and conn.done:
                break
        # A first byte without 0x80 is a short-header packet (or zero padding): nothing for us.
        return weird

    def in_progress(self, key: Hashable) -> bool:
        """A flow whose handshake is being reassembled (some Initial decoded, no result yet)."""
        conn = self._conns.get(key)
        return conn is not None and not conn.done

    def _initial(
        self, datagram: bytes, header: LongHeader, key: Hashable
    ) -> ClientHello | Weird | None:
        conn = self._conns.get(key)
        if conn is None:
            keys = None
            if _is_cleartext(header.version):
                decrypted = cleartext_payload(datagram, header)
            else:
                found = self._try_keys(datagram, header)
                if isinstance(found, Weird):
                    return found  # no state for flows that never decrypt
                keys, decrypted = found
            if isinstance(decrypted, Weird):
                return decrypted
            conn = _Conn(header.version, header.dcid, keys)
            self._add_conn(key, conn)
        else:
            decrypted = self._decrypt_for(conn, datagram, header)
            if isinstance(decrypted, Weird):
                return decrypted

        pn, plaintext = decrypted
        conn.largest_pn = max(conn.largest_pn, pn)
        params = _VERSIONS.get(conn.version)
        if conn.version in _PUBLIC_HEADER_VERSIONS or (params is not None and params.gquic_frames):
            order: Literal["big", "little"] = (
                "little" if conn.version < _LITTLE_ENDIAN_BELOW else "big"
            )
            payload = parse_gquic_frames(plaintext, order)
        else:
            payload = parse_initial_frames(plaintext)
        if isinstance(payload, Weird):
            self._retire(conn)
            return payload
        if _is_chlo(conn.version) and not conn.buf:
            # A capture that starts after the first CHLO (lost, or before the capture) still
            # holds whole later CHLOs at a later stream offset: read those as they are.
            for offset, data in payload.crypto:
                if offset and data[:4] == b"CHLO":
                    length = chlo_length(data)
                    if length is not None and length <= len(data):
                        self._retire(conn)
                        return parse_chlo(data[:length])
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
        """Decrypt a packet of a known flow, following DCID and version changes."""
        if _is_cleartext(header.version):
            decrypted = cleartext_payload(datagram, header)
            if not isinstance(decrypted, Weird) and header.version != conn.version:
                self._bytes -= conn.size()
                conn.restart(header.version, header.dcid, None)
            return decrypted
        if conn.keys is not None and header.version == conn.version:
            # Also for a new DCID: Initial keys do not change when the client adopts the
            # server's connection ID (RFC 9001 5.2).
            decrypted = decrypt_initial(datagram, header, conn.keys, conn.largest_pn)
            if not isinstance(decrypted, Weird) or header.dcid == conn.dcid:
                return decrypted
        # After a Retry or version negotiation the client starts over under new keys.
        found = self._try_keys(datagram, header)
        if isinstance(found, Weird):
            return found
        keys, decrypted = found
        self._bytes -= conn.size()
        conn.restart(header.version, header.dcid, keys)
        return decrypted

    def _try_keys(
        self, datagram: bytes, header: LongHeader
    ) -> tuple[InitialKeys, tuple[int, bytes]] | Weird:
        """Derive (or find) the keys for a first packet and decrypt it with them."""
        if not is_forcing_negotiation(header.version):
            keys = self._keys_for(header.version, header.dcid)
            if isinstance(keys, Weird):
                return keys
            decrypted = decrypt_initial(datagram, header, keys)
            return decrypted if isinstance(decrypted, Weird) else (keys, decrypted)
        for salt in _FORCING_SALTS:
            keys = self._keys_for(header.version, header.dcid, salt)
            if isinstance(keys, Weird):
                return keys
            decrypted = decrypt_initial(datagram, header, keys)
            if not isinstance(decrypted, Weird):
                return keys, decrypted
        return _FORCING_UNREAD

    def _keys_for(self, version: int, dcid: bytes, salt: bytes = b"") -> InitialKeys | Weird:
        cache_key = (version, dcid, salt)
        keys = self._keys.get(cache_key)
        if keys is not None:
            self._keys.move_to_end(cache_key)
            return keys
        derived = initial_keys(dcid, version, salt or None)
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
