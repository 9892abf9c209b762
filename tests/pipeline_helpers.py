"""Helpers for end-to-end tests: build a capture with sensor.lab.synth, run analyze, read it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dpkt

from sensor.analyze import analyze
from sensor.lab.synth import LINK_ETHERNET, Capture, PcapWriter


def build(
    path: Path,
    scenario: Callable[[Capture], None],
    linktype: int = LINK_ETHERNET,
    pcapng: bool = False,
    vlans: tuple[int, ...] = (),
    start: float = 1_700_000_000.0,
) -> Path:
    buf = io.BytesIO()
    cap = Capture(PcapWriter(buf, linktype, pcapng), vlans=vlans, start=start)
    scenario(cap)
    path.write_bytes(buf.getvalue())
    return path


def run_analyze(
    *paths: Path, config: Path | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], str]:
    """(flows, devices, stats, stderr) of `phonehome analyze --json`."""
    out, err = io.StringIO(), io.StringIO()
    rc = analyze(
        [str(p) for p in paths],
        config_path=str(config) if config else None,
        as_json=True,
        out=out,
        err=err,
    )
    assert rc == 0, err.getvalue()
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    flows = [r for r in recs if r["type"] == "flow"]
    devices = [r for r in recs if r["type"] == "device"]
    (stats,) = [r for r in recs if r["type"] == "stats"]
    return flows, devices, stats, err.getvalue()


def flow_to(
    flows: list[dict[str, Any]], dst_ip: str, dst_port: int | None = None
) -> dict[str, Any]:
    hits = [
        f
        for f in flows
        if f["dst_ip"] == dst_ip and (dst_port is None or f["dst_port"] == dst_port)
    ]
    assert len(hits) == 1, f"{len(hits)} flows to {dst_ip}:{dst_port}: {hits}"
    return hits[0]


def ip_lengths_by_direction(path: Path, lan_ip: str) -> tuple[int, int]:
    """Independent byte count with dpkt: IP lengths (up, down) of all packets to/from lan_ip."""
    import ipaddress

    lan = ipaddress.ip_address(lan_ip).packed
    up = down = 0
    with open(path, "rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP):
                length = ip.len
            elif isinstance(ip, dpkt.ip6.IP6):
                length = ip.plen + 40
            else:
                continue
            if ip.src == lan:
                up += length
            elif ip.dst == lan:
                down += length
    return up, down
