"""Benchmark: what a live source's packets cost from the kernel's datagram to the flow table.

    python -m bench.live_loop_bench [--packets 300000]

Generates a home-traffic capture (bench.mix), then two streams a live source would deliver:
- "nflog": what the capture rules (sensor.kernel.nftables) send to NFLOG: the first ten packets
  of each direction of each connection and every DNS packet, as nfnetlink_log datagrams of 64
  messages, parsed by `NflogParser` (SLL2 frames, like the daemon reads them);
- "wide": every frame, as a wide AF_PACKET socket hands them out (Ethernet frames).
Each stream goes through a fresh pipeline in batches of 512 (the daemon's MAX_READ), once the
way the daemon feeds it (`Pipeline.run_packets`: each frame handed on as it is) and once
re-packed into pcap-format records first (`Pipeline.run(pack_chunks(...))`, the former route).
Prints packets per CPU-second (best of three; process time, so a busy machine skews less).
"""

from __future__ import annotations

import argparse
import socket
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.mix import home_mix
from sensor.config import Config
from sensor.decode.ip import parse_ip, parse_transport
from sensor.decode.link import Link, parse_link
from sensor.model import Device, Flow, Weird
from sensor.pipeline import Pipeline
from sensor.sources.nflog import NFULNL_MSG_PACKET, NflogParser
from sensor.sources.pcap import CaptureFile, Packet, pack_chunks

BATCH = 512


class _Drop:
    def flow(self, flow: Flow) -> None:
        pass

    def device(self, device: Device) -> None:
        pass


def _nla(atype: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), atype) + data
    return raw + b"\0" * (-len(raw) % 4)


def _nflog_message(ts: float, ip: bytes, mac: bytes) -> bytes:
    sec = int(ts)
    proto = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
    attrs = (
        _nla(1, struct.pack(">HBx", proto, 0))  # NFULA_PACKET_HDR, forward hook
        + _nla(3, struct.pack(">QQ", sec, int((ts - sec) * 1e6)))
        + _nla(4, struct.pack(">I", 3))
        + _nla(8, struct.pack(">HH8s", 6, 0, mac))
        + _nla(15, struct.pack(">H", 1))
        + _nla(9, ip)
    )
    body = struct.pack(">BBH", socket.AF_INET, 0, 7) + attrs
    return struct.pack("=IHHII", 16 + len(body), NFULNL_MSG_PACKET, 0, 0, 0) + body


def streams(packets: int) -> tuple[list[bytes], list[Packet]]:
    """(NFLOG datagrams, wide frames) of one generated capture."""
    wide: list[Packet] = []
    messages: list[bytes] = []
    seen: Counter[tuple[bytes, bytes, int, int]] = Counter()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        path = Path(tmp) / "mix.pcap"
        with path.open("wb") as fh:
            home_mix(fh, packets)
        for ts, lt, frame in CaptureFile(path):
            wide.append((ts, lt, frame))
            link = parse_link(lt, frame)
            if not isinstance(link, Link):
                continue
            ipk = parse_ip(frame, link.offset, link.ethertype)
            if isinstance(ipk, Weird):
                continue
            tr = parse_transport(frame, ipk)
            if isinstance(tr, Weird):
                continue
            key = (ipk.src, ipk.dst, tr.sport, tr.dport)
            seen[key] += 1
            if seen[key] <= 10 or 53 in (tr.sport, tr.dport):
                messages.append(_nflog_message(ts, frame[link.offset :], frame[6:12]))
    datagrams = [b"".join(messages[i : i + 64]) for i in range(0, len(messages), 64)]
    return datagrams, wide


def _nflog_frames(datagrams: Sequence[bytes]) -> list[Packet]:
    parser = NflogParser()
    out: list[Packet] = []
    for d in datagrams:
        parser.parse(d, len(d), out)
    return out


def _best(run: Callable[[], int], rounds: int = 3) -> tuple[float, int]:
    """(least CPU seconds of `rounds` runs, packets of one run)."""
    best = float("inf")
    n = 0
    for _ in range(rounds):
        t = time.process_time()
        n = run()
        best = min(best, time.process_time() - t)
    return best, n


def _feed(frames: Sequence[Packet], repack: bool) -> Callable[[], int]:
    def run() -> int:
        p = Pipeline(Config(), _Drop())
        for i in range(0, len(frames), BATCH):
            batch = frames[i : i + BATCH]
            if repack:
                p.run(pack_chunks(batch, batch=BATCH))
            else:
                p.run_packets(batch)
        return p.packets_read

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--packets", type=int, default=300_000)
    args = ap.parse_args(argv)
    datagrams, wide = streams(args.packets)
    print(f"== a live source's packets into the flow table ({args.packets:,} generated) ==")
    secs, n = _best(lambda: len(_nflog_frames(datagrams)))
    print(f"nflog: {n:,} packets in {len(datagrams):,} datagrams; parsing alone "
          f"{n / secs:,.0f} packets/s")  # fmt: skip
    nflog = _nflog_frames(datagrams)
    for name, frames in (("nflog", nflog), ("wide", wide)):
        direct, count = _best(_feed(frames, repack=False))
        repacked, _ = _best(_feed(frames, repack=True))
        print(f"{name}: {count:,} packets; handed on as they are {count / direct:,.0f} packets/s, "
              f"re-packed into pcap records first {count / repacked:,.0f} packets/s "
              f"({repacked / direct:.2f}x the CPU)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
