"""Client first flights for QUIC versions aioquic does not speak, built from their specifications.

- IETF drafts 22-34 and mvfst: the v1 packet layout (RFC 9000 17.2.2) protected as RFC 9001 5
  describes, with the per-version salt from the draft (draft-ietf-quic-tls-NN 5.2) or from
  mvfst's source (quic/handshake/HandshakeLayer.h, getQuicVersionSalt).
- gQUIC Q050, T050, T051: the same layout and protection with the salts from Chromium's
  quic/core/crypto/crypto_utils.cc; frames in gQUIC's encoding (CRYPTO = 0x08, varint offset and
  length, as in Chromium's quic_framer.cc). Q050 carries a CHLO, T05x a TLS ClientHello.
- gQUIC Q043 (public header) and Q046 (long header with nibble CID lengths): cleartext packets,
  a 12-byte message hash, then a STREAM frame on stream 1 carrying the CHLO handshake message
  (tag, count, tag table of end offsets, values; Chromium's crypto_framer.cc).

The salts and labels are written out here again, from those documents, rather than imported
from the decoder, so a wrong entry in the decoder's table fails the tests (and tshark, in the
agreement test, checks both).
"""

from __future__ import annotations

import hmac
import itertools
import random
import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.builders import quic_varint

SALT_D22 = "7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a"
SALT_D23 = "c3eef712c72ebb5a11a7d2432bb46365bef9f502"
SALT_D29 = "afbfec289993d24c9e9786f19c6111e04390a899"
SALT_V1 = "38762cf7f55934b34d179ae6a4c80cadccbb7f0a"
SALT_V2 = "0dede3def700a6db819381be6e269dcbf9bd2ed9"
SALT_MVFST_EXP = "ca6b74a5ce82fc04436bf2ea75e78c56c8c08d24"
SALT_Q050 = "504574efd066fe2f9d945cfcdbd3a7f0d3b56b45"
SALT_T050 = "7ff579e5acd072915580304c43a2367c60488310"
SALT_T051 = "7a4edef4e7ccee5fa4506c19124fc8ccda6e033d"

Q043, Q046, Q050 = 0x51303433, 0x51303436, 0x51303530
T050, T051 = 0x54303530, 0x54303531


def salt_for(version: int) -> bytes:
    """The Initial salt of an encrypted version (KeyError for cleartext or unknown ones).

    A version forcing negotiation (0x?a?a?a?a) gets draft-29's, as the QUIC interop runner's
    clients protect it."""
    if version & 0x0F0F0F0F == 0x0A0A0A0A:
        return bytes.fromhex(SALT_D29)
    if version >> 8 == 0xFF0000:
        draft = version & 0xFF
        if draft == 22:
            return bytes.fromhex(SALT_D22)
        if 23 <= draft <= 28:
            return bytes.fromhex(SALT_D23)
        if 29 <= draft <= 32:
            return bytes.fromhex(SALT_D29)
        if 33 <= draft <= 34:
            return bytes.fromhex(SALT_V1)
    table = {
        0x00000001: SALT_V1,
        0x6B3343CF: SALT_V2,
        0xFACEB001: SALT_D22,
        0xFACEB002: SALT_D23,
        0xFACEB003: SALT_V1,
        0xFACEB004: SALT_V1,
        0xFACEB00E: SALT_D23,
        0xFACEB010: SALT_D23,
        0xFACEB011: SALT_D23,
        0xFACEB013: SALT_D23,
        0xFACEB014: SALT_MVFST_EXP,
        0xFACEB015: SALT_MVFST_EXP,
        0xFACEFEED: SALT_V1,
        Q050: SALT_Q050,
        T050: SALT_T050,
        T051: SALT_T051,
    }
    return bytes.fromhex(table[version])


