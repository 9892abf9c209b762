"""The numpy accelerator against the pure loop: every capture gives identical records.

`Pipeline.run` takes `_run_columns` (sensor.fastpath) when numpy is importable and `_run_pure`
otherwise. The contract is equivalence: the same flows with every field (exact floats, not
the report's rounding), the same devices, the same statistics, in the same order. Each test
runs a capture through both and compares; some also check that the whole-array path really
summed packets, so that a silent fallback to one-by-one processing cannot pass for a test.
"""

from __future__ import annotations

import dataclasses
import io
import random
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("numpy")

import sensor.fastpath as fastpath
import sensor.pipeline as pipeline
import sensor.sources.pcap as capture
from bench.mix import home_mix
from sensor.config import Config, FlowsConfig
from sensor.lab.synth import (
    LINK_ETHERNET,
    LINK_RAW,
    LINK_SLL,
    LINK_SLL2,
    PHONE,
    PHONE6,
    RESOLVER,
    Capture,
    Host,
    PcapWriter,
    TcpSession,
    client_hello,
    sample_home,
)
from sensor.model import Device, Flow
from sensor.pipeline import Pipeline
from sensor.sources.pcap import Chunk, Packet, pack_chunks, walk_records
from tests.builders import quic_initial_datagrams
from tests.pipeline_helpers import run_analyze


