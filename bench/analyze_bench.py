"""Benchmark: `phonehome analyze` against tshark and nDPI's reader on one generated capture.

    python -m bench.analyze_bench [--packets 1000000] [--keep FILE]

Generates a home-traffic capture (bench.mix: bulk TLS in full-size frames and ACKs, DNS,
ClientHellos, QUIC Initials and bulk, HTTP POSTs with bodies), then runs, each once on the same
file and each as its own process: `phonehome analyze --json`, `tshark -r FILE -T fields -e
tls.handshake.extensions_server_name -e http.host -e dns.qry.name`, and `ndpiReader -q -i FILE`.
Prints packets/s, peak RSS, and the ratios of analyze to the others.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.mix import home_mix


def _quic_flights(count: int) -> list[list[bytes]]:
    try:
        from tests.builders import quic_initial_datagrams
    except ImportError:  # aioquic is a test dependency; without it the mix has no QUIC
        return []
    out = []
    for i in range(count):
        out.append(quic_initial_datagrams(f"quic{i}.example.net", big=bool(i % 2)))
    return out


def _analyze_cmd(cfg: Path, capture: Path) -> list[str]:
    return [sys.executable, "-m", "sensor", "analyze", "--json", "--config", str(cfg), str(capture)]


def run_measured(cmd: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in bytes, exit status) of a command, output discarded."""
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(cmd, stdout=devnull, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        _, status, usage = os.wait4(proc.pid, 0)
        proc.stderr.read()
        proc.stderr.close()
    return time.perf_counter() - t0, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", metavar="FILE", help="write the capture here and keep it")
    args = ap.parse_args(argv)

    tmpdir = tempfile.mkdtemp(prefix="phonehome-bench-", dir="/var/tmp")
    path = Path(args.keep) if args.keep else Path(tmpdir) / "mix.pcap"
    try:
        t0 = time.perf_counter()
        with open(path, "wb") as fh:
            n = home_mix(fh, args.packets, quic_flights=_quic_flights(16))
        size = path.stat().st_size
        print(
            f"capture: {n} packets, {size / 1e6:.0f} MB, generated in "
            f"{time.perf_counter() - t0:.1f} s ({path})"
        )
        # A router has a state directory: the geo data's load cache lives there. Build it
        # once (as the daemon's first start would) so the run below measures the steady state.
        state = Path(tmpdir) / "state"
        state.mkdir()
        cfg = Path(tmpdir) / "bench.toml"
        cfg.write_text(f'[paths]\nstate_dir = "{state}"\n')
        small = Path(tmpdir) / "small.pcap"
        with open(small, "wb") as fh:
            home_mix(fh, 100)
        run_measured([*_analyze_cmd(cfg, small), "--record"])
        # Warm the page cache so that no tool pays for the disk.
        with open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
        tools: list[tuple[str, list[str]]] = [
            (
                "phonehome analyze",
                _analyze_cmd(cfg, path),
            ),
        ]
        if shutil.which("tshark"):
            tools.append(
                (
                    "tshark",
                    [
                        "tshark",
                        "-r",
                        str(path),
                        "-T",
                        "fields",
                        "-e",
                        "tls.handshake.extensions_server_name",
                        "-e",
                        "http.host",
                        "-e",
                        "dns.qry.name",
                    ],
                )
            )
        else:
            print("tshark: not installed (apt-get install tshark)")
        if shutil.which("ndpiReader"):
            tools.append(("ndpiReader", ["ndpiReader", "-q", "-i", str(path)]))
        else:
            print("ndpiReader: not installed (apt-get install libndpi-bin)")
        results: dict[str, tuple[float, int]] = {}
        print(f"\n{'tool':<20} {'seconds':>8} {'packets/s':>11} {'peak RSS':>10}")
        for name, cmd in tools:
            secs, rss, rc = run_measured(cmd)
            if rc != 0:
                print(f"{name:<20} failed with exit status {rc}")
                continue
            results[name] = (secs, rss)
            print(f"{name:<20} {secs:>8.2f} {n / secs:>11,.0f} {rss / 1e6:>8.0f} MB")
        ours = results.get("phonehome analyze")
        if ours:
            print()
            for other in ("ndpiReader", "tshark"):
                if other in results:
                    ratio = results[other][0] / ours[0]
                    print(f"analyze vs {other}: {ratio:.2f}x the packets/s")
            print(f"analyze peak memory: {ours[1] / 1e6:.0f} MB")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
