"""Fuzzing: every decoder, the identifier scanner, the capture reader and the packet loop.

Seeds are real messages built with sensor.lab.synth and the test builders; hypothesis mutates them
(flip bytes, truncate, splice, insert) and checks that nothing escapes: decoders return a record
or a counted Weird, the reader raises at most CaptureError, and the pipeline counts every packet
it read as decoded or skipped with a reason.

Crashers go into tests/fuzz_corpus/ as `<target>-<what>.bin` and are replayed by
`test_corpus_replay` (bench/fuzz_atheris.py writes its crashers there as well).
"""

from __future__ import annotations

import functools
import io
import os
import struct
from collections.abc import Callable
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz_atheris import packets_from_bytes
from sensor.config import Config
from sensor.decode import dhcp as dhcp_dec
from sensor.decode import dns as dns_dec
from sensor.decode import http as http_dec
from sensor.decode import quic as quic_dec
from sensor.decode import tls as tls_dec
from sensor.decode.ip import IpPacket, parse_ip, parse_transport
from sensor.decode.link import Link, parse_link
from sensor.detect.identifiers import KnownIdentifiers, Scanner
from sensor.lab.synth import DEMO_CONTACTS, DEMO_IMEI, DEMO_PHONE, REDMI_UA, sample_home
from sensor.model import ClientHello, DhcpMessage, DnsMessage, Flow, HttpRequest, Weird
from sensor.model import Device as SensorDevice
from sensor.pipeline import Pipeline
from sensor.sources.pcap import CaptureError, CaptureFile
from tests import builders, builders_proto

CORPUS = Path(__file__).parent / "fuzz_corpus"
LINKTYPES = (0, 1, 12, 14, 101, 113, 228, 229, 276, 999)

SCALE = float(os.environ.get("PHONEHOME_FUZZ_SCALE", "1"))
"""Multiplies the example counts (e.g. 50 for a long local run); 1 keeps the file under 30 s."""
FUZZ = settings(database=None, deadline=None, max_examples=int(1000 * SCALE))
FUZZ_SLOW = settings(database=None, deadline=None, max_examples=int(250 * SCALE))


# --- seeds ------------------------------------------------------------------------------------


@functools.cache
def sample_capture(pcapng: bool = False, linktype: int = 1) -> bytes:
    buf = io.BytesIO()
    sample_home(buf, linktype=linktype, pcapng=pcapng)
    return buf.getvalue()


@functools.cache
def sample_frames() -> tuple[bytes, ...]:
    """The demo capture's frames (Ethernet), big bulk frames cut to keep examples small."""
    frames = [bytes(f) for _ts, f in dpkt.pcap.Reader(io.BytesIO(sample_capture()))]
    small = [f for f in frames if len(f) <= 1600]
    return tuple(small[:120])


@functools.cache
def dns_seeds() -> tuple[bytes, ...]:
    return (
        builders_proto.dns_query("api.account.xiaomi.com"),
        builders_proto.dns_response(
            "tracking.intl.miui.com", ["cdn.example.net"], ["198.51.100.20", "2001:db8::20"]
        ),
        builders_proto.https_response(
            "www.example.com", "svc.example.com", ["192.0.2.80"], ["2001:db8::80"]
        ),
        COMPRESSION_LOOP,
    )


@functools.cache
def dhcp_seeds() -> tuple[bytes, ...]:
    return (
        builders_proto.dhcp_request(),
        builders_proto.dhcp_request(hostname="Redmi-Note-8-Pro", fqdn=b"\x01\x00\x00phone"),
    )


@functools.cache
def dhcpv6_seeds() -> tuple[bytes, ...]:
    inner = builders_proto.dhcpv6_solicit()
    return (inner, builders_proto.dhcpv6_relay_forw(inner))


@functools.cache
def tls_seeds() -> tuple[bytes, ...]:
    return (
        builders.client_hello_message("tracking.intl.miui.com", alpn=("h2", "http/1.1")),
        builders.client_hello_message(None),
    )


@functools.cache
def tls_stream_seeds() -> tuple[bytes, ...]:
    return (
        builders.client_hello_bytes("tracking.intl.miui.com", alpn=("h2",)),
        HUGE_CLIENT_HELLO,
    )