@pytest.fixture(autouse=True)
def columns_for_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks too (most tests' chunks are small) go through the arrays."""
    monkeypatch.setattr(pipeline, "_MIN_COLUMNS", 0)


class Summed:
    """Counts the packets that `_run_columns` summed in whole-array operations."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.packets = 0
        real = fastpath.summed

        def spy(*args: Any) -> Any:
            out = real(*args)
            self.packets += sum(out[1])
            return out

        monkeypatch.setattr(fastpath, "summed", spy)


@pytest.fixture
def summed(monkeypatch: pytest.MonkeyPatch) -> Summed:
    return Summed(monkeypatch)


# --- comparing the two paths --------------------------------------------------------------------


def analyze_both(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *paths: Path) -> dict[str, Any]:
    """`phonehome analyze --json` with numpy and without; asserts identical output. Both runs
    share one state directory: `analyze` without --record writes nothing there."""
    outs = []
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{state}"\n')
    for pure in (False, True):
        with monkeypatch.context() as m:
            if pure:
                m.setattr(pipeline, "_fastpath_available", lambda: False)
            outs.append(run_analyze(*paths, config=cfg))
    fast, pure_ = outs
    assert fast[3] == pure_[3]
    assert fast[2] == pure_[2]
    assert fast[1] == pure_[1]
    assert len(fast[0]) == len(pure_[0])
    for a, b in zip(fast[0], pure_[0], strict=True):
        assert a == b
    flows, devices, stats, _ = fast
    return {"flows": flows, "devices": devices, "stats": stats}


class Collect:
    def __init__(self) -> None:
        self.flows: list[dict[str, Any]] = []
        self.devices: list[dict[str, Any]] = []

    def flow(self, flow: Flow) -> None:
        self.flows.append(dataclasses.asdict(flow))

    def device(self, device: Device) -> None:
        self.devices.append(dataclasses.asdict(device))


def outcome(
    parts: Sequence[Sequence[Packet]], cfg: Config | None, pure: bool, batch: int
) -> dict[str, Any]:
    sink = Collect()
    p = Pipeline(cfg or Config(), sink)
    for part in parts:  # the daemon calls `run` once per batch: state carries over
        if pure:
            p._run_pure(pack_chunks(part, batch))
        else:
            p._run_columns(pack_chunks(part, batch))
    p.finish()
    return {
        "flows": sink.flows,
        "devices": sink.devices,
        "stats": p.stats(),
        "last_ts": p.last_ts,
        "next_sweep": p._next_sweep,
    }


def run_both(
    packets: Sequence[Packet], cfg: Config | None = None, batch: int = 512, calls: int = 1
) -> dict[str, Any]:
    """Packets through a Pipeline both ways (in chunks as live sources make them, in
    `calls` runs); asserts identical flows (every field, exact), devices, counters and loop
    state."""
    step = -(-len(packets) // calls) or 1
    parts = [packets[i : i + step] for i in range(0, len(packets), step)]
    fast = outcome(parts, cfg, False, batch)
    pure = outcome(parts, cfg, True, batch)
    assert fast["stats"] == pure["stats"]
    assert len(fast["flows"]) == len(pure["flows"])
    for a, b in zip(fast["flows"], pure["flows"], strict=True):
        assert a == b
    assert fast == pure
    return fast


# --- captures -----------------------------------------------------------------------------------


def sample_file(tmp_path: Path, linktype: int, pcapng: bool, nano: bool = False) -> Path:
    buf = io.BytesIO()
    if nano:
        # sample_home's conversations, written with nanosecond timestamps.
        cap = Capture(PcapWriter(buf, linktype, pcapng, nano=True))
        s = TcpSession(cap, PHONE, "192.0.2.80", 50000, 443)
        s.open()
        s.send(client_hello("nano.example.com"))
        s.send(bytes(80_000), up=False)
        s.close()
    else:
        sample_home(buf, linktype, pcapng)
    p = tmp_path / f"sample-{linktype}-{int(pcapng)}-{int(nano)}.cap"
    p.write_bytes(buf.getvalue())
    return p


@pytest.mark.parametrize(
    ("linktype", "pcapng", "nano"),
    [
        (LINK_ETHERNET, False, False),
        (LINK_ETHERNET, True, False),
        (LINK_SLL, False, False),
        (LINK_SLL2, False, False),
        (LINK_SLL2, True, False),
        (LINK_RAW, False, False),
        (LINK_ETHERNET, False, True),
        (LINK_ETHERNET, True, True),
    ],
)
def test_sample_capture_every_link_type(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    summed: Summed,
    linktype: int,
    pcapng: bool,
    nano: bool,
) -> None:
    out = analyze_both(monkeypatch, tmp_path, sample_file(tmp_path, linktype, pcapng, nano))
    assert out["stats"]["packets_fast_path"] > 0
    assert summed.packets > 0


@pytest.mark.parametrize("chunk_size", [None, 50_001])
def test_home_mix_with_quic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, summed: Summed, chunk_size: int | None
) -> None:
    flights = [quic_initial_datagrams(f"q{i}.example.net", big=bool(i % 2)) for i in range(4)]
    path = tmp_path / "mix.pcap"
    with open(path, "wb") as fh:
        n = home_mix(fh, 50_000, seed=3, quic_flights=flights)
    if chunk_size:  # records straddle the reads: the carry-over must match too
        monkeypatch.setattr(capture, "_CHUNK", chunk_size)
    out = analyze_both(monkeypatch, tmp_path, path)
    stats = out["stats"]
    assert stats["packets_read"] == n
    assert any(f.get("name_source") == "quic" for f in out["flows"])
    assert summed.packets > n // 2  # most packets went through the arrays


def test_home_mix_merged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two files merged in time order: chunks re-packed with nanosecond headers."""
    paths = []
    for seed in (1, 2):
        p = tmp_path / f"m{seed}.pcap"
        with open(p, "wb") as fh:
            home_mix(fh, 5_000, seed=seed)
        paths.append(p)
    analyze_both(monkeypatch, tmp_path, *paths)


def interleaved(cap: Capture, sessions: int, rng: random.Random, v6_share: float = 0.3) -> None:
    """Many short TCP flows at once, in lock step, and DNS lookups between them."""
    hosts = [Host(f"64:09:80:00:02:{i:02x}", f"192.168.1.{100 + i}") for i in range(8)]
    hosts += [Host(f"64:09:80:00:03:{i:02x}", f"fd00:1::{100 + i:x}") for i in range(4)]
    live = []
    for i in range(sessions):
        lan = rng.choice(hosts[8:] if rng.random() < v6_share else hosts[:8])
        remote = f"2001:db8::{i + 1:x}" if lan.v6 else f"203.0.113.{i % 250 + 1}"
        live.append(TcpSession(cap, lan, remote, 20000 + i, rng.choice([443, 80, 8883])))
    steps: list[Callable[[TcpSession], None]] = [
        lambda s: s.open(),
        lambda s: s.send(client_hello(f"h{s.lport}.example.com"), ack=False),
        lambda s: s.send(bytes(rng.randrange(0, 5000)), up=False),
        lambda s: s.send(b"\x17\x03\x03" + bytes(rng.randrange(10, 3000))),
        lambda s: s.close(),
    ]
    for step in steps:
        for s in live:
            if rng.random() < 0.1:
                cap.dns_lookup(s.lan, RESOLVER, f"n{s.lport}.example.org", [s.remote])
            step(s)


def test_many_short_interleaved_flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    interleaved(Capture(PcapWriter(buf)), 1500, random.Random(4))
    path = tmp_path / "short.pcap"
    path.write_bytes(buf.getvalue())
    out = analyze_both(monkeypatch, tmp_path, path)
    assert out["stats"]["flows"] >= 1500


class ListWriter:
    """A PcapWriter stand-in keeping the packets."""

    def __init__(self, linktype: int = LINK_ETHERNET) -> None:
        self.linktype = linktype
        self.packets: list[Packet] = []

    def write(self, ts: float, frame: bytes) -> None:
        self.packets.append((ts, self.linktype, frame))


def pcap_packets(data: bytes) -> list[Packet]:
    """The records of a little-endian microsecond pcap file, as PcapWriter writes them."""
    out = []
    pos = 24
    while pos < len(data):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", data, pos)
        out.append((sec + usec * 1e-6, 1, data[pos + 16 : pos + 16 + caplen]))
        pos += 16 + caplen
    return out


def capture_packets(scenario: Callable[[Capture], None]) -> list[Packet]:
    w = ListWriter()
    scenario(Capture(w))  # type: ignore[arg-type]
    return w.packets


@pytest.mark.parametrize("max_flows", [16, 200])
def test_flows_evicted_by_the_cap(max_flows: int, summed: Summed) -> None:
    def scenario(cap: Capture) -> None:
        # Two long-lived bulk flows, with bursts of new short flows between their packets.
        rng = random.Random(max_flows)
        bulk = [TcpSession(cap, PHONE, "198.51.100.7", 40000, 443)]
        bulk.append(TcpSession(cap, PHONE6, "2001:db8::77", 40001, 443))
        for s in bulk:
            s.open()
            s.send(client_hello("bulk.example.com"))
        for burst in range(6):
            for s in bulk:
                s.send(bytes(200_000), up=False)
            interleaved(cap, 60 + burst * 40, rng)

    packets = capture_packets(scenario)
    out = run_both(packets, Config(flows=FlowsConfig(max_flows=max_flows)), batch=256)
    assert out["stats"]["flows_evicted"]["cap"] > 0
    assert summed.packets > 0


@pytest.mark.parametrize("batch", [7, 512, 100_000])
def test_idle_sweeps(batch: int, summed: Summed) -> None:
    """Gaps longer than the timeouts, within chunks and between them: sweeps happen at the
    very packets where the pure loop makes them, so even within a chunk nothing differs."""

    def scenario(cap: Capture) -> None:
        rng = random.Random(batch)
        for round_ in range(8):
            interleaved(cap, 20, rng)
            s = TcpSession(cap, PHONE, f"198.51.100.{round_ + 1}", 41000 + round_, 443)
            s.open()
            s.send(client_hello("idle.example.com"))
            s.send(bytes(100_000), up=False)  # no close: it must time out
            cap.udp(PHONE, "198.51.100.99", 5000 + round_, 9999, b"x" * 100, up=True)
            cap.tick(rng.choice([3.0, 7.0, 30.0, 200.0]))

    packets = capture_packets(scenario)
    cfg = Config(flows=FlowsConfig(tcp_idle_timeout=10, udp_idle_timeout=5))
    out = run_both(packets, cfg, batch=batch)
    assert out["stats"]["flows_evicted"]["idle"] > 0
    assert summed.packets > 0


def test_runs_carry_state_between_calls() -> None:
    """The daemon feeds batches through separate `run` calls."""
    packets = capture_packets(lambda cap: interleaved(cap, 200, random.Random(9)))
    cfg = Config(flows=FlowsConfig(tcp_idle_timeout=10, udp_idle_timeout=5))
    run_both(packets, cfg, batch=64, calls=len(packets) // 300)


# --- unusual packets ------------------------------------------------------------------------------


def _eth(ip: bytes, v6: bool = False, vlan: int | None = None) -> bytes:
    tag = struct.pack(">HH", 0x8100, vlan) if vlan is not None else b""
    et = 0x86DD if v6 else 0x0800
    frame = b"\x02\x00\x00\x00\x00\x01" + PHONE.mac_bytes + tag + struct.pack(">H", et) + ip
    return frame.ljust(60, b"\0")  # Ethernet's minimum frame


def _udp4(sport: int, dport: int, payload: bytes, up: bool = True, ipid: int = 1) -> dpkt.ip.IP:
    src, dst = bytes([192, 168, 1, 23]), bytes([198, 51, 100, 9])
    if not up:
        src, dst, sport, dport = dst, src, dport, sport
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    return dpkt.ip.IP(src=src, dst=dst, p=17, id=ipid, data=u)


def _fragments(ip: dpkt.ip.IP, size: int = 512) -> list[bytes]:
    body = bytes(ip.data)
    out = []
    for off in range(0, len(body), size):
        part = dpkt.ip.IP(src=ip.src, dst=ip.dst, p=ip.p, id=ip.id, data=body[off : off + size])
        part.offset = off >> 3
        part.mf = int(off + size < len(body))
        out.append(bytes(part))
    return out


def unusual_frames(rng: random.Random) -> list[bytes]:
    """A bulk UDP flow (past inspection quickly) with IP fragments, IP options, VLAN tags and
    junk among its plain packets: packets that the slow path counts to the same flow."""
    frames = []
    for i in range(3000):
        r = rng.random()
        up = rng.random() < 0.3
        if r < 0.05:
            big = _udp4(40000, 4433, bytes(3000), up, ipid=i)
            frames += [_eth(f) for f in _fragments(big)]
        elif r < 0.07:
            ip = _udp4(40000, 4433, bytes(100), up)
            ip.opts = b"\x01\x01\x01\x01"  # NOPs: IHL 6
            frames.append(_eth(bytes(ip)))
        elif r < 0.09:
            frames.append(_eth(bytes(_udp4(40000, 4433, bytes(200), up)), vlan=5))
        elif r < 0.10:
            frames.append(bytes(rng.randrange(256) for _ in range(rng.randrange(80))))
        elif r < 0.12:
            frames.append(_eth(bytes(_udp4(40000 + i, 53, bytes(30), up))))  # short-lived DNS-ish
        else:
            frames.append(_eth(bytes(_udp4(40000, 4433, bytes(rng.randrange(0, 1400)), up))))
    # The flow ends with plain packets, then odd ones that the slow path counts to it: its
    # last-seen time comes from those.
    for up in (True, False):
        frames += [_eth(bytes(_udp4(40000, 4433, bytes(100), up))) for _ in range(50)]
    frames.append(_eth(bytes(_udp4(40000, 4433, bytes(200), True)), vlan=5))
    frames += [_eth(f) for f in _fragments(_udp4(40000, 4433, bytes(3000), False, ipid=7))]
    return frames


@pytest.mark.parametrize("jitter", [0.0, 0.002, 0.5])
def test_fragments_options_vlans_and_time_running_backwards(jitter: float, summed: Summed) -> None:
    rng = random.Random(int(jitter * 1000))
    t = 1_700_000_000.0
    packets: list[Packet] = []
    for f in unusual_frames(rng):
        t += 0.001
        packets.append((t - rng.random() * jitter, 1, f))
    cfg = Config(flows=FlowsConfig(udp_idle_timeout=0.3, tcp_idle_timeout=1))
    for batch in (64, 4096):
        run_both(packets, cfg, batch)
        run_both(packets, None, batch)
    assert summed.packets > 0


@pytest.mark.parametrize("batch", [50, 4096])
def test_time_running_backwards(batch: int, summed: Summed) -> None:
    """Only simple packets, but timestamps that jump back and forth: each flow's last-seen
    time is its last packet's, not its latest."""
    rng = random.Random(batch)
    packets = capture_packets(lambda cap: interleaved(cap, 300, rng))
    packets = [(ts - rng.random() * 0.05, lt, f) for ts, lt, f in packets]
    run_both(packets, batch=batch)
    run_both(packets, Config(flows=FlowsConfig(tcp_idle_timeout=0.5)), batch=batch)
    assert summed.packets > 0


def test_last_seen_is_the_last_packets_time() -> None:
    """A flow's first packet (taken one by one) and then packets summed in bulk, with time
    going backwards in between: its last-seen time is the last packet's, as in the pure loop."""
    up = _eth(bytes(_udp4(40000, 4433, b"hello")))
    empty_up = _eth(bytes(_udp4(40000, 4433, b"")))
    down = _eth(bytes(_udp4(40000, 4433, bytes(100), up=False)))
    for times in ([10.0, 9.0, 9.5], [10.0, 9.5, 9.0], [10.0, 11.0, 9.0], [10.0, 10.0, 10.0]):
        packets = [(times[0], 1, up), (times[1], 1, empty_up), (times[2], 1, down)]
        packets += [(times[2] - 0.5, 1, empty_up), (times[2] - 0.25, 1, down)]
        run_both(packets)


def test_mutated_and_truncated_real_frames() -> None:
    buf = io.BytesIO()
    sample_home(buf)
    frames = [f for _, _, f in pcap_packets(buf.getvalue())]
    rng = random.Random(5)
    mutated = []
    for _ in range(6000):
        f = bytearray(rng.choice(frames))
        if rng.random() < 0.5:
            for _ in range(rng.randrange(1, 6)):
                f[rng.randrange(len(f))] = rng.randrange(256)
        if rng.random() < 0.3:
            del f[rng.randrange(len(f)) :]
        mutated.append(bytes(f))
    ts = 1_700_000_000.0
    run_both([(ts + i * 1e-3, 1, f) for i, f in enumerate(mutated)])
    # The same frames with time going back and forth.
    run_both([(ts + rng.random(), 1, f) for f in mutated], batch=2000)


# --- random input ---------------------------------------------------------------------------------


def _templates() -> list[bytes]:
    """IP packets of a few flows in both directions (TCP with and without payload, UDP),
    a fragment pair and an IPv6 one, for composing random captures."""
    out = []
    for sport, dport, flags, data in (
        (40000, 443, dpkt.tcp.TH_SYN, b""),
        (443, 40000, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, b""),
        (40000, 443, dpkt.tcp.TH_ACK, b""),
        (40000, 443, dpkt.tcp.TH_ACK, b"\x16\x03\x01" + bytes(60)),
        (443, 40000, dpkt.tcp.TH_ACK, bytes(300)),
        (40001, 80, dpkt.tcp.TH_ACK, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ):
        t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, data=data)
        a, b = bytes([192, 168, 1, 23]), bytes([203, 0, 113, 5])
        src, dst = (a, b) if sport > 1024 else (b, a)
        out.append(bytes(dpkt.ip.IP(src=src, dst=dst, p=6, data=t)))
    for up in (True, False):
        out.append(bytes(_udp4(50000, 443, b"\xc0" + bytes(40), up)))
        out.append(bytes(_udp4(50001, 53, bytes(20), up)))
    out += _fragments(_udp4(50000, 443, bytes(900)), 512)
    u = dpkt.udp.UDP(sport=50002, dport=443, data=bytes(30))
    u.ulen = 38
    ip6 = dpkt.ip6.IP6(src=PHONE6.ip_bytes, dst=bytes(15) + b"\x09", nxt=17, hlim=64, data=u)
    ip6.plen = 38
    out.append(bytes(ip6))
    return out


TEMPLATES = _templates()


def _framed(lt: int, ip: bytes) -> bytes:
    v6 = ip[0] >> 4 == 6
    if lt == 1:
        return _eth(ip, v6)
    if lt == 113:
        return (
            struct.pack(">HHH8sH", 0, 1, 6, PHONE.mac_bytes + b"\0\0", 0x86DD if v6 else 0x800) + ip
        )
    if lt == 276:
        return struct.pack(">HHIHBB8s", 0x86DD if v6 else 0x800, 0, 2, 1, 0, 6, bytes(8)) + ip
    return ip


frame_st = st.one_of(
    st.binary(max_size=120),
    st.tuples(
        st.sampled_from(range(len(TEMPLATES))),
        st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=3),
        st.one_of(st.none(), st.integers(0, 120)),
    ),
)


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    frames=st.lists(frame_st, max_size=60),
    linktype=st.sampled_from([1, 101, 113, 276, 228, 229, 12, 14, 0, 999]),
    steps=st.lists(st.floats(-2.0, 10.0), min_size=1, max_size=60),
    batch=st.integers(1, 40),
    small=st.booleans(),
)
def test_random_frames(
    frames: list[Any], linktype: int, steps: list[float], batch: int, small: bool
) -> None:
    packets: list[Packet] = []
    t = 1000.0
    for i, f in enumerate(frames):
        if isinstance(f, tuple):
            idx, changes, cut = f
            b = bytearray(_framed(linktype, TEMPLATES[idx]))
            for pos, val in changes:
                if pos < len(b):
                    b[pos] = val
            f = bytes(b[:cut] if cut is not None else b)
        t = max(0.0, t + steps[i % len(steps)])
        packets.append((t, linktype, f))
    cfg = Config(flows=FlowsConfig(max_flows=16, tcp_idle_timeout=3, udp_idle_timeout=1))
    run_both(packets, cfg if small else None, batch)


