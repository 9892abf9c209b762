"""Builders for real TLS and QUIC client bytes, made in memory (no sockets, no network).

- TLS ClientHellos come from Python's `ssl` module through a memory BIO.
- QUIC client Initial datagrams come from aioquic (a test dependency), or, for layouts aioquic
  does not produce (shuffled CRYPTO frames, coalesced packets, tokens), from
  `quic_initial_packet`, which protects packets with aioquic's own packet protection.
- TCP helpers cut a byte stream into (seq, payload) segments, with wraparound, reordering,
  duplicates and overlaps.

Shared by the decoder unit tests, the benchmarks and the capture tests; keep signatures stable.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import ssl
import warnings
from collections.abc import Iterable, Sequence

TLS_HANDSHAKE = 0x16
SEQ_MOD = 1 << 32


# --- TLS ---------------------------------------------------------------------------------------


def client_hello_bytes(
    sni: str | None = "example.com",
    *,
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    min_version: ssl.TLSVersion | None = None,
    alpn: Sequence[str] = (),
) -> bytes:
    """The bytes a Python/OpenSSL TLS client writes first: the ClientHello in TLS records.

    ``sni=None`` sends no server_name extension. ``max_version=TLSv1_2`` gives a hello without
    supported_versions. A long ``alpn`` list (e.g. ``big_alpn()``) makes the hello large, the
    way post-quantum key shares do. Nothing is sent anywhere: the handshake stops as soon as the
    client wants to read.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 on purpose
        ctx.maximum_version = max_version
        if min_version is not None:
            ctx.minimum_version = min_version
    if min_version is not None and min_version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def big_alpn(total: int = 2000) -> list[str]:
    """ALPN protocol names adding up to about ``total`` bytes (each name 200 bytes or less)."""
    names = []
    size = 0
    i = 0
    while size < total:
        name = f"proto-{i:03d}-" + "x" * 180
        names.append(name)
        size += len(name) + 1
        i += 1
    return names


def records_payload(stream: bytes) -> bytes:
    """The concatenated contents of the TLS records in ``stream`` (the handshake messages)."""
    out = bytearray()
    pos = 0
    while pos + 5 <= len(stream):
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        out += stream[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out)


def client_hello_message(
    sni: str | None = "example.com",
    *,
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    min_version: ssl.TLSVersion | None = None,
    alpn: Sequence[str] = (),
) -> bytes:
    """The bare ClientHello handshake message (type 1, length, body), without record headers.

    Same arguments as `client_hello_bytes`.
    """
    stream = client_hello_bytes(sni, max_version=max_version, min_version=min_version, alpn=alpn)
    return records_payload(stream)


def fragment_records(
    stream: bytes, sizes: int | Sequence[int], *, record_version: int = 0x0301
) -> bytes:
    """Rewrite the handshake bytes of ``stream`` into records of the given content sizes.

    ``sizes`` is one size for every record, or a sequence used in turn (the last repeats), so
    ``fragment_records(hello, 50)`` splits one ClientHello over many small records.
    """
    payload = records_payload(stream)
    seq = [sizes] if isinstance(sizes, int) else list(sizes)
    out = bytearray()
    pos = 0
    i = 0
    while pos < len(payload):
        size = seq[min(i, len(seq) - 1)]
        chunk = payload[pos : pos + size]
        out += bytes([TLS_HANDSHAKE]) + record_version.to_bytes(2, "big")
        out += len(chunk).to_bytes(2, "big") + chunk
        pos += size
        i += 1
    return bytes(out)


def tls_extension(ext_type: int, data: bytes) -> bytes:
    """One ClientHello extension: type, 2-byte length, data."""
    return ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def synthetic_client_hello(
    sni: str | None = "example.com",
    *,
    legacy_version: int = 0x0303,
    versions: Sequence[int] | None = (0x0304, 0x0303),
    alpn: Sequence[bytes] = (b"h2", b"http/1.1"),
    grease: bool = False,
    extra_extensions: Sequence[tuple[int, bytes]] = (),
    session_id: bytes = bytes(32),
) -> bytes:
    """A hand-built ClientHello handshake message, for cases a real client will not produce.

    ``grease=True`` adds GREASE values the way Chrome does: a GREASE cipher suite, a GREASE
    extension first and last, a GREASE version in supported_versions and a GREASE ALPN name.
    ``versions=None`` leaves out supported_versions, an empty ``alpn`` leaves out ALPN.
    ``extra_extensions`` are appended as given (duplicates and bad lengths included).
    """
    suites = ([0x1A1A] if grease else []) + [0x1301, 0x1302, 0xC02F]
    exts: list[bytes] = []
    if grease:
        exts.append(tls_extension(0x0A0A, b""))
    if sni is not None:
        name = sni.encode()
        entry = b"\x00" + len(name).to_bytes(2, "big") + name
        exts.append(tls_extension(0, len(entry).to_bytes(2, "big") + entry))
    if versions is not None:
        vs = ([0x7A7A] if grease else []) + list(versions)
        body = b"".join(v.to_bytes(2, "big") for v in vs)
        exts.append(tls_extension(43, bytes([len(body)]) + body))
    if alpn:
        names = ([b"\x5a\x5a"] if grease else []) + list(alpn)
        body = b"".join(bytes([len(n)]) + n for n in names)
        exts.append(tls_extension(16, len(body).to_bytes(2, "big") + body))
    exts += [tls_extension(t, d) for t, d in extra_extensions]
    if grease:
        exts.append(tls_extension(0xFAFA, b"\x00"))
    ext_block = b"".join(exts)
    body = legacy_version.to_bytes(2, "big") + bytes(range(32))
    body += bytes([len(session_id)]) + session_id
    body += (2 * len(suites)).to_bytes(2, "big") + b"".join(s.to_bytes(2, "big") for s in suites)
    body += b"\x01\x00"  # one compression method: null
    body += len(ext_block).to_bytes(2, "big") + ext_block
    return b"\x01" + len(body).to_bytes(3, "big") + body


