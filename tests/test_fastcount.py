"""sensor.fastcount through both of the pipeline's loops: frames handed on one by one
(`Pipeline.run_packets`, what live sources feed) must end exactly as the same frames re-packed
into pcap records and walked by the pure loop (`_run_pure`), flows, devices, counters and loop
state alike."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

import pytest

from sensor.config import Config
from sensor.decode.link import LINKTYPE_LINUX_SLL2
from sensor.fastcount import LINK_LAYOUTS, count_known
from sensor.flows import Half
from sensor.lab.synth import LINK_ETHERNET, LINK_RAW, LINK_SLL, LINK_SLL2, sample_home
from sensor.pipeline import Pipeline
from sensor.sources.pcap import CaptureFile, Packet, pack_chunks
from tests.test_fastpath import Collect


def as_recorded(packets: Sequence[Packet]) -> list[Packet]:
    """The packets with the times a pcap record (nanoseconds) gives back, so both loops see the
    same float."""
    out = []
    for ts, lt, frame in packets:
        sec = int(ts)
        out.append((sec + round((ts - sec) * 1e9) * 1e-9, lt, frame))
    return out


def outcome(parts: Sequence[Sequence[Packet]], frames: bool) -> dict[str, Any]:
    sink = Collect()
    p = Pipeline(Config(), sink)
    for part in parts:
        if frames:
            p.run_packets(part)
        else:
            p._run_pure(pack_chunks(part))
    p.finish()
    return {
        "flows": sink.flows,
        "devices": sink.devices,
        "stats": p.stats(),
        "last_ts": p.last_ts,
        "next_sweep": p._next_sweep,
        "fast": p.packets_fast,
    }


def sample(linktype: int) -> list[Packet]:
    """The demo capture in `linktype`, as its reader yields it."""
    with tempfile.NamedTemporaryFile(suffix=".pcap") as fh:
        sample_home(fh, linktype)
        fh.flush()
        return as_recorded(list(CaptureFile(fh.name)))


@pytest.mark.parametrize("linktype", [LINK_ETHERNET, LINK_RAW, LINK_SLL, LINK_SLL2])
@pytest.mark.parametrize("calls", [1, 7])
def test_frames_and_records_end_alike(linktype: int, calls: int) -> None:
    packets = sample(linktype)
    step = -(-len(packets) // calls)
    parts = [packets[i : i + step] for i in range(0, len(packets), step)]
    frames = outcome(parts, frames=True)
    records = outcome(parts, frames=False)
    assert frames["fast"] > 0  # the fast path was taken, not only the decoders
    assert frames == records


def test_damaged_and_foreign_frames_go_to_the_decoders() -> None:
    good = sample(LINK_SLL2)
    junk: list[Packet] = [
        (good[0][0], LINKTYPE_LINUX_SLL2, b""),
        (good[0][0], LINKTYPE_LINUX_SLL2, good[5][2][:30]),
        (good[0][0], 147, good[5][2]),  # a link type nobody decodes
    ]
    packets = good[:10] + junk + good[10:]
    frames = outcome([packets], frames=True)
    assert frames == outcome([packets], frames=False)
    stats = frames["stats"]
    assert stats["packets_read"] == len(packets)
    assert stats["packets_skipped"] == 3
    assert stats["skipped"]["link.truncated"] == 1  # the empty one; the other's IP is cut
    assert stats["skipped"]["link.unsupported_linktype"] == 1


def test_count_known_reads_only_inside_the_frame() -> None:
    """A frame cut short inside the headers is never counted, whatever follows it in the
    buffer."""
    ts, lt, frame = sample(LINK_ETHERNET)[-1]
    layout = LINK_LAYOUTS[lt]
    ip = frame[14:]
    key = ip[12:24] if ip[0] >> 4 == 4 else ip[8:44]
    half = Half.__new__(Half)
    table = {key: half}
    for cut in (0, 10, 14, 33, 53):
        buf = frame[:cut] + bytes(200)
        assert not count_known(table, table, ts, layout, buf, 0, cut)
