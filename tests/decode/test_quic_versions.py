"""QUIC versions beyond v1/v2: IETF drafts, mvfst, gQUIC; Retry, version negotiation, 0-RTT.

Initials are built from each version's specification in tests.builders_quic (which holds its own
copy of the salts); tests/test_tshark_agreement.py checks the same builders against tshark for
the versions tshark decodes.
"""

from __future__ import annotations

import pytest

from sensor.decode.quic import (
    GQUIC_Q043,
    GQUIC_Q046,
    GQUIC_Q050,
    GQUIC_T050,
    GQUIC_T051,
    VERSION_1,
    VERSION_2,
    QuicInitialTracker,
    chlo_length,
    initial_keys,
    looks_like_quic,
    parse_chlo,
    parse_gquic_frames,
    version_name,
)
from sensor.model import ClientHello, Weird
from tests.builders import big_alpn, client_hello_message, quic_varint
from tests.builders_quic import (
    chlo_message,
    client_keys,
    encrypted_flight,
    flight,
    gquic_cleartext_flight,
    protected_initial,
)

DRAFTS = [0xFF000000 | d for d in range(22, 35)]
MVFST = [
    0xFACEB001,
    0xFACEB002,
    0xFACEB003,
    0xFACEB004,
    0xFACEB00E,
    0xFACEB010,
    0xFACEB011,
    0xFACEB013,
    0xFACEB014,
    0xFACEB015,
    0xFACEFEED,
]
TLS_VERSIONS = [VERSION_1, VERSION_2, *DRAFTS, *MVFST, GQUIC_T050, GQUIC_T051]
ALL = [*TLS_VERSIONS, GQUIC_Q043, GQUIC_Q046, GQUIC_Q050]


def decide(datagrams: list[bytes], tracker: QuicInitialTracker | None = None) -> object:
    if tracker is None:
        tracker = QuicInitialTracker()
    results = [tracker.feed(d, "flow") for d in datagrams]
    decided = [r for r in results if r is not None]
    assert len(decided) == 1, results
    return decided[0]


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=version_name)
def test_keys_match_the_specification(version: int) -> None:
    dcid = bytes.fromhex("8394c8f03e515708")
    keys = initial_keys(dcid, version)
    assert keys is not None
    assert (keys.key, keys.iv, keys.hp) == client_keys(version, dcid)


def test_draft29_keys_published() -> None:
    """draft-ietf-quic-tls-29 A.1 (the client keys for DCID 0x8394c8f03e515708)."""
    keys = initial_keys(bytes.fromhex("8394c8f03e515708"), 0xFF00001D)
    assert keys is not None
    assert keys.key.hex() == "175257a31eb09dea9366d8bb79ad80ba"
    assert keys.iv.hex() == "6b26114b9cba2b63a9e8dd4f"
    assert keys.hp.hex() == "9ddd12c994c0698b89374a9c077a3077"


@pytest.mark.parametrize("version", ALL, ids=version_name)
def test_every_version_is_named(version: int) -> None:
    tracker = QuicInitialTracker()
    datagrams = flight(version, "name.example.com")
    assert looks_like_quic(datagrams[0])
    result = decide(datagrams, tracker)
    assert isinstance(result, ClientHello)
    assert result.sni == "name.example.com"
    assert tracker.last_version == version


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=version_name)
@pytest.mark.parametrize("seed", [1, 2])
def test_scrambled_hello_over_datagrams(version: int, seed: int) -> None:
    """A hello bigger than a datagram, cut into shuffled fragments with PING and PADDING."""
    hello = client_hello_message("big.example.com", alpn=big_alpn(2500))
    datagrams = encrypted_flight(hello, version, pieces=9, seed=seed)
    assert len(datagrams) >= 3
    for order in (datagrams, datagrams[::-1]):
        result = decide(order)
        assert isinstance(result, ClientHello) and result.sni == "big.example.com"


def test_versions_are_named_as_users_read_them() -> None:
    assert version_name(GQUIC_Q046) == "Q046"
    assert version_name(GQUIC_T051) == "T051"
    assert version_name(0xFF00001D) == "0xff00001d"
    assert version_name(VERSION_1) == "0x00000001"
    assert version_name(0xFACEB002) == "0xfaceb002"


# --- gQUIC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [GQUIC_Q043, GQUIC_Q046])
def test_chlo_over_two_packets_either_order(version: int) -> None:
    datagrams = gquic_cleartext_flight("long.example.com", version, extra=1800)
    assert len(datagrams) == 2
    for order in (datagrams, datagrams[::-1]):
        result = decide(order)
        assert result == ClientHello(sni="long.example.com", legacy_version=0)