@functools.cache
def quic_seeds() -> tuple[bytes, ...]:
    """v1 from aioquic, and one first datagram per other version family (draft-29, mvfst,
    gQUIC Q043, Q046, Q050, T051)."""
    from tests import builders_quic as bq

    families = (0xFF00001D, 0xFACEB002, bq.Q043, bq.Q046, bq.Q050, bq.T051)
    return (
        *builders.quic_initial_datagrams("www.example.com")[:2],
        *(bq.flight(v, "www.example.com")[0] for v in families),
        HUGE_QUIC_LENGTH,
    )


@functools.cache
def http_seeds() -> tuple[bytes, ...]:
    leak = (
        f"imei={DEMO_IMEI}&phone=%2B{DEMO_PHONE[1:]}&contacts="
        + "%2C".join(f"%2B{c[1:]}" for c in DEMO_CONTACTS)
    ).encode()
    return (
        builders_proto.http_request(
            "POST", "/pass/v2/register", "api.account.xiaomi.com", (("User-Agent", REDMI_UA),), leak
        ),
        builders_proto.http_request(
            "POST",
            "/up",
            headers=(("Transfer-Encoding", "chunked"),),
            body=builders_proto.chunked(b"x" * 40),
        ),
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n",
    )


@functools.cache
def scan_seeds() -> tuple[bytes, ...]:
    return (*http_seeds(), DEMO_IMEI.encode().hex().encode(), b"mac=64:09:80:12:34:56 a@b.example")


@functools.cache
def scanner() -> Scanner:
    known = KnownIdentifiers.from_mapping(
        {"imei": [DEMO_IMEI], "phone": [DEMO_PHONE]}, key=b"fuzz-key", home_region="ID"
    )
    return Scanner(known, auto_learn=True)