# --- the pieces -----------------------------------------------------------------------------------


def _records(rng: random.Random, n: int, endian: str) -> bytes:
    out = []
    for _ in range(n):
        frame = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 90)))
        out.append(struct.pack(endian + "IIII", rng.randrange(1 << 32), 5, len(frame), 99) + frame)
    return b"".join(out)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_walk_stops_where_the_reader_expects(endian: str) -> None:
    rng = random.Random(endian == "<")
    header = struct.Struct(endian + "IIII")
    for trial in range(300):
        buf = _records(rng, rng.randrange(0, 30), endian)
        kind = trial % 4
        if kind == 1 and buf:  # cut anywhere
            buf = buf[: rng.randrange(len(buf))]
        elif kind == 2 and len(buf) > 40:  # a corrupt length somewhere
            ba = bytearray(buf)
            at = rng.randrange(len(buf) - 12)
            ba[at + 8 : at + 12] = struct.pack(endian + "I", rng.choice([1 << 18, (1 << 18) + 1]))
            buf = bytes(ba)
        start = rng.randrange(0, 3) if kind == 3 else 0
        buf = bytes(start) + buf
        end = len(buf) - (rng.randrange(0, 20) if kind == 3 else 0)
        a = Chunk(1, buf, start, max(start, end), 1e-6, header)
        b = Chunk(1, buf, start, max(start, end), 1e-6, header)
        bounds = fastpath.walk(a)
        walk_records(b)
        assert (a.stop, a.count) == (b.stop, b.count)
        assert len(bounds) == a.count + 1 and bounds[0] == start and bounds[-1] == a.stop


