"""Command line: argument parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sensor import __version__


def _analyze(args: argparse.Namespace) -> int:
    from sensor.analyze import analyze

    return analyze(args.captures, config_path=args.config, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phonehome",
        description="Which LAN device phones home to which cloud, where, and what it leaks.",
    )
    p.add_argument("--version", action="version", version=f"phonehome {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="read capture files and report per-device flows")
    a.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap or pcapng files")
    a.add_argument("--config", metavar="FILE", help="TOML configuration")
    a.add_argument("--json", action="store_true", help="write JSON Lines records")
    a.set_defaults(func=_analyze)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="phonehome: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    rc: int = args.func(args)
    return rc
