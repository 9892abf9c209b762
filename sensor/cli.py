"""Command line: argument parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from sensor import __version__

DEFAULT_CONFIG = "/etc/phonehome/phonehome.toml"


def _config_option(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` of the commands that read the installed configuration by default."""
    parser.add_argument(
        "--config", metavar="FILE", default=DEFAULT_CONFIG, help="TOML configuration"
    )


DEFAULT_TOP = 40


def _analyze(args: argparse.Namespace) -> int:
    from sensor.analyze import Options, analyze, default_config_path

    if args.json and args.format not in (None, "json"):
        sys.stderr.write(f"phonehome: --json and --format {args.format} disagree\n")
        return 2
    if args.top is not None and args.top < 1:
        sys.stderr.write("phonehome: --top: must be at least 1\n")
        return 2
    options = Options(
        config_path=args.config or default_config_path(),
        config_is_default=args.config is None,
        fmt=args.format or ("json" if args.json else "text"),
        record=args.record,
        home_country=args.home_country,
        identifiers_file=args.identifiers_file,
        top=None if args.all else (args.top or DEFAULT_TOP),
        device=args.device,
        alerts_only=args.alerts_only,
    )
    return analyze(args.captures, options=options)


def _update_data(args: argparse.Namespace) -> int:
    from sensor.config import ConfigError
    from sensor.update import datafiles
    from sensor.validate import load_config

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
    from sensor.lab.demo import main as demo_main

    return demo_main()


def _policy(args: argparse.Namespace) -> int:
    from sensor.enforce import main as policy_main

    extra = [*args.args, "--force"] if args.force else list(args.args)
    return policy_main(args.action, args.config, extra, sys.stdout)


def _lab(args: argparse.Namespace) -> int:
    from sensor.lab import cli as lab

    return lab.main(args.lab_args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phonehome",
        description="Which LAN device phones home to which cloud, where, and what it leaks.",
    )
    p.add_argument("--version", action="version", version=f"phonehome {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser(
        "analyze",
        help="read capture files and report per-device flows (read-only unless --record)",
        description=(
            "Read pcap or pcapng captures (also gzip-, xz- or bzip2-compressed, recognised "
            "by content; '-' for standard input) and report, per device, the servers it "
            "talked to and the alerts. Read-only unless --record: alerts appear in the "
            "output only, and no state file is created or changed."
        ),
    )
    a.add_argument(
        "captures",
        nargs="+",
        metavar="CAPTURE",
        help="pcap or pcapng file, optionally compressed; - for standard input",
    )
    a.add_argument(
        "--config",
        metavar="FILE",
        help=(
            "TOML configuration (default: $PHONEHOME_CONFIG or "
            f"{DEFAULT_CONFIG}, when it exists and is readable)"
        ),
    )
    a.add_argument(
        "--home-country",
        metavar="CC",
        help="home country as an ISO 3166-1 two-letter code (e.g. DE), over the config's",
    )
    a.add_argument(
        "--identifiers-file",
        metavar="FILE",
        help=(
            "your own identifiers, TOML lists per kind (imei, imsi, iccid, phone, mac, "
            'serial, email, android_id, ad_id), e.g. imei = ["..."]; refused when '
            "readable by group or others (chmod 600)"
        ),
    )
    a.add_argument(
        "--format",
        choices=("text", "json", "csv"),
        help="text summary (default), JSON Lines records, or CSV rows of alerts and flows",
    )
    a.add_argument("--json", action="store_true", help="same as --format json")
    a.add_argument(
        "--top",
        metavar="N",
        type=int,
        help=f"rows per device in the text summary (default {DEFAULT_TOP})",
    )
    a.add_argument("--all", action="store_true", help="every row in the text summary")
    a.add_argument(
        "--device",
        metavar="MAC|NAME",
        help="only this device (MAC address, or configured, DHCP or identified name)",
    )
    a.add_argument("--alerts-only", action="store_true", help="only the alerts")
    a.add_argument(
        "--record",
        action="store_true",
        help=(
            "also deliver alerts to the event log and Alertmanager of the configuration, "
            "and keep the identity key, learned identifiers and geo cache in its state "
            "directory (default: nothing is written or sent)"
        ),
    )
    a.set_defaults(func=_analyze)

    r = sub.add_parser("run", help="the live sensor on a gateway (systemd service)")
    _config_option(r)
    r.set_defaults(func=_run)

    d = sub.add_parser(
        "demo", help="the live sensor on the lab gateway watching a phone leak (root)"
    )
    d.set_defaults(func=_demo)

    c = sub.add_parser("check", help="validate configuration and data; say what run would do")
    _config_option(c)
    c.set_defaults(func=_check)

    from sensor.update import datafiles

    u = sub.add_parser(
        "update-data",
        help="download (or import with --from) the cloud providers' IP range files",
        description=datafiles.describe_sources(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    u.add_argument("--config", metavar="FILE", help="TOML configuration")

    datafiles.add_arguments(u)
    u.set_defaults(func=_update_data)

    pol = sub.add_parser(
        "policy",
        help="per-device policy: list (rules, counters) | explain DEVICE DEST | clear [--force]",
    )
    pol.add_argument("action", choices=("list", "explain", "clear"))
    pol.add_argument("args", nargs="*", help="explain: DEVICE (MAC or name) DEST (IP or name)")
    pol.add_argument("--force", action="store_true", help="clear even with policy.fail = closed")
    _config_option(pol)
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
        from sensor.lab import cli as lab

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