@pytest.mark.parametrize("size", [capture.MAX_RECORD, capture.MAX_RECORD + 1])
def test_walk_record_size_limit(size: int) -> None:
    header = struct.Struct("<IIII")
    small = header.pack(1, 2, 60, 60) + bytes(60)
    buf = small + header.pack(1, 2, size, size) + bytes(size) + small
    a = Chunk(1, buf, 0, len(buf), 1e-6, header)
    b = Chunk(1, buf, 0, len(buf), 1e-6, header)
    fastpath.walk(a)
    walk_records(b)
    assert (
        (a.stop, a.count)
        == (b.stop, b.count)
        == ((len(buf), 3) if size == capture.MAX_RECORD else (76, 1))
    )


def test_hash_collisions_group_on_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, summed: Summed
) -> None:
    """With every key hashing alike, the grouping must still keep flows apart."""
    monkeypatch.setattr(fastpath, "_HASH", fastpath._HASH * 0)
    analyze_both(monkeypatch, tmp_path, sample_file(tmp_path, 1, False))
    assert summed.packets > 0


def test_links_mirror_the_pure_layouts() -> None:
    assert set(fastpath.LINKS) == set(pipeline._LINK_LAYOUTS)
    frame = bytes(range(7, 107))
    for lt, (lead, l3, raw) in pipeline._LINK_LAYOUTS.items():
        eto, l3_fast = fastpath.LINKS[lt]
        assert l3_fast == l3 and (eto is None) == raw
        fields = lead.unpack_from(frame, 0)
        vihl, iplen, frag, p = fields[-4:]
        assert vihl == frame[l3] and p == frame[l3 + 9]
        assert iplen == int.from_bytes(frame[l3 + 2 : l3 + 4], "big")
        assert frag == int.from_bytes(frame[l3 + 6 : l3 + 8], "big")
        if eto is not None:
            assert fields[0] == int.from_bytes(frame[eto : eto + 2], "big")


def test_without_numpy_the_pure_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline._fastpath_available.cache_clear()
    monkeypatch.setitem(sys.modules, "sensor.fastpath", None)  # import fails as without numpy
    try:
        packets = capture_packets(lambda cap: interleaved(cap, 50, random.Random(2)))
        sink = Collect()
        p = Pipeline(Config(), sink)
        p.run(pack_chunks(packets, 100_000))
        p.finish()
        assert not pipeline._fastpath_available()
    finally:
        pipeline._fastpath_available.cache_clear()
    pure = outcome([packets], None, True, 100_000)
    assert (sink.flows, p.stats()) == (pure["flows"], pure["stats"])


def test_small_chunks_and_unknown_links_take_the_pure_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_MIN_COLUMNS", 1 << 20)
    monkeypatch.setattr(fastpath, "columns", None)  # would fail if called
    p = Pipeline(Config(), Collect())
    p.run(pack_chunks([(1.0, 1, _eth(bytes(_udp4(1, 2, b"x"))))]))
    monkeypatch.setattr(pipeline, "_MIN_COLUMNS", 0)
    p.run(pack_chunks([(2.0, 999, b"\x00" * 100)]))
    assert p.packets_read == 2