# Hand-picked nasty inputs (also in tests/fuzz_corpus/).
COMPRESSION_LOOP = (
    struct.pack(">HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
    + b"\x03abc\xc0\x0c\x00\x01\x00\x01"  # question name: "abc" then a pointer to itself
    + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
)
HUGE_QUIC_LENGTH = (
    b"\xc3\x00\x00\x00\x01\x08"
    + b"\x11" * 8
    + b"\x00\x00"  # Initial v1, 8-byte DCID, no SCID
    + b"\xbf\xff\xff\xff\xff\xff\xff\xff"  # length: 2**62 - 1
    + bytes(1200 - 24)
)
HUGE_CLIENT_HELLO = (
    b"\x16\x03\x01\x40\x00"  # handshake record, 16 KiB
    + b"\x01\xff\xff\xff"  # a ClientHello claiming 16 MiB
    + b"\x03\x03"
    + bytes(32)
    + b"\x00"
    + bytes(16384 - 38)
)


# --- mutation ---------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: tuple[bytes, ...], max_ops: int = 6) -> bytes:
    """A seed after a few random edits (or, now and then, plain random bytes)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(("flip", "set", "truncate", "splice", "insert", "delete")))
        pos = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            i = min(pos, len(data) - 1)
            data[i] = draw(st.sampled_from((0x00, 0x01, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFF)))
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, len(other)))
            data[pos:] = other[start:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


def check_weird(result: object, *ok: type) -> None:
    assert result is None or isinstance(result, (Weird, *ok)), type(result)
    if isinstance(result, Weird):
        assert result.reason and "." in result.reason


# --- link, ip, transport ----------------------------------------------------------------------


def decode_frame(linktype: int, frame: bytes) -> None:
    link = parse_link(linktype, frame)
    check_weird(link, Link)
    if not isinstance(link, Link):
        return
    ipk = parse_ip(frame, link.offset, link.ethertype)
    check_weird(ipk, IpPacket)
    if isinstance(ipk, IpPacket):
        check_weird(parse_transport(frame, ipk), object)


@FUZZ
@given(st.sampled_from(LINKTYPES), mutated(sample_frames()))
def test_link_ip_transport(linktype: int, frame: bytes) -> None:
    decode_frame(linktype, frame)


# --- dns, dhcp --------------------------------------------------------------------------------


def decode_dns(data: bytes) -> None:
    msg = dns_dec.parse_dns(data)
    check_weird(msg, DnsMessage)
    if isinstance(msg, DnsMessage):
        dns_dec.resolve_chain(msg)
    dns_dec.wire_name_text(data[12:])
    dns_dec.split_tcp_dns(builders_proto.tcp_dns(data) + data[:7])


@FUZZ
@given(mutated(dns_seeds()))
def test_dns(data: bytes) -> None:
    decode_dns(data)


def decode_dhcp(data: bytes) -> None:
    check_weird(dhcp_dec.parse_dhcp(data), DhcpMessage)


def decode_dhcpv6(data: bytes) -> None:
    check_weird(dhcp_dec.parse_dhcpv6(data), DhcpMessage)


@FUZZ
@given(mutated(dhcp_seeds()))
def test_dhcp(data: bytes) -> None:
    decode_dhcp(data)


@FUZZ
@given(mutated(dhcpv6_seeds()))
def test_dhcpv6(data: bytes) -> None:
    decode_dhcpv6(data)


# --- tls, quic, http --------------------------------------------------------------------------


def decode_tls_message(data: bytes) -> None:
    check_weird(tls_dec.parse_client_hello(data), ClientHello)


def feed_tls_stream(data: bytes, sizes: list[int], order: list[int], isn: bool) -> None:
    segs = builders.split_segments(data, sizes or [1460], start_seq=0xFFFFFF00)
    segs = [segs[i % len(segs)] for i in order] + segs if segs else []
    asm = tls_dec.ClientHelloAssembler(isn=0xFFFFFF00 if isn else None)
    for seq, payload in [*segs, (0, data[:10])]:
        was_done = asm.done
        out = asm.feed(seq, payload)
        check_weird(out, ClientHello)
        if out is not None:  # a decision finishes the assembler ...
            assert asm.done
        if was_done:  # ... which then stays silent
            assert out is None


@FUZZ
@given(mutated(tls_seeds()))
def test_tls_client_hello(data: bytes) -> None:
    decode_tls_message(data)


@FUZZ_SLOW
@given(
    mutated(tls_stream_seeds()),
    st.lists(st.integers(1, 2000), max_size=4),
    st.lists(st.integers(0, 40), max_size=8),
    st.booleans(),
)
def test_tls_assembler(data: bytes, sizes: list[int], order: list[int], isn: bool) -> None:
    feed_tls_stream(data, sizes, order, isn)


def feed_quic(datagrams: list[bytes]) -> None:
    tracker = quic_dec.QuicInitialTracker()
    for i, d in enumerate(datagrams):
        check_weird(tracker.feed(d, i % 2), ClientHello)
    assert tracker.buffered_bytes >= 0


@FUZZ_SLOW
@given(st.lists(mutated(quic_seeds(), max_ops=3), min_size=1, max_size=4))
def test_quic_tracker(datagrams: list[bytes]) -> None:
    feed_quic(datagrams)


def decode_http(data: bytes, cuts: list[int] | None = None) -> None:
    check_weird(http_dec.parse_http_request(data), HttpRequest)
    reqs, off = http_dec.parse_http_requests(data)
    assert 0 <= off <= len(data)
    for r in reqs:
        check_weird(r, HttpRequest)
    asm = http_dec.HttpRequestAssembler()
    pos = 0
    for cut in [*sorted(cuts or []), len(data)]:
        for r in asm.feed_all(data[pos:cut]):
            check_weird(r, HttpRequest)
        pos = max(pos, cut)
    check_weird(asm.finish(), HttpRequest)


@FUZZ
@given(mutated(http_seeds()), st.lists(st.integers(0, 600), max_size=5))
def test_http(data: bytes, cuts: list[int]) -> None:
    decode_http(data, cuts)


# --- identifier scanner -----------------------------------------------------------------------


def scan(data: bytes) -> None:
    for loc in ("url", "body", "payload"):
        for f in scanner().scan(data, loc):
            assert f.kind


@FUZZ
@given(mutated(scan_seeds()))
def test_scanner(data: bytes) -> None:
    scan(data)


# --- capture reader ---------------------------------------------------------------------------


def read_capture(path: Path) -> int:
    try:
        cap = CaptureFile(path)
    except CaptureError:
        return 0
    n = sum(1 for _ in cap)
    assert cap.packets >= 0
    return n


@functools.cache
def capture_seeds() -> tuple[bytes, ...]:
    # Head of each file only: whole captures are 300 KB, too big to mutate quickly.
    return (sample_capture()[:6000], sample_capture(True)[:6000], sample_capture(False, 113)[:6000])


@settings(FUZZ_SLOW, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutated(capture_seeds(), max_ops=8))
def test_capture_reader(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.pcap"
    path.write_bytes(data)
    read_capture(path)


# --- the packet loop --------------------------------------------------------------------------


class _Sink:
    def flow(self, flow: Flow) -> None:
        pass

    def device(self, device: SensorDevice) -> None:
        pass


def run_pipeline(packets: list[tuple[float, int, bytes]]) -> dict[str, object]:
    p = Pipeline(Config(), _Sink())
    p.run_packets(packets)
    p.finish()
    stats = p.stats()
    skipped = stats["skipped"]
    assert isinstance(skipped, dict)
    assert all(isinstance(k, str) and k and v > 0 for k, v in skipped.items())
    assert stats["packets_read"] == len(packets)
    assert stats["packets_decoded"] + stats["packets_skipped"] == len(packets)  # type: ignore[operator]
    return stats


@FUZZ_SLOW
@given(
    st.lists(
        st.tuples(st.sampled_from(LINKTYPES[:9]), mutated(sample_frames(), max_ops=3)),
        min_size=1,
        max_size=40,
    ),
    st.lists(st.floats(0, 100, allow_nan=False), max_size=40),
)
def test_pipeline_counts_every_packet(frames: list[tuple[int, bytes]], times: list[float]) -> None:
    ts = [1_700_000_000.0 + (times[i] if i < len(times) else i) for i in range(len(frames))]
    run_pipeline([(t, lt, f) for t, (lt, f) in zip(ts, frames, strict=True)])


# --- crasher corpus ---------------------------------------------------------------------------


def _replay_link(data: bytes) -> None:
    for lt in LINKTYPES:
        decode_frame(lt, data)


def _replay_tls(data: bytes) -> None:
    """A record stream: its first record's contents as a message, then the whole reassembled."""
    decode_tls_message(data[5:])
    feed_tls_stream(data, [], [], False)


def _replay_quic(data: bytes) -> None:
    feed_quic([data, data])


def _replay_pipeline(data: bytes) -> None:
    """bench/fuzz_atheris.py's inputs: a link type, then (time step, length, frame) records."""
    run_pipeline(packets_from_bytes(data))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "link": _replay_link,
    "dns": decode_dns,
    "dhcp": decode_dhcp,
    "dhcpv6": decode_dhcpv6,
    "tls": _replay_tls,
    "quic": _replay_quic,
    "http": decode_http,
    "scanner": scan,
    "pipeline": _replay_pipeline,
}