@pytest.mark.parametrize("tag", [b"Q024", b"Q030", b"Q035", b"Q039"])
def test_older_public_header_versions(tag: bytes) -> None:
    """Before Q039 frame fields are little-endian; before Q034 a private-flags byte follows the
    message hash. Flags 0x0d (the nonce bit, meaningless from a client) as Chrome sent them."""
    version = int.from_bytes(tag, "big")
    datagrams = gquic_cleartext_flight("old.example.com", version, extra=1800, flags=0x0D)
    assert looks_like_quic(datagrams[0])
    tracker = QuicInitialTracker()
    assert decide(datagrams[::-1], tracker) == ClientHello(sni="old.example.com", legacy_version=0)
    assert tracker.last_version == version


def test_later_chlo_when_the_first_was_missed() -> None:
    """A capture starting after the inchoate CHLO: the full one sits at stream offset 1024."""
    datagrams = gquic_cleartext_flight("late.example.com", GQUIC_Q046, start=1024)
    assert decide(datagrams) == ClientHello(sni="late.example.com", legacy_version=0)


def test_chlo_without_sni() -> None:
    result = decide(gquic_cleartext_flight(None, GQUIC_Q043))
    assert result == ClientHello(sni=None, legacy_version=0)


def test_malformed_chlo() -> None:
    good = chlo_message("x.example.com")
    assert chlo_length(good) == len(good)
    assert chlo_length(good[:7]) is None
    assert parse_chlo(b"REJ\x00" + good[4:]) == Weird("quic.not_client_hello")
    # An end offset running past the message.
    broken = bytearray(good)
    broken[12:16] = (10_000).to_bytes(4, "little")
    assert parse_chlo(bytes(broken)) == Weird("quic.bad_chlo")
    # A tag count larger than the message.
    assert parse_chlo(b"CHLO\xff\x00\x00\x00") == Weird("quic.bad_chlo")
    # A name that is not text.
    bad_name = chlo_message("x\x00y.example.com")
    assert parse_chlo(bad_name) == Weird("quic.bad_chlo")


def test_gquic_frames() -> None:
    assert parse_gquic_frames(b"\x07\x08\x00\x03abc\x00\x00").crypto == ((0, b"abc"),)  # type: ignore[union-attr]
    # STREAM frames on other streams are skipped; an ACK after the data ends the walk.
    frames = b"\xa0\x05\x00\x02zz" + b"\xa0\x01\x00\x02ok" + b"\x40\x01\x02"
    payload = parse_gquic_frames(frames)
    assert not isinstance(payload, Weird) and payload.crypto == ((0, b"ok"),)
    assert parse_gquic_frames(b"\x40\x01") == Weird("quic.unknown_frame")
    assert parse_gquic_frames(b"\xa0\x01\x00\x10ab") == Weird("quic.bad_frame")
    assert parse_gquic_frames(b"\x08\x00\x10ab") == Weird("quic.bad_frame")
    closed = parse_gquic_frames(b"\x02\x00\x00\x00\x00")
    assert not isinstance(closed, Weird) and closed.closed


def test_q050_chlo_in_crypto_frames_split() -> None:
    chlo = chlo_message("q50.example.com", extra=2000)
    datagrams = encrypted_flight(chlo, GQUIC_Q050, pieces=4, seed=3)
    assert len(datagrams) >= 2
    assert decide(datagrams[::-1]) == ClientHello(sni="q50.example.com", legacy_version=0)


# --- connection life: Retry, version negotiation, 0-RTT, coalescing -----------------------------


@pytest.mark.parametrize("version", [VERSION_1, 0xFF00001D, 0xFACEB002])
def test_retry_then_new_dcid(version: int) -> None:
    """The first attempt's second datagram is lost; after a Retry the client starts again
    under keys from the server's new connection ID."""
    hello = client_hello_message("retry.example.com", alpn=big_alpn(1500))
    first = encrypted_flight(hello, version, dcid=b"\x01" * 8)
    assert len(first) == 2
    second = encrypted_flight(hello, version, dcid=b"\x02" * 12, first_pn=2)
    tracker = QuicInitialTracker()
    assert tracker.feed(first[0], "k") is None
    assert tracker.in_progress("k")
    assert tracker.feed(second[0], "k") is None
    result = tracker.feed(second[1], "k")
    assert isinstance(result, ClientHello) and result.sni == "retry.example.com"


