"""QUIC client Initial decoding, on RFC 9001 test vectors and real Initials from aioquic."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sensor.decode.quic as quic
from sensor.decode.quic import (
    PACKET_HANDSHAKE,
    PACKET_INITIAL,
    VERSION_1,
    VERSION_2,
    InitialPayload,
    QuicInitialTracker,
    decode_packet_number,
    decrypt_initial,
    initial_keys,
    is_quic_long_header,
    parse_initial_frames,
    parse_long_header,
    read_varint,
)
from sensor.model import ClientHello, Weird
from tests.builders import (
    client_hello_message,
    quic_chaos_datagrams,
    quic_crypto_frame,
    quic_initial_datagrams,
    quic_initial_packet,
    quic_varint,
    synthetic_client_hello,
)
from tests.decode.hellos import bare

VERSIONS = [VERSION_1, VERSION_2]
RFC_DCID = bytes.fromhex("8394c8f03e515708")

# RFC 9001 A.2: the client Initial's unprotected header and payload (CRYPTO frame + padding).
RFC_A2_HEADER = bytes.fromhex("c300000001088394c8f03e5157080000449e00000002")
RFC_A2_PAYLOAD = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
) + bytes(917)


def rfc_a2_packet() -> bytes:
    """The RFC 9001 A.2 protected client Initial, re-made with aioquic's packet protection."""
    from aioquic.quic.crypto import CryptoPair

    pair = CryptoPair()
    pair.setup_initial(cid=RFC_DCID, is_client=True, version=VERSION_1)
    return pair.encrypt_packet(RFC_A2_HEADER, RFC_A2_PAYLOAD, 2)


def feed_all(
    tracker: QuicInitialTracker, datagrams: list[bytes], key: object = "flow"
) -> list[ClientHello | Weird | None]:
    return [tracker.feed(d, key) for d in datagrams]


def only_result(results: list[ClientHello | Weird | None]) -> ClientHello | Weird:
    decided = [r for r in results if r is not None]
    assert len(decided) == 1, results
    return decided[0]