def _expand(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(secret, block + info + bytes([i]), "sha256")
        out += block
        i += 1
    return out[:length]


def client_keys(version: int, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) of the client's Initial packets."""
    prefix = b"quicv2 " if version == 0x6B3343CF else b"quic "
    secret = _expand(hmac.digest(salt_for(version), dcid, "sha256"), b"client in", 32)
    return (
        _expand(secret, prefix + b"key", 16),
        _expand(secret, prefix + b"iv", 12),
        _expand(secret, prefix + b"hp", 16),
    )


def protected_initial(
    frames: bytes,
    *,
    version: int,
    dcid: bytes,
    scid: bytes = b"",
    token: bytes = b"",
    packet_number: int = 0,
    pn_len: int = 2,
    pad_to: int = 1200,
    key_dcid: bytes | None = None,
) -> bytes:
    """One protected client Initial packet (RFC 9000 17.2.2 layout, RFC 9001 5 protection)."""
    key, iv, hp = client_keys(version, key_dcid or dcid)
    type_bits = 0b01 if version == 0x6B3343CF else 0b00
    first = 0xC0 | type_bits << 4 | (pn_len - 1)
    head = bytes([first]) + version.to_bytes(4, "big")
    head += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    head += quic_varint(len(token)) + token
    payload = frames + bytes(max(0, 20 - pn_len - len(frames)))
    missing = pad_to - (len(head) + 2 + pn_len + len(payload) + 16)
    if missing > 0:
        payload += bytes(missing)
    length = pn_len + len(payload) + 16
    header = head + (length | 0x4000).to_bytes(2, "big")
    pn_bytes = (packet_number & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    header += pn_bytes
    nonce = (int.from_bytes(iv, "big") ^ packet_number).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, header)
    pn_offset = len(header) - pn_len
    sample = sealed[4 - pn_len : 20 - pn_len]
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_offset + i] ^= mask[1 + i]
    return bytes(out)


def ietf_crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + quic_varint(offset) + quic_varint(len(data)) + data


def gquic_crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x08" + quic_varint(offset) + quic_varint(len(data)) + data