def test_version_negotiation_then_other_version() -> None:
    """A greased version forcing negotiation, then the real attempt in draft-29."""
    hello = client_hello_message("vn.example.com")
    forcing = bytearray(encrypted_flight(hello, VERSION_1)[0])
    forcing[1:5] = (0x1A2A3A4A).to_bytes(4, "big")
    assert looks_like_quic(bytes(forcing))
    tracker = QuicInitialTracker()
    assert tracker.feed(bytes(forcing), "k") is None
    assert tracker.last_version == 0x1A2A3A4A
    # A first attempt in v1 cut short, then the client falls back to draft-29.
    big = client_hello_message("vn.example.com", alpn=big_alpn(1500))
    assert tracker.feed(encrypted_flight(big, VERSION_1)[0], "k") is None
    result = decide(encrypted_flight(hello, 0xFF00001D, dcid=b"\x09" * 8), tracker)
    assert isinstance(result, ClientHello) and result.sni == "vn.example.com"
    assert tracker.last_version == 0xFF00001D


def test_readable_version_forcing_initial_is_named() -> None:
    """Interop-runner clients protect their version-forcing Initial like draft-29 (tshark reads
    it so too): when the AEAD tag verifies, its hello names the flow."""
    hello = client_hello_message("forcing.example.com")
    datagrams = encrypted_flight(hello, 0x5A6A7A8A, dcid=b"\x0a" * 8)
    tracker = QuicInitialTracker()
    result = decide(datagrams, tracker)
    assert isinstance(result, ClientHello) and result.sni == "forcing.example.com"
    assert tracker.last_version == 0x5A6A7A8A


def test_zero_rtt_and_coalesced_packets_do_not_confuse() -> None:
    """Initial + 0-RTT coalesced, then 0-RTT-only datagrams between the two Initials."""
    hello = client_hello_message("zrtt.example.com", alpn=big_alpn(1500))
    first, second = encrypted_flight(hello, 0xFF000022, dcid=b"\x03" * 8)
    zero_rtt = bytes([0xD1]) + (0xFF000022).to_bytes(4, "big") + b"\x08" + b"\x03" * 8 + b"\x00"
    zero_rtt += quic_varint(40) + bytes(40)
    tracker = QuicInitialTracker()
    assert tracker.feed(first[: len(first)] + zero_rtt, "k") is None
    assert tracker.feed(zero_rtt + zero_rtt, "k") is None
    result = tracker.feed(second, "k")
    assert isinstance(result, ClientHello) and result.sni == "zrtt.example.com"


def test_duplicated_and_overlapping_fragments_across_datagrams() -> None:
    hello = client_hello_message("dup.example.com")
    cut = len(hello) // 2
    frames_a = b"\x06" + quic_varint(0) + quic_varint(cut + 10) + hello[: cut + 10]
    frames_b = b"\x06" + quic_varint(cut - 20) + quic_varint(len(hello) - cut + 20)
    frames_b += hello[cut - 20 :]
    a = protected_initial(frames_a, version=0xFF00001B, dcid=b"\x04" * 8, packet_number=0)
    b = protected_initial(frames_b, version=0xFF00001B, dcid=b"\x04" * 8, packet_number=1)
    result = decide([b, b, a, a])
    assert isinstance(result, ClientHello) and result.sni == "dup.example.com"


def test_random_cid_flood_is_bounded() -> None:
    """Initials with fresh random DCIDs: keys cached and state bounded by max_connections."""
    import os

    tracker = QuicInitialTracker(max_connections=64)
    hello = client_hello_message("flood.example.com", alpn=big_alpn(1500))
    for i in range(300):
        first = encrypted_flight(hello, 0xFACEB002, dcid=os.urandom(8))[0]
        assert tracker.feed(first, i) is None
    assert len(tracker) <= 64
    assert len(tracker._keys) <= 64
    assert tracker.evictions >= 300 - 64


def test_short_headers_are_not_gquic() -> None:
    """IETF 1-RTT packets (fixed bit 0x40) whose low bits look like gQUIC's flags are nothing to
    decode, not Weirds: a flow whose Initials were missed must not be blamed on them."""
    tracker = QuicInitialTracker()
    for first in (0x49, 0x4D, 0x59, 0x7F):
        assert tracker.feed(bytes([first]) + bytes(range(60)), "k") is None
    # gQUIC-like flags but no "Q" version tag: nothing either.
    assert tracker.feed(b"\x09" + bytes(8) + b"X043" + bytes(40), "k") is None
    assert len(tracker) == 0