def count_derivations(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every key derivation the tracker does (by DCID)."""
    calls: list[bytes] = []
    real: Callable[[bytes, int, bytes | None], quic.InitialKeys | None] = quic.initial_keys

    def spy(dcid: bytes, version: int, salt: bytes | None = None) -> quic.InitialKeys | None:
        calls.append(dcid)
        return real(dcid, version, salt)

    monkeypatch.setattr(quic, "initial_keys", spy)
    return calls


# --- keys and packet protection: RFC vectors ---------------------------------------------------


def test_rfc9001_initial_keys() -> None:
    keys = initial_keys(RFC_DCID, VERSION_1)
    assert keys is not None
    assert keys.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert keys.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert keys.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


def test_rfc9369_initial_keys() -> None:
    keys = initial_keys(RFC_DCID, VERSION_2)
    assert keys is not None
    assert keys.key.hex() == "8b1a0bc121284290a29e0971b5cd045d"
    assert keys.iv.hex() == "91f73e2351d8fa91660e909f"
    assert keys.hp.hex() == "45b95e15235d6f45a6b19cbcb0294ba9"


def test_unknown_version_has_no_keys() -> None:
    assert initial_keys(RFC_DCID, 0xFF000015) is None  # draft-21: not decoded
    assert initial_keys(RFC_DCID, 0x51303436) is None  # Q046: cleartext, no keys


def test_rfc9001_client_initial() -> None:
    packet = rfc_a2_packet()
    # The protected bytes RFC 9001 A.2 prints: header, first sample block, and the tag.
    assert packet.startswith(
        bytes.fromhex("c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11")
    )
    assert packet.endswith(bytes.fromhex("e221af44860018ab0856972e194cd934"))
    assert len(packet) == 1200

    header = parse_long_header(packet)
    assert not isinstance(header, Weird)
    assert header.packet_type == PACKET_INITIAL
    assert header.dcid == RFC_DCID
    assert header.pn_offset == 18
    assert header.end == 1200
    keys = initial_keys(header.dcid, header.version)
    assert keys is not None
    decrypted = decrypt_initial(packet, header, keys)
    assert decrypted == (2, RFC_A2_PAYLOAD)

    result = QuicInitialTracker().feed(packet, "rfc")
    assert bare(result) == ClientHello(
        sni="example.com", legacy_version=0x0303, supported_versions=(0x0304,), alpn=("alpn",)
    )


def test_rfc9000_varints_and_packet_numbers() -> None:
    # RFC 9000 A.1 examples.
    assert read_varint(bytes.fromhex("c2197c5eff14e88c"), 0) == (151288809941952652, 8)
    assert read_varint(bytes.fromhex("9d7f3e7d"), 0) == (494878333, 4)
    assert read_varint(bytes.fromhex("7bbd"), 0) == (15293, 2)
    assert read_varint(bytes.fromhex("25"), 0) == (37, 1)
    assert read_varint(bytes.fromhex("4025"), 0) == (37, 2)
    assert read_varint(bytes.fromhex("9d7f3e"), 0) is None
    assert read_varint(b"", 0) is None
    for value in (0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**62 - 1):
        assert read_varint(quic_varint(value), 0) == (value, len(quic_varint(value)))
    # RFC 9000 A.3 example, and the first packets of a connection.
    assert decode_packet_number(0x9B32, 16, 0xA82F30EA) == 0xA82F9B32
    assert decode_packet_number(0, 8, -1) == 0
    assert decode_packet_number(5, 16, -1) == 5
    assert decode_packet_number(0x02, 8, 0x1FE) == 0x202


# --- real Initials from aioquic ----------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_aioquic_single_datagram(version: int) -> None:
    datagrams = quic_initial_datagrams("quic.example", version)
    assert len(datagrams) == 1
    assert is_quic_long_header(datagrams[0])
    result = QuicInitialTracker().feed(datagrams[0], ("192.0.2.9", 50000, "192.0.2.1", 443))
    assert bare(result) == ClientHello(
        sni="quic.example", legacy_version=0x0303, supported_versions=(0x0304,), alpn=("h3",)
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_aioquic_without_sni(version: int) -> None:
    datagrams = quic_initial_datagrams(None, version)
    result = only_result(feed_all(QuicInitialTracker(), datagrams))
    assert isinstance(result, ClientHello)
    assert result.sni is None


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("reverse", [False, True])
def test_aioquic_hello_over_two_datagrams(version: int, reverse: bool) -> None:
    datagrams = quic_initial_datagrams("big.example", version, big=True, alpn=["h3", "h3-29"])
    assert len(datagrams) >= 2
    if reverse:
        datagrams.reverse()
    tracker = QuicInitialTracker()
    results = feed_all(tracker, datagrams)
    assert results[:-1] == [None] * (len(datagrams) - 1)
    assert bare(results[-1]) == ClientHello(
        sni="big.example",
        legacy_version=0x0303,
        supported_versions=(0x0304,),
        alpn=("h3", "h3-29"),
    )


def test_interleaved_flows() -> None:
    flows = {
        key: quic_initial_datagrams(f"{key}.example", version, big=True)
        for key, version in (("a", VERSION_1), ("b", VERSION_2), ("c", VERSION_1))
    }
    tracker = QuicInitialTracker()
    order = [(key, d) for key, ds in flows.items() for d in reversed(ds)]
    random.Random(7).shuffle(order)
    found = {}
    for key, datagram in order:
        result = tracker.feed(datagram, key)
        if result is not None:
            assert isinstance(result, ClientHello)
            found[key] = result.sni
    assert found == {"a": "a.example", "b": "b.example", "c": "c.example"}
    assert tracker.buffered_bytes == 0


def test_keys_derived_once_per_dcid(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_derivations(monkeypatch)
    datagrams = quic_initial_datagrams("once.example", VERSION_1, big=True)
    tracker = QuicInitialTracker()
    # Retransmit the second datagram before the first arrives.
    results = feed_all(tracker, [datagrams[1], datagrams[1], datagrams[0], datagrams[0]])
    assert isinstance(results[2], ClientHello)
    assert len(calls) == 1
    # A new flow reusing the DCID (a NAT rebinding) reuses the cached keys.
    assert tracker.feed(datagrams[1], "other") is None
    assert isinstance(tracker.feed(datagrams[0], "other"), ClientHello)
    assert len(calls) == 1


def test_result_is_returned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_derivations(monkeypatch)
    datagram = quic_initial_datagrams("once.example")[0]
    tracker = QuicInitialTracker()
    assert isinstance(tracker.feed(datagram, "k"), ClientHello)
    assert tracker.feed(datagram, "k") is None  # tombstone: no decryption at all
    assert len(tracker) == 1
    assert len(calls) == 1


# --- crafted Initials: chaos protection, coalescing, tokens, DCID changes ----------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("seed", range(4))
def test_chaos_protected_crypto_frames(version: int, seed: int) -> None:
    hello = client_hello_message("chaos.example", alpn=["h3"])
    datagrams = quic_chaos_datagrams(hello, version=version, fragments=14, packets=3, seed=seed)
    random.Random(seed).shuffle(datagrams)
    result = only_result(feed_all(QuicInitialTracker(), datagrams))
    assert isinstance(result, ClientHello)
    assert result.sni == "chaos.example"
    assert result.alpn == ("h3",)


def test_overlapping_crypto_frames() -> None:
    hello = client_hello_message("overlap.example")
    dcid = b"\x11" * 8
    frames = [
        quic_crypto_frame(100, hello[100:300]),
        quic_crypto_frame(250, hello[250:]),
        quic_crypto_frame(0, hello[:150]),
    ]
    packets = [quic_initial_packet(f, dcid=dcid, packet_number=i) for i, f in enumerate(frames)]
    result = only_result(feed_all(QuicInitialTracker(), packets))
    assert isinstance(result, ClientHello)
    assert result.sni == "overlap.example"


@pytest.mark.parametrize("version", VERSIONS)
def test_coalesced_packets(version: int) -> None:
    hello = client_hello_message("coalesced.example")
    dcid = b"\x22" * 8
    first = quic_initial_packet(quic_crypto_frame(0, hello[:200]), dcid=dcid, version=version)
    second = quic_initial_packet(
        quic_crypto_frame(200, hello[200:]), dcid=dcid, version=version, packet_number=1
    )
    # A Handshake packet (not ours to read) between them, zero padding after them.
    handshake_type = 0b11 if version == VERSION_2 else 0b10
    body = bytes(40)
    handshake = (
        bytes([0xC0 | handshake_type << 4 | 1])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + b"\x00"
        + quic_varint(len(body))
        + body
    )
    parsed = parse_long_header(handshake)
    assert not isinstance(parsed, Weird)
    assert parsed.packet_type == PACKET_HANDSHAKE
    datagram = first + handshake + second + bytes(100)
    assert QuicInitialTracker().feed(datagram, "k") == parse_client_hello_message(hello)
    # The Handshake packet first, then the Initials.
    datagram = handshake + first + second
    assert QuicInitialTracker().feed(datagram, "k") == parse_client_hello_message(hello)


def parse_client_hello_message(msg: bytes) -> ClientHello | Weird:
    from sensor.decode.tls import parse_client_hello

    return parse_client_hello(msg, quic=True)


def test_token_and_scid() -> None:
    hello = client_hello_message("token.example")
    packet = quic_initial_packet(
        quic_crypto_frame(0, hello),
        dcid=b"\x33" * 20,
        scid=b"\x44" * 5,
        token=b"retry-token" * 10,
        pn_len=4,
        packet_number=7,
        pad_to=1200,
    )
    header = parse_long_header(packet)
    assert not isinstance(header, Weird)
    assert header.token == b"retry-token" * 10
    assert header.scid == b"\x44" * 5
    result = QuicInitialTracker().feed(packet, "k")
    assert isinstance(result, ClientHello)
    assert result.sni == "token.example"


def test_ack_ping_and_close_frames() -> None:
    ack = b"\x02" + quic_varint(5) + quic_varint(100) + quic_varint(2) + quic_varint(1)
    ack += quic_varint(0) + quic_varint(1) + quic_varint(2) + quic_varint(0)
    ack_ecn = b"\x03\x01\x00\x00\x01" + quic_varint(1) + quic_varint(2) + quic_varint(300)
    crypto = quic_crypto_frame(10, b"hello")
    payload = parse_initial_frames(b"\x00\x00\x01" + ack + crypto + ack_ecn + b"\x00" * 50)
    assert payload == InitialPayload(crypto=((10, b"hello"),), closed=False)

    close = b"\x1c" + quic_varint(0x0A) + quic_varint(0x06) + quic_varint(3) + b"bye"
    assert parse_initial_frames(close) == InitialPayload(crypto=(), closed=True)
    app_close = b"\x1d" + quic_varint(0) + quic_varint(0)
    assert parse_initial_frames(app_close) == InitialPayload(crypto=(), closed=True)
    assert parse_initial_frames(b"") == InitialPayload(crypto=(), closed=False)


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (b"\x08\x00\x00", "quic.unknown_frame"),  # STREAM: not allowed in Initial
        (b"\x1e", "quic.unknown_frame"),  # HANDSHAKE_DONE
        (b"\x40\x06", "quic.unknown_frame"),  # a two-byte frame type
        (b"\x06\x00\x10abc", "quic.bad_frame"),  # CRYPTO longer than the packet
        (b"\x06\x40", "quic.bad_frame"),  # truncated varint
        (b"\x02\x01\x00\x05\x00", "quic.bad_frame"),  # ACK promising 5 ranges
        (b"\x03\x01\x00\x00\x00\x00\x00", "quic.bad_frame"),  # ACK_ECN missing a count
        (b"\x1c\x00\x00\x05ab", "quic.bad_frame"),  # reason phrase past the end
    ],
)
def test_malformed_frames(frames: bytes, reason: str) -> None:
    assert parse_initial_frames(frames) == Weird(reason)


def test_unknown_frame_in_a_packet() -> None:
    # The tracker reports it and forgets the flow.
    dcid = b"\x55" * 8
    tracker = QuicInitialTracker()
    packet = quic_initial_packet(b"\x01\x08\x00\x00", dcid=dcid)
    assert tracker.feed(packet, "k") == Weird("quic.unknown_frame")
    hello = quic_initial_packet(quic_crypto_frame(0, client_hello_message()), dcid=dcid)
    assert tracker.feed(hello, "k") is None


def test_connection_close_forgets_the_flow() -> None:
    dcid = b"\x66" * 8
    hello = client_hello_message("closed.example")
    close = b"\x1c" + quic_varint(0x0A) + quic_varint(0) + quic_varint(0)
    tracker = QuicInitialTracker()
    packet = quic_initial_packet(quic_crypto_frame(0, hello[:100]), dcid=dcid)
    closing = quic_initial_packet(close, dcid=dcid, packet_number=1)
    assert feed_all(tracker, [packet, closing]) == [None, None]
    rest = quic_initial_packet(quic_crypto_frame(100, hello[100:]), dcid=dcid, packet_number=2)
    assert tracker.feed(rest, "flow") is None
    assert tracker.buffered_bytes == 0


def test_client_adopts_server_dcid() -> None:
    # After the server's first Initial the client uses the server's CID as DCID, but keeps
    # the keys from its original DCID (RFC 9001 5.2).
    hello = client_hello_message("adopt.example")
    original, server_cid = b"\x77" * 8, b"\x88" * 8
    first = quic_initial_packet(quic_crypto_frame(0, hello[:300]), dcid=original)
    second = quic_initial_packet(
        quic_crypto_frame(300, hello[300:]), dcid=server_cid, key_dcid=original, packet_number=1
    )
    assert only_result(feed_all(QuicInitialTracker(), [first, second])) == (
        parse_client_hello_message(hello)
    )


def test_new_dcid_with_new_keys_restarts() -> None:
    # After a Retry the client starts over with a new DCID and new keys.
    old_hello = client_hello_message("before.example")
    new_hello = client_hello_message("after.example")
    tracker = QuicInitialTracker()
    partial = quic_initial_packet(quic_crypto_frame(0, old_hello[:200]), dcid=b"\x01" * 8)
    retried = quic_initial_packet(quic_crypto_frame(0, new_hello), dcid=b"\x02" * 8)
    results = feed_all(tracker, [partial, retried])
    assert results[0] is None
    assert isinstance(results[1], ClientHello)
    assert results[1].sni == "after.example"


def test_not_a_client_hello() -> None:
    packet = quic_initial_packet(quic_crypto_frame(0, b"\x02\x00\x00\x10" + bytes(16)), dcid=b"x")
    assert QuicInitialTracker().feed(packet, "k") == Weird("quic.not_client_hello")


def test_malformed_client_hello_inside() -> None:
    bad = synthetic_client_hello(extra_extensions=[(21, b""), (21, b"")])
    packet = quic_initial_packet(quic_crypto_frame(0, bad), dcid=b"\x09" * 8)
    assert QuicInitialTracker().feed(packet, "k") == Weird("tls.duplicate_extension")


# --- bounds ------------------------------------------------------------------------------------


def test_crypto_bytes_bound() -> None:
    datagrams = quic_initial_datagrams("bound.example", big=True)
    tracker = QuicInitialTracker(max_crypto_bytes=1000)
    results = feed_all(tracker, list(reversed(datagrams)))
    assert Weird("quic.crypto_overflow") in results
    assert tracker.buffered_bytes == 0


def test_crypto_fragment_count_bound() -> None:
    dcid = b"\x0a" * 8
    frames = b"".join(quic_crypto_frame(10 + 2 * i, b"x") for i in range(300))
    packet = quic_initial_packet(frames, dcid=dcid)
    assert QuicInitialTracker().feed(packet, "k") == Weird("quic.crypto_overflow")


def test_lru_eviction() -> None:
    tracker = QuicInitialTracker(max_connections=2)
    flows = {k: quic_initial_datagrams(f"{k}.example", big=True) for k in ("a", "b", "c")}
    for key in ("a", "b", "c"):
        assert tracker.feed(flows[key][1], key) is None  # second halves only
    assert len(tracker) == 2
    assert tracker.evictions == 1
    # "a" was forgotten: its first half alone is not enough any more.
    assert tracker.feed(flows["a"][0], "a") is None
    result = tracker.feed(flows["c"][0], "c")
    assert isinstance(result, ClientHello)
    assert result.sni == "c.example"


def test_total_bytes_bound() -> None:
    tracker = QuicInitialTracker(max_total_bytes=1500)
    flows = {k: quic_initial_datagrams(f"{k}.example", big=True) for k in ("a", "b")}
    assert tracker.feed(flows["a"][0], "a") is None
    assert tracker.feed(flows["b"][0], "b") is None  # over 1500 bytes: "a" goes
    assert tracker.evictions == 1
    assert tracker.buffered_bytes <= 1500
    assert isinstance(tracker.feed(flows["b"][1], "b"), ClientHello)
    assert tracker.buffered_bytes == 0
    assert tracker.feed(flows["a"][1], "a") is None  # "a" lost its first half


# --- malformed datagrams -----------------------------------------------------------------------


def test_every_truncation_is_weird() -> None:
    datagram = quic_initial_datagrams("cut.example")[0]
    header = parse_long_header(datagram)
    assert not isinstance(header, Weird)
    assert header.end < len(datagram)  # aioquic pads the datagram after the packet
    assert isinstance(QuicInitialTracker().feed(datagram[: header.end], "k"), ClientHello)
    for cut in range(1, header.end):
        result = QuicInitialTracker().feed(datagram[:cut], "k")
        assert isinstance(result, Weird), cut
        assert result.reason in ("quic.truncated", "quic.unsupported_version"), (cut, result)


@pytest.mark.parametrize("version", VERSIONS)
def test_bad_tag(version: int) -> None:
    datagram = bytearray(quic_initial_datagrams("tag.example", version)[0])
    header = parse_long_header(bytes(datagram))
    assert not isinstance(header, Weird)
    datagram[header.end - 1] ^= 0x01
    assert QuicInitialTracker().feed(bytes(datagram), "k") == Weird("quic.decrypt_failed")


def test_changed_dcid_fails_to_decrypt() -> None:
    datagram = bytearray(quic_initial_datagrams("dcid.example")[0])
    datagram[6] ^= 0xFF  # first DCID byte: different keys
    assert QuicInitialTracker().feed(bytes(datagram), "k") == Weird("quic.decrypt_failed")


def test_v1_packet_labelled_v2_fails() -> None:
    datagram = bytearray(quic_initial_datagrams("label.example", VERSION_1)[0])
    datagram[1:5] = VERSION_2.to_bytes(4, "big")  # type bits now say 0-RTT; nothing to do
    assert QuicInitialTracker().feed(bytes(datagram), "k") is None
    datagram[0] = (datagram[0] & 0xCF) | 0x10  # v2 Initial bits: decrypts with the wrong salt
    assert QuicInitialTracker().feed(bytes(datagram), "k") == Weird("quic.decrypt_failed")


def test_header_errors() -> None:
    datagram = quic_initial_datagrams("hdr.example")[0]
    unknown = datagram[:1] + (0xFF000015).to_bytes(4, "big") + datagram[5:]  # draft-21
    assert QuicInitialTracker().feed(unknown, "k") == Weird("quic.unsupported_version")
    long_cid = datagram[:5] + b"\x15" + datagram[6:]
    assert QuicInitialTracker().feed(long_cid, "k") == Weird("quic.bad_header")
    assert QuicInitialTracker().feed(b"\xc0\x00\x00\x00\x01", "k") == Weird("quic.truncated")


def test_nothing_to_decode() -> None:
    tracker = QuicInitialTracker()
    assert tracker.feed(b"", "k") is None
    assert tracker.feed(b"\x40" + bytes(40), "k") is None  # short header
    assert len(tracker) == 0


def test_is_quic_long_header() -> None:
    assert is_quic_long_header(quic_initial_datagrams("x.example", VERSION_2)[0])
    assert not is_quic_long_header(b"\x40" + bytes(30))
    assert not is_quic_long_header(b"\xc0\xff\x00\x00\x15" + bytes(30))
    assert not is_quic_long_header(b"\xc0\x00\x00\x00\x01")


def test_random_long_header_datagrams_are_weird() -> None:
    rng = random.Random(1)
    tracker = QuicInitialTracker()
    for i in range(50):
        datagram = b"\xc3\x00\x00\x00\x01\x08" + rng.randbytes(1194)
        result = tracker.feed(datagram, i)
        assert isinstance(result, Weird)
    assert len(tracker) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    tracker = QuicInitialTracker(max_connections=4)
    for datagram in (data, b"\xc0\x00\x00\x00\x01" + data, b"\xd0\x6b\x33\x43\xcf" + data):
        result = tracker.feed(datagram, "k")
        assert result is None or isinstance(result, ClientHello | Weird)
    assert isinstance(parse_initial_frames(data), InitialPayload | Weird)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_datagrams_never_raise(data: st.DataObject) -> None:
    datagram = bytearray(quic_initial_datagrams("mut.example")[0])
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, 60))  # the header and the first payload bytes
        datagram[i] = data.draw(st.integers(0, 255))
    result = QuicInitialTracker().feed(bytes(datagram), "k")
    assert result is None or isinstance(result, ClientHello | Weird)
