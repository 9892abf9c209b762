"""`phonehome lab` (and `python -m sensor.lab`): build a lab and hold it, list labs, remove
stale ones."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from sensor.lab.netns import DEFAULT_RUN_DIR, Lab, LabError, find_labs, remove_lab
from sensor.lab.scenario import play_demo_traffic


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phonehome lab", description="The namespace gateway lab (needs root)."
    )
    p.add_argument("--run-dir", type=Path, default=None, help=f"default {DEFAULT_RUN_DIR}")
    sub = p.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="build a lab and keep it until Ctrl-C (or --hold)")
    up.add_argument("--traffic", action="store_true", help="play the demo traffic once up")
    up.add_argument("--hold", type=float, default=None, metavar="SECONDS")
    up.add_argument("--no-quic", action="store_true")
    up.add_argument("--route-ipv6", action="store_true", help="route IPv6 instead of NAT66")
    down = sub.add_parser("down", help="remove stale labs (owner process gone)")
    down.add_argument("--all", action="store_true", help="also labs whose owner still runs")
    sub.add_parser("status", help="list labs on this machine")
    return p


def _wait_for_signal(hold: float | None) -> None:
    caught = (signal.SIGINT, signal.SIGTERM)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, caught)
    try:
        if hold is None:
            signal.sigwait(caught)
        else:
            signal.sigtimedwait(caught, hold)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = sys.stdout
    if args.action == "status":
        for info in find_labs(args.run_dir):
            state = "running" if info.alive else "stale"
            out.write(f"{info.id} pid {info.pid} {state}: {' '.join(info.namespaces)}\n")
        return 0
    if args.action == "down":
        for info in find_labs(args.run_dir):
            if args.all or not info.alive:
                remove_lab(info, args.run_dir)
                out.write(f"removed {info.id}\n")
        return 0
    try:
        lab = Lab.create(run_dir=args.run_dir, quic=not args.no_quic, nat66=not args.route_ipv6)
    except LabError as exc:
        sys.stderr.write(f"phonehome lab: {exc}\n")
        return 1
    with lab:
        out.write(json.dumps(lab.describe(), indent=2) + "\n")
        out.write(f"gateway shell: ip netns exec {lab.gw_ns} bash\n")
        if args.traffic:
            for r in play_demo_traffic(lab):
                out.write(
                    f"{r.server.get('proto')} {r.server.get('sni') or r.server.get('host')}: "
                    f"sent {r.sent}, server received {r.received} from {r.server_peer}\n"
                )
        out.flush()
        _wait_for_signal(args.hold)
    return 0