def _replay_capture(data: bytes, tmp: Path) -> None:
    path = tmp / "replay.pcap"
    path.write_bytes(data)
    read_capture(path)


CORPUS_FILES = sorted(CORPUS.glob("*.bin"))


def test_corpus_has_content() -> None:
    assert len(CORPUS_FILES) >= 3


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_corpus_replay(path: Path, tmp_path: Path) -> None:
    target = path.name.split("-", 1)[0]
    data = path.read_bytes()
    if target == "capture":
        _replay_capture(data, tmp_path)
        return
    assert target in TARGETS, f"{path.name}: unknown target {target!r}"
    TARGETS[target](data)
    # Every crasher also goes through the whole loop as a frame of each link type.
    run_pipeline([(1.0, lt, data) for lt in LINKTYPES[:9]])


def test_nasty_inputs_give_weirds() -> None:
    """The hand-picked inputs of the corpus end as the expected Weirds, not as records."""
    assert dns_dec.parse_dns(COMPRESSION_LOOP) == Weird("dns.pointer_loop")
    tracker = quic_dec.QuicInitialTracker()
    assert isinstance(tracker.feed(HUGE_QUIC_LENGTH, 1), Weird)
    asm = tls_dec.ClientHelloAssembler()
    outs = [asm.feed(i * 1460, HUGE_CLIENT_HELLO[i * 1460 : (i + 1) * 1460]) for i in range(12)]
    assert any(isinstance(o, Weird) for o in outs) or not any(outs)


def test_atheris_target_runs_briefly() -> None:
    """The coverage-guided target (bench/fuzz_atheris.py) runs in CI for a few seconds: it
    starts from the seed corpus, finds no crasher, and reports what it fuzzed."""
    import subprocess
    import sys

    before = set(CORPUS.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fuzz_atheris", "--seconds", "8", "-rss_limit_mb=1024"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    new = set(CORPUS.iterdir()) - before
    assert proc.returncode == 0 and not new, (proc.returncode, new, proc.stderr[-3000:])
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("fuzz_atheris:")][-1]
    words = line.split()
    inputs, packets = int(words[1]), int(words[3])
    assert inputs > 500 and packets > inputs, line