def tls_record(
    message: bytes, *, content_type: int = TLS_HANDSHAKE, version: int = 0x0301
) -> bytes:
    """Wrap ``message`` in one TLS record (no size check)."""
    return (
        bytes([content_type])
        + version.to_bytes(2, "big")
        + len(message).to_bytes(2, "big")
        + message
    )


# --- TCP segments ------------------------------------------------------------------------------


def split_segments(
    data: bytes, size: int | Sequence[int] = 1460, start_seq: int = 1000
) -> list[tuple[int, bytes]]:
    """Cut ``data`` into in-order TCP segments ``(seq, payload)``; seq wraps modulo 2**32.

    ``size`` is one segment size, or a sequence of sizes used in turn (the last repeats).
    ``start_seq`` is the sequence number of the first payload byte (ISN + 1).
    """
    sizes = [size] if isinstance(size, int) else list(size)
    out: list[tuple[int, bytes]] = []
    pos = 0
    i = 0
    while pos < len(data):
        n = sizes[min(i, len(sizes) - 1)]
        out.append(((start_seq + pos) % SEQ_MOD, data[pos : pos + n]))
        pos += n
        i += 1
    return out


def shuffled(items: Iterable[tuple[int, bytes]], seed: int = 0) -> list[tuple[int, bytes]]:
    """The items in a reproducible random order."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def with_retransmits(
    segments: Sequence[tuple[int, bytes]], *, seed: int = 0, overlap: int = 7
) -> list[tuple[int, bytes]]:
    """Add copies of some segments, and segments overlapping two neighbours, then shuffle.

    ``segments`` must be in stream order, as `split_segments` returns them. The extra segments
    carry the same bytes as the originals, as real retransmits do.
    """
    rng = random.Random(seed)
    out = list(segments)
    out += [segments[rng.randrange(len(segments))] for _ in range(max(1, len(segments) // 3))]
    for (seq_a, a), (_, b) in itertools.pairwise(segments):
        if rng.random() < 0.3:
            k = min(overlap, len(a))
            out.append(((seq_a + len(a) - k) % SEQ_MOD, a[-k:] + b[:overlap]))
    rng.shuffle(out)
    return out


# --- QUIC --------------------------------------------------------------------------------------


def quic_initial_datagrams(
    sni: str | None = "example.com",
    version: int = 0x00000001,
    big: bool = False,
    *,
    alpn: Sequence[str] = ("h3",),
) -> list[bytes]:
    """The client's first flight from aioquic: one datagram per Initial packet.

    ``version`` is 0x00000001 (v1) or 0x6B3343CF (v2). ``big=True`` adds a 1200-byte transport
    parameter (aioquic's ``quantum_readiness_test``), so the ClientHello spans two Initial
    packets in two datagrams, as post-quantum key shares do in browsers.
    """
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    config = QuicConfiguration(
        is_client=True,
        server_name=sni,
        supported_versions=[version],
        alpn_protocols=list(alpn),
        quantum_readiness_test=big,
    )
    conn = QuicConnection(configuration=config)
    conn.connect(("192.0.2.1", 443), now=0.0)
    return [data for data, _ in conn.datagrams_to_send(now=0.0)]


def quic_crypto_frame(offset: int, data: bytes) -> bytes:
    """A CRYPTO frame carrying ``data`` at stream ``offset``."""
    return b"\x06" + quic_varint(offset) + quic_varint(len(data)) + data


def quic_varint(value: int) -> bytes:
    """RFC 9000 16 variable-length integer, shortest encoding."""
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def quic_initial_packet(
    frames: bytes,
    *,
    dcid: bytes,
    version: int = 0x00000001,
    packet_number: int = 0,
    scid: bytes = b"",
    token: bytes = b"",
    pn_len: int = 2,
    key_dcid: bytes | None = None,
    pad_to: int = 0,
) -> bytes:
    """One protected client Initial packet around raw ``frames`` (aioquic does the crypto).

    Keys come from ``key_dcid`` (default ``dcid``), so a test can imitate a client that adopted
    the server's connection ID. The payload is padded with PADDING frames so the packet is at
    least ``pad_to`` bytes and long enough for the header-protection sample.
    """
    from aioquic.quic.crypto import CryptoPair

    initial_bits = 0b01 if version == 0x6B3343CF else 0b00
    first = 0xC0 | initial_bits << 4 | (pn_len - 1)
    head = bytes([first]) + version.to_bytes(4, "big")
    head += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    head += quic_varint(len(token)) + token
    # Room for the sample: pn + payload must reach 4 + 16 bytes past the pn offset.
    payload = frames + b"\x00" * max(0, 20 - pn_len - len(frames))
    length_field = 2  # always a 2-byte Length varint below
    missing = pad_to - (len(head) + length_field + pn_len + len(payload) + 16)
    if missing > 0:
        payload += b"\x00" * missing
    length = pn_len + len(payload) + 16
    plain_header = head + (length | 0x4000).to_bytes(2, "big")
    plain_header += (packet_number & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    pair = CryptoPair()
    pair.setup_initial(cid=key_dcid or dcid, is_client=True, version=version)
    return pair.encrypt_packet(plain_header, payload, packet_number)


def quic_chaos_datagrams(
    client_hello: bytes,
    *,
    dcid: bytes = bytes.fromhex("0123456789abcdef"),
    version: int = 0x00000001,
    fragments: int = 12,
    packets: int = 2,
    seed: int = 0,
) -> list[bytes]:
    """Client Initials carrying ``client_hello`` like Chrome's chaos protection does.

    The CRYPTO stream is cut into ``fragments`` pieces at random offsets; the pieces are
    shuffled, mixed with PING and PADDING frames and spread over ``packets`` Initial packets,
    one per 1200-byte datagram. ``client_hello`` is a bare handshake message (see
    `client_hello_message`).
    """
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(client_hello)), fragments - 1))
    bounds = [0, *cuts, len(client_hello)]
    pieces = [(a, client_hello[a:b]) for a, b in itertools.pairwise(bounds)]
    rng.shuffle(pieces)
    per_packet = [pieces[i::packets] for i in range(packets)]
    out = []
    for pn, group in enumerate(per_packet):
        frames = bytearray()
        for offset, data in group:
            if rng.random() < 0.5:
                frames += b"\x01"  # PING
            if rng.random() < 0.5:
                frames += b"\x00" * rng.randrange(1, 8)  # PADDING
            frames += quic_crypto_frame(offset, data)
        out.append(
            quic_initial_packet(
                bytes(frames), dcid=dcid, version=version, packet_number=pn, pad_to=1200
            )
        )
    return out


# --- Encrypted Client Hello --------------------------------------------------------------------

ECH_EXTENSION = 0xFE0D


def ech_extension_data(
    *, config_id: int = 0x2A, enc: bytes = bytes(range(32)), payload: bytes = bytes(208)
) -> bytes:
    """The body of an RFC 9849 5 ``encrypted_client_hello`` extension of the outer type:
    type 0 (outer), HpkeSymmetricCipherSuite (HKDF-SHA256 0x0001, AES-128-GCM 0x0001),
    config_id, enc<0..2^16-1> (an X25519 public key's 32 bytes) and payload<1..2^16-1> (the
    encrypted inner hello; its contents do not matter to an observer)."""
    body = b"\x00" + (1).to_bytes(2, "big") + (1).to_bytes(2, "big") + bytes([config_id])
    return body + len(enc).to_bytes(2, "big") + enc + len(payload).to_bytes(2, "big") + payload


def ech_client_hello(outer_sni: str | None = "cloudflare-ech.com", *, grease: bool = True) -> bytes:
    """A ClientHelloOuter handshake message the way a browser sends one with ECH (RFC 9849):
    the cover name in server_name, TLS 1.3 only, an X25519 key share, ALPN h2/http1.1, and
    the encrypted_client_hello extension (Debian 12 has no client that speaks ECH)."""
    groups = b"\x00\x1d\x00\x17\x00\x18"
    sigs = b"\x04\x03\x08\x04\x04\x01\x05\x03\x08\x05\x05\x01\x08\x06\x06\x01"
    key_share = b"\x00\x1d\x00\x20" + bytes(range(100, 132))
    extra = [
        (0x000A, len(groups).to_bytes(2, "big") + groups),  # supported_groups
        (0x000D, len(sigs).to_bytes(2, "big") + sigs),  # signature_algorithms
        (0x0033, (len(key_share)).to_bytes(2, "big") + key_share),  # key_share
        (0x002D, b"\x01\x01"),  # psk_key_exchange_modes: psk_dhe_ke
        (ECH_EXTENSION, ech_extension_data()),
    ]
    return synthetic_client_hello(
        outer_sni, versions=(0x0304,), grease=grease, extra_extensions=extra
    )