def split_frames(
    hello: bytes, *, gquic: bool, per_packet: int = 1100, pieces: int = 1, seed: int = 0
) -> list[bytes]:
    """The handshake message as CRYPTO frames, ``pieces`` fragments shuffled (with PING and
    PADDING between them), grouped into packet payloads of at most ~``per_packet`` bytes."""
    rng = random.Random(seed)
    frame = gquic_crypto_frame if gquic else ietf_crypto_frame
    ping = b"\x07" if gquic else b"\x01"
    cuts = [0]
    step = max(1, min(per_packet - 20, -(-len(hello) // pieces)))
    while cuts[-1] + step < len(hello):
        cuts.append(cuts[-1] + step)
    bounds = [*cuts, len(hello)]
    frags = [(a, hello[a:b]) for a, b in itertools.pairwise(bounds)]
    if pieces > 1:
        rng.shuffle(frags)
    payloads: list[bytearray] = [bytearray()]
    for offset, data in frags:
        piece = frame(offset, data)
        if payloads[-1] and len(payloads[-1]) + len(piece) > per_packet:
            payloads.append(bytearray())
        if pieces > 1 and rng.random() < 0.5:
            payloads[-1] += ping
        if pieces > 1 and rng.random() < 0.5:
            payloads[-1] += bytes(rng.randrange(1, 6))
        payloads[-1] += piece
    return [bytes(p) for p in payloads]


def encrypted_flight(
    hello: bytes,
    version: int,
    *,
    dcid: bytes = bytes.fromhex("8394c8f03e515708"),
    scid: bytes = b"",
    pieces: int = 1,
    seed: int = 0,
    first_pn: int = 0,
) -> list[bytes]:
    """A client's first flight, one Initial per datagram, for an encrypted version."""
    gquic = version in (Q050, T050, T051)
    return [
        protected_initial(p, version=version, dcid=dcid, scid=scid, packet_number=first_pn + i)
        for i, p in enumerate(split_frames(hello, gquic=gquic, pieces=pieces, seed=seed))
    ]


# --- gQUIC CHLO ---------------------------------------------------------------------------------


def chlo_message(sni: str | None, *, pad_to: int = 0, extra: int = 0) -> bytes:
    """A CHLO handshake message: tags sorted by value, end offsets, values.

    ``extra`` adds a tag (XLCT-like filler) of that many bytes, to make the CHLO span packets;
    ``pad_to`` pads with a PAD tag as Chrome does to fill the packet.
    """
    tags: dict[bytes, bytes] = {
        b"VER\x00": b"Q043",
        b"PDMD": b"X509",
        b"CCS\x00": bytes(16),
        b"UAID": b"Chrome/90.0.4430.210 Android 11",
        b"ICSL": struct.pack("<I", 30),
    }
    if sni is not None:
        tags[b"SNI\x00"] = sni.encode()
    if extra:
        tags[b"XTRA"] = bytes(range(256)) * (extra // 256) + bytes(extra % 256)
    if pad_to:
        base = 8 + 8 * (len(tags) + 1) + sum(map(len, tags.values()))
        tags[b"PAD\x00"] = b"-" * max(0, pad_to - base)
    ordered = sorted(tags.items(), key=lambda kv: int.from_bytes(kv[0], "little"))
    out = b"CHLO" + struct.pack("<HH", len(ordered), 0)
    end = 0
    for tag, value in ordered:
        end += len(value)
        out += tag + struct.pack("<I", end)
    return out + b"".join(v for _, v in ordered)


def stream_frames(
    chlo: bytes, per_packet: int = 1300, byteorder: str = "big", start: int = 0
) -> list[bytes]:
    """STREAM frames on stream 1 (type 1 0 1 OOO 00: data length, 2-byte offset when not 0),
    one per packet; fields little-endian before Q039. ``start``: the stream offset of the
    CHLO (a later CHLO follows an earlier one on the stream)."""
    order = "little" if byteorder == "little" else "big"
    out = []
    offset = 0
    while offset < len(chlo):
        data = chlo[offset : offset + per_packet]
        at = start + offset
        head = bytes([160, 1]) if at == 0 else bytes([164, 1]) + at.to_bytes(2, order)
        out.append(head + len(data).to_bytes(2, order) + data)
        offset += len(data)
    return out


def gquic_cleartext_flight(
    sni: str | None,
    version: int,
    *,
    cid: bytes = bytes.fromhex("c0ffee0123456789"),
    extra: int = 0,
    first_pn: int = 1,
    flags: int = 0x09,
    start: int = 0,
) -> list[bytes]:
    """Client packets carrying a CHLO: Q046 (long header) or Q024-Q043 (public header with
    ``flags``; frame fields little-endian before Q039, a private-flags byte before Q034)."""
    chlo = chlo_message(sni, pad_to=0 if extra else 1000, extra=extra)
    tag = version.to_bytes(4, "big")
    order = "little" if tag < b"Q039" else "big"
    out = []
    for i, frames in enumerate(stream_frames(chlo, byteorder=order, start=start)):
        pn = first_pn + i
        if version == Q046:
            head = bytes([0xC3]) + tag + b"\x50" + cid + pn.to_bytes(4, "big")
        else:
            head = bytes([flags]) + cid + tag + pn.to_bytes(1, "big")
        private = b"\x00" if tag < b"Q034" else b""
        body = frames + bytes(max(0, 1350 - len(head) - 12 - len(private) - len(frames)))
        out.append(head + bytes(12) + private + body)
    return out


def flight(
    version: int,
    sni: str | None,
    *,
    hello: bytes | None = None,
    pieces: int = 1,
    seed: int = 0,
    dcid: bytes = bytes.fromhex("8394c8f03e515708"),
) -> list[bytes]:
    """A first flight for any version: gQUIC cleartext, Q050 (CHLO) or TLS-carrying ones.

    ``hello`` is the TLS ClientHello message for the TLS versions (built from ``sni`` when not
    given)."""
    if version in (Q043, Q046):
        return gquic_cleartext_flight(sni, version, cid=dcid)
    if version == Q050:
        return encrypted_flight(chlo_message(sni, pad_to=1000), version, dcid=dcid)
    if hello is None:
        from tests.builders import client_hello_message

        hello = client_hello_message(sni, alpn=("h3",))
    return encrypted_flight(hello, version, dcid=dcid, pieces=pieces, seed=seed)


def datagrams_sizes(datagrams: Sequence[bytes]) -> list[int]:
    return [len(d) for d in datagrams]
