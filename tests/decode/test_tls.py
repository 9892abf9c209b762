"""TLS ClientHello decoding and TCP reassembly, on real ClientHellos from Python's ssl module."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode.tls import ClientHelloAssembler, is_grease, looks_like_tls, parse_client_hello
from sensor.model import ClientHello, Weird
from tests.builders import (
    big_alpn,
    client_hello_bytes,
    client_hello_message,
    fragment_records,
    shuffled,
    split_segments,
    synthetic_client_hello,
    tls_extension,
    tls_record,
    with_retransmits,
)
from tests.decode.hellos import bare

TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


def feed_all(
    asm: ClientHelloAssembler, segments: list[tuple[int, bytes]]
) -> list[ClientHello | Weird | None]:
    return [asm.feed(seq, payload) for seq, payload in segments]


def only_result(results: list[ClientHello | Weird | None]) -> ClientHello | Weird:
    """The one non-None result; feeds after it must return None."""
    decided = [r for r in results if r is not None]
    assert len(decided) == 1, results
    return decided[0]


# --- parse_client_hello on real hellos ---------------------------------------------------------


@pytest.mark.parametrize("max_version", [TLS12, TLS13])
def test_real_hello_with_sni(max_version: ssl.TLSVersion) -> None:
    hello = parse_client_hello(
        client_hello_message("www.example.org", max_version=max_version, alpn=["h2", "http/1.1"])
    )
    assert isinstance(hello, ClientHello)
    assert hello.sni == "www.example.org"
    assert hello.legacy_version == 0x0303
    assert hello.alpn == ("h2", "http/1.1")
    if max_version == TLS13:
        assert 0x0304 in hello.supported_versions
    else:
        assert 0x0304 not in hello.supported_versions


@pytest.mark.parametrize("max_version", [TLS12, TLS13])
def test_real_hello_without_sni(max_version: ssl.TLSVersion) -> None:
    hello = parse_client_hello(client_hello_message(None, max_version=max_version))
    assert isinstance(hello, ClientHello)
    assert hello.sni is None
    assert hello.alpn == ()


def test_real_tls10_hello() -> None:
    v10 = ssl.TLSVersion.TLSv1
    hello = parse_client_hello(
        client_hello_message("old.example", max_version=v10, min_version=v10)
    )
    assert bare(hello) == ClientHello(sni="old.example", legacy_version=0x0301)


def test_sni_is_normalised() -> None:
    hello = parse_client_hello(synthetic_client_hello("WWW.Example.COM."))
    assert isinstance(hello, ClientHello)
    assert hello.sni == "www.example.com"


def test_grease_values_are_dropped() -> None:
    hello = parse_client_hello(synthetic_client_hello("g.example", grease=True))
    assert bare(hello) == ClientHello(
        sni="g.example",
        legacy_version=0x0303,
        supported_versions=(0x0304, 0x0303),
        alpn=("h2", "http/1.1"),
    )


def test_is_grease() -> None:
    assert all(is_grease(v * 0x1010 + 0x0A0A) for v in range(16))
    assert not any(is_grease(v) for v in (0x0303, 0x0304, 0x0A1A, 0x1301, 0x0000))


def test_hello_without_extensions() -> None:
    full = synthetic_client_hello(None, versions=None, alpn=())
    # Drop the (empty) extension block and fix the message length.
    body = full[4:-2]
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    assert bare(parse_client_hello(msg)) == ClientHello(sni=None, legacy_version=0x0303)


def test_trailing_message_is_ignored() -> None:
    msg = client_hello_message("a.example")
    assert parse_client_hello(msg + b"\x0b\x00\x00\x00") == parse_client_hello(msg)


# --- parse_client_hello on malformed input -----------------------------------------------------


def test_every_truncation_is_weird() -> None:
    msg = client_hello_message("truncated.example", alpn=["h2"])
    for cut in range(len(msg)):
        assert parse_client_hello(msg[:cut]) == Weird("tls.truncated"), cut


def test_not_a_client_hello() -> None:
    msg = bytearray(client_hello_message("x.example"))
    msg[0] = 2  # ServerHello
    assert parse_client_hello(bytes(msg)) == Weird("tls.not_client_hello")


def _with_body(msg: bytes, body: bytes) -> bytes:
    return msg[:1] + len(body).to_bytes(3, "big") + body


@pytest.mark.parametrize(
    ("extensions", "reason"),
    [
        ([(0, b"\x00\x04\x00\x00\x02ab")], "tls.bad_sni"),  # list length wrong
        ([(0, b"\x00\x05\x00\x00\x04ab")], "tls.bad_sni"),  # name runs past the list
        ([(0, b"\x00\x03\x00\x00\x00")], "tls.bad_sni"),  # empty name
        ([(0, b"\x00\x05\x00\x00\x02\xc3\xa9")], "tls.bad_sni"),  # not ASCII
        ([(16, b"\x00\x03\x00ab")], "tls.bad_alpn"),  # empty protocol name
        ([(16, b"\x00\x00")], "tls.bad_alpn"),  # empty list
        ([(16, b"\x00\x04\x05abc")], "tls.bad_alpn"),  # name runs past the list
        ([(43, b"\x03\x03\x04\x03")], "tls.bad_supported_versions"),  # odd length
        ([(43, b"\x04\x03\x04")], "tls.bad_supported_versions"),  # length mismatch
        ([(21, b""), (21, b"")], "tls.duplicate_extension"),
    ],
)
def test_bad_extensions(extensions: list[tuple[int, bytes]], reason: str) -> None:
    msg = synthetic_client_hello(None, versions=None, alpn=(), extra_extensions=extensions)
    assert parse_client_hello(msg) == Weird(reason)


def test_extension_running_past_the_block() -> None:
    good = synthetic_client_hello(None, versions=None, alpn=(), extra_extensions=[(21, b"ab")])
    # The extension claims 3 data bytes; the block (and message) still end where they did.
    bad = good[:-4] + b"\x00\x03" + good[-2:]
    assert parse_client_hello(bad) == Weird("tls.bad_extension")


def test_extension_header_cut_short() -> None:
    good = synthetic_client_hello(None, versions=None, alpn=())
    block = b"\x00\x15\x00"  # three bytes of a four-byte extension header
    body = good[4:-2] + len(block).to_bytes(2, "big") + block
    assert parse_client_hello(_with_body(good, body)) == Weird("tls.bad_extension")


def test_bad_fixed_fields() -> None:
    assert parse_client_hello(synthetic_client_hello(legacy_version=0x0200)) == Weird(
        "tls.bad_version"
    )
    assert parse_client_hello(synthetic_client_hello(session_id=bytes(33))) == Weird(
        "tls.bad_client_hello"
    )
    good = synthetic_client_hello()
    # Bytes left inside the message after the extension block.
    body = good[4:] + b"\x00"
    assert parse_client_hello(_with_body(good, body)) == Weird("tls.bad_client_hello")
    # Odd cipher-suite length (offset: version 2 + random 32 + session id 1+32).
    broken = bytearray(good)
    broken[4 + 67 : 4 + 69] = b"\x00\x07"
    assert parse_client_hello(bytes(broken)) == Weird("tls.bad_client_hello")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = parse_client_hello(data)
    assert isinstance(result, ClientHello | Weird)
    result = parse_client_hello(b"\x01" + len(data).to_bytes(3, "big") + data)
    assert isinstance(result, ClientHello | Weird)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_real_hello_never_raises(data: st.DataObject) -> None:
    msg = bytearray(client_hello_message("mutate.example", alpn=["h2"]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(msg) - 1))
        msg[i] = data.draw(st.integers(0, 255))
    assert isinstance(parse_client_hello(bytes(msg)), ClientHello | Weird)


# --- looks_like_tls ----------------------------------------------------------------------------


def test_looks_like_tls() -> None:
    assert looks_like_tls(client_hello_bytes("x.example"))
    assert looks_like_tls(b"\x16\x03\x00")
    assert looks_like_tls(b"\x16\x03\x04\x00\x10")
    assert not looks_like_tls(b"GET / HTTP/1.1\r\n")
    assert not looks_like_tls(b"\x17\x03\x03\x00\x10")  # application data
    assert not looks_like_tls(b"\x16\x03\x05\x00\x10")
    assert not looks_like_tls(b"\x16\x03")
    assert not looks_like_tls(b"")


# --- ClientHelloAssembler ----------------------------------------------------------------------


def test_single_segment() -> None:
    stream = client_hello_bytes("one.example")
    asm = ClientHelloAssembler(isn=5000)
    result = asm.feed(5000, stream)
    assert isinstance(result, ClientHello)
    assert result.sni == "one.example"
    assert asm.done
    assert asm.feed(5000, stream) is None  # finished: nothing more


@pytest.mark.parametrize("max_version", [TLS12, TLS13])
@pytest.mark.parametrize("sni", ["split.example", None])
@pytest.mark.parametrize("known_start", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_small_segments_out_of_order_with_duplicates(
    max_version: ssl.TLSVersion, sni: str | None, known_start: bool, seed: int
) -> None:
    stream = client_hello_bytes(sni, max_version=max_version)
    expected = parse_client_hello(client_hello_message(sni, max_version=max_version))
    segments = with_retransmits(split_segments(stream, 40, start_seq=77_000), seed=seed)
    asm = ClientHelloAssembler(isn=77_000 if known_start else None)
    assert only_result(feed_all(asm, segments)) == expected


@pytest.mark.parametrize("known_start", [True, False])
def test_first_segment_arrives_last(known_start: bool) -> None:
    stream = client_hello_bytes("late.example")
    segments = split_segments(stream, 100, start_seq=1)
    asm = ClientHelloAssembler(isn=1 if known_start else None)
    results = feed_all(asm, [*segments[1:], segments[0]])
    assert results[:-1] == [None] * (len(segments) - 1)
    assert isinstance(results[-1], ClientHello)
    assert results[-1].sni == "late.example"


@pytest.mark.parametrize("known_start", [True, False])
@pytest.mark.parametrize("start_seq", [2**32 - 1, 2**32 - 150, 2**32 - 400])
def test_sequence_wraparound(known_start: bool, start_seq: int) -> None:
    stream = client_hello_bytes("wrap.example")
    segments = shuffled(split_segments(stream, 64, start_seq=start_seq), seed=start_seq)
    assert any(seq < 1000 for seq, _ in segments)  # it really wraps
    asm = ClientHelloAssembler(isn=start_seq if known_start else None)
    result = only_result(feed_all(asm, segments))
    assert isinstance(result, ClientHello)
    assert result.sni == "wrap.example"


@pytest.mark.parametrize("record_size", [1, 7, 50, 200])
@pytest.mark.parametrize("known_start", [True, False])
def test_record_layer_fragmentation(record_size: int, known_start: bool) -> None:
    stream = client_hello_bytes("frag.example", alpn=["h2"])
    fragmented = fragment_records(stream, record_size)
    segments = shuffled(split_segments(fragmented, 120, start_seq=9), seed=record_size)
    # One-byte records blow the stream up past the segment bound; give them room.
    asm = ClientHelloAssembler(isn=9 if known_start else None, max_segments=64)
    result = only_result(feed_all(asm, segments))
    assert isinstance(result, ClientHello)
    assert result.sni == "frag.example"
    assert result.alpn == ("h2",)


def test_record_fragments_in_one_segment() -> None:
    stream = fragment_records(client_hello_bytes("recs.example"), [10, 300, 1000])
    result = ClientHelloAssembler(isn=0).feed(0, stream)
    assert isinstance(result, ClientHello)
    assert result.sni == "recs.example"


@pytest.mark.parametrize("known_start", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_large_hello_over_several_segments(known_start: bool, seed: int) -> None:
    alpn = big_alpn(3000)
    stream = client_hello_bytes("big.example", alpn=alpn)
    assert len(stream) > 3000
    segments = with_retransmits(split_segments(stream, 1460, start_seq=2**31), seed=seed)
    asm = ClientHelloAssembler(isn=2**31 if known_start else None)
    result = only_result(feed_all(asm, segments))
    assert isinstance(result, ClientHello)
    assert result.sni == "big.example"
    assert result.alpn == tuple(alpn)


def test_data_before_known_start_is_trimmed() -> None:
    stream = client_hello_bytes("trim.example")
    asm = ClientHelloAssembler(isn=1000)
    assert asm.feed(990, b"\xff" * 5) is None  # entirely before the start
    result = asm.feed(995, b"\xff" * 5 + stream)  # straddles it
    assert isinstance(result, ClientHello)
    assert result.sni == "trim.example"


def test_hello_followed_by_more_data() -> None:
    stream = client_hello_bytes("more.example") + tls_record(b"early data", content_type=0x17)
    segments = split_segments(stream, 300, start_seq=0)
    result = only_result(feed_all(ClientHelloAssembler(isn=0), segments))
    assert isinstance(result, ClientHello)


def test_missing_segment_waits() -> None:
    segments = split_segments(client_hello_bytes("gap.example"), 100, start_seq=0)
    asm = ClientHelloAssembler(isn=0)
    assert feed_all(asm, segments[:2] + segments[3:]) == [None] * (len(segments) - 1)
    assert not asm.done
    assert isinstance(asm.feed(*segments[2]), ClientHello)


def test_empty_payload_is_ignored() -> None:
    asm = ClientHelloAssembler()
    assert asm.feed(5, b"") is None
    result = asm.feed(10, client_hello_bytes("empty.example"))
    assert isinstance(result, ClientHello)


def test_not_tls_with_known_start() -> None:
    asm = ClientHelloAssembler(isn=100)
    assert asm.feed(100, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == Weird("tls.not_tls")
    assert asm.done


def test_not_tls_decided_on_first_byte() -> None:
    assert ClientHelloAssembler(isn=0).feed(0, b"S") == Weird("tls.not_tls")
    asm = ClientHelloAssembler(isn=0)
    assert asm.feed(0, b"\x16") is None  # could still be TLS
    assert asm.feed(1, b"\x03\x09") == Weird("tls.not_tls")


def test_not_tls_without_known_start_hits_the_bound() -> None:
    asm = ClientHelloAssembler()
    segments = split_segments(b"SSH-2.0-OpenSSH_9.6\r\n" + bytes(range(256)) * 100, 1000)
    results = feed_all(asm, segments)
    assert only_result(results) == Weird("tls.not_tls")
    assert asm.done


def test_application_data_record_is_not_a_hello() -> None:
    asm = ClientHelloAssembler(isn=0)
    assert asm.feed(0, tls_record(b"x" * 40, content_type=0x17, version=0x0303)) == Weird(
        "tls.not_tls"
    )


def test_handshake_that_is_not_a_client_hello() -> None:
    server_hello = b"\x02\x00\x00\x04abcd"
    assert ClientHelloAssembler(isn=0).feed(0, tls_record(server_hello)) == Weird(
        "tls.not_client_hello"
    )


def test_bad_record_in_the_middle() -> None:
    msg = client_hello_message("bad.example")
    stream = tls_record(msg[:100]) + tls_record(msg[100:], content_type=0x15)
    assert ClientHelloAssembler(isn=0).feed(0, stream) == Weird("tls.bad_record")
    zero_length = tls_record(msg[:100]) + tls_record(b"")
    assert ClientHelloAssembler(isn=0).feed(0, zero_length) == Weird("tls.bad_record")


def test_malformed_hello_inside_records() -> None:
    stream = tls_record(synthetic_client_hello(extra_extensions=[(21, b""), (21, b"")]))
    assert ClientHelloAssembler(isn=0).feed(0, stream) == Weird("tls.duplicate_extension")


def test_too_many_segments() -> None:
    stream = client_hello_bytes("tiny.example")
    segments = split_segments(stream, 5, start_seq=0)
    results = feed_all(ClientHelloAssembler(isn=0), segments)
    assert only_result(results) == Weird("tls.reassembly_overflow")
    assert results.index(Weird("tls.reassembly_overflow")) == 32


def test_hello_larger_than_the_window() -> None:
    stream = client_hello_bytes("huge.example", alpn=big_alpn(3000))
    # The message header already says it cannot fit.
    assert ClientHelloAssembler(max_bytes=2000, isn=0).feed(0, stream[:100]) == Weird(
        "tls.reassembly_overflow"
    )
    # Record-layer headers push it over a window the message alone would fit in.
    fragmented = fragment_records(stream, 10)
    msg_len = len(stream) - 5
    asm = ClientHelloAssembler(max_bytes=msg_len + 20, isn=0, max_segments=1000)
    results = feed_all(asm, split_segments(fragmented, 500, start_seq=0))
    assert only_result(results) == Weird("tls.reassembly_overflow")


def test_segments_past_the_window_are_counted() -> None:
    segments = split_segments(client_hello_bytes("far.example"), 100, start_seq=0)
    asm = ClientHelloAssembler(isn=0, max_segments=8)
    far = [(20_000 + i * 100, b"z" * 100) for i in range(8)]
    results = feed_all(asm, segments[1:2] + far)
    assert only_result(results) == Weird("tls.reassembly_overflow")


def test_big_coalesced_segment_is_clipped() -> None:
    # A GRO-merged segment longer than the window still yields the hello at its start.
    stream = client_hello_bytes("gro.example") + b"\x17\x03\x03" + bytes(40_000)
    result = ClientHelloAssembler(isn=0).feed(0, stream)
    assert isinstance(result, ClientHello)
    assert result.sni == "gro.example"


def test_unknown_start_follows_an_earlier_segment() -> None:
    # Without the ISN, a lower sequence number moves the candidate start back.
    stream = client_hello_bytes("rebase.example")
    segments = split_segments(stream, 150, start_seq=4000)
    asm = ClientHelloAssembler()
    order = [segments[2], segments[1], segments[3], segments[0]]
    results = feed_all(asm, order)
    assert results[:3] == [None, None, None]
    assert isinstance(results[3], ClientHello)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=300)), max_size=40),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_assembler_never_raises(segments: list[tuple[int, bytes]], isn: int | None) -> None:
    asm = ClientHelloAssembler(isn=isn)
    for seq, payload in segments:
        result = asm.feed(seq, payload)
        assert result is None or isinstance(result, ClientHello | Weird)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_assembler_random_cuts_and_order(data: st.DataObject) -> None:
    stream = client_hello_bytes("prop.example")
    sizes = data.draw(st.lists(st.integers(20, 200), min_size=1, max_size=10))
    start = data.draw(st.integers(0, 2**32 - 1))
    segments = data.draw(st.permutations(split_segments(stream, sizes, start_seq=start)))
    asm = ClientHelloAssembler(isn=start if data.draw(st.booleans()) else None)
    result = only_result(feed_all(asm, list(segments)))
    assert isinstance(result, ClientHello)
    assert result.sni == "prop.example"


def test_extension_builder_round_trip() -> None:
    # tls_extension is what synthetic hellos are made of; sanity-check the framing.
    assert tls_extension(0x0010, b"ab") == b"\x00\x10\x00\x02ab"
