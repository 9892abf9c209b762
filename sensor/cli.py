"""Command line: argument parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from sensor import __version__


def _analyze(args: argparse.Namespace) -> int:
    from sensor.analyze import analyze

    return analyze(args.captures, config_path=args.config, as_json=args.json)


def _update_data(args: argparse.Namespace) -> int:
    from sensor.config import ConfigError, load_config
    from sensor.enrich import datafiles

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"phonehome: config error: {exc}\n")
        return 2
    return datafiles.main(args, cfg)


def _run(args: argparse.Namespace) -> int:
    from sensor.daemon import main as daemon_main

    return daemon_main(args.config)


def _check(args: argparse.Namespace) -> int:
    from sensor.check import check

    return check(args.config, sys.stdout)


def _demo(args: argparse.Namespace) -> int:
    from sensor.demo import main as demo_main

    return demo_main()


def _policy(args: argparse.Namespace) -> int:
    from sensor.enforce import main as policy_main

    extra = [*args.args, "--force"] if args.force else list(args.args)
    return policy_main(args.action, args.config, extra, sys.stdout)


def _lab(args: argparse.Namespace) -> int:
    from sensor import lab

    return lab.main(args.lab_args)


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

    r = sub.add_parser("run", help="the live sensor on a gateway (systemd service)")
    r.add_argument(
        "--config",
        metavar="FILE",
        default="/etc/phonehome/phonehome.toml",
        help="TOML configuration",
    )
    r.set_defaults(func=_run)

    d = sub.add_parser(
        "demo", help="the live sensor on the lab gateway watching a phone leak (root)"
    )
    d.set_defaults(func=_demo)

    c = sub.add_parser("check", help="validate configuration and data; say what run would do")
    c.add_argument(
        "--config",
        metavar="FILE",
        default="/etc/phonehome/phonehome.toml",
        help="TOML configuration",
    )
    c.set_defaults(func=_check)

    u = sub.add_parser(
        "update-data",
        help="download (or import with --from) the cloud-range and geo data files",
    )
    u.add_argument("--config", metavar="FILE", help="TOML configuration")
    from sensor.enrich import datafiles

    datafiles.add_arguments(u)
    u.set_defaults(func=_update_data)

    pol = sub.add_parser(
        "policy",
        help="per-device policy: list (rules, counters) | explain DEVICE DEST | clear [--force]",
    )
    pol.add_argument("action", choices=("list", "explain", "clear"))
    pol.add_argument("args", nargs="*", help="explain: DEVICE (MAC or name) DEST (IP or name)")
    pol.add_argument("--force", action="store_true", help="clear even with policy.fail = closed")
    pol.add_argument(
        "--config",
        metavar="FILE",
        default="/etc/phonehome/phonehome.toml",
        help="TOML configuration",
    )
    pol.set_defaults(func=_policy)

    lab = sub.add_parser(
        "lab",
        help="the network-namespace gateway lab (root): up [--traffic] | down | status",
        add_help=False,
    )
    lab.add_argument("lab_args", nargs=argparse.REMAINDER)
    lab.set_defaults(func=_lab)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lab"]:  # the lab has its own sub-commands and help
        from sensor import lab

        return lab.main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="phonehome: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        rc: int = args.func(args)
    except BrokenPipeError:
        # The reader of our output went away (`| head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return rc
