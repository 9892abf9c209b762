"""`phonehome check`: validate configuration and data, and say what `run` would do.

Exit status (README, phonehome(1)):
  0  `run` could start as configured;
  1  data it needs is broken (a downloaded range file, the data manifest);
  2  the configuration is invalid: the file, a file or folder it names, or no home country
     (`sensor.validate`); then the one line says the file, the key and the reason;
  3  this host or user cannot run it: no LAN interface, conntrack accounting off where it is
     required, the service user missing, or (checked by an unprivileged user) capabilities and
     files `run` would lack.
Configuration errors stop the check; broken data (1) wins over environment problems (3).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from pathlib import Path
from typing import Final, TextIO

from sensor.config import Config, ConfigError
from sensor.update import manifest
from sensor.validate import check_files, load_config, require_home_country

EXIT_OK: Final = 0
EXIT_DATA: Final = 1
EXIT_CONFIG: Final = 2
EXIT_ENVIRONMENT: Final = 3

GEO_MAX_AGE_DAYS: Final = 365
"""Geo data older than this gets a warning: address blocks move between countries."""
_GEO_DATE = re.compile(r"(?<!\d)(20\d\d)(\d\d)(\d\d)(?!\d)")


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def check(config_path: str | None, out: TextIO, now: float | None = None) -> int:
    w = out.write
    try:
        cfg = load_config(config_path)
        require_home_country(cfg)
        check_files(cfg)
    except ConfigError as exc:
        w(f"config: INVALID: {exc}\n")
        return EXIT_CONFIG
    w(f"config: {cfg.source}: valid\n")
    _check_site(cfg, out)
    broken = _check_data(cfg, out, time.time() if now is None else now)
    broken += _check_policy(cfg, out)  # rules that can never match
    lacking = _check_live(cfg, out) + _check_privileges(cfg, out)
    if broken:
        w(
            f"result: {broken} data problem(s)"
            + (f", {lacking} environment problem(s)\n" if lacking else "\n")
        )
        return EXIT_DATA
    if lacking:
        w(f"result: {lacking} environment problem(s): run would not work here as it is\n")
        return EXIT_ENVIRONMENT
    w("result: OK\n")
    return EXIT_OK


def _check_site(cfg: Config, out: TextIO) -> None:
    out.write(f"home country: {cfg.site.home_country}\n")
    out.write(f"LAN networks: {', '.join(cfg.site.lan_networks)}\n")


def _check_data(cfg: Config, out: TextIO, now: float) -> int:
    write = out.write
    problems = 0
    state = Path(cfg.paths.state_dir)
    write(f"state directory: {state} ({'present' if state.is_dir() else 'missing'})\n")
    try:
        sources = manifest.load(state / "data" / manifest.MANIFEST)
        for name, info in sorted(sources.items()):
            ts = manifest.parse_time(info.get("fetched"))
            age = f", {_age(now - ts)} old" if ts else ""
            err = f", last error: {info['last_error']}" if info.get("last_error") else ""
            write(f"  data {name}: {info.get('records', '?')} records{age}{err}\n")
    except FileNotFoundError:
        write("  cloud ranges: none yet (run `phonehome update-data`)\n")
    except (OSError, ValueError) as exc:
        write(f"  data manifest unreadable: {exc}\n")
        problems += 1
    try:
        from sensor.enrich.stage import Enricher

        enricher = Enricher.load(cfg)
        status = enricher.status()
        write(f"  geo: {'; '.join(status.geo)}\n")
        for line in geo_age_lines(status.geo, now):
            write(f"  {line}\n")
        write(
            f"  cloud: {', '.join(status.cloud_sources) or 'none'} "
            f"({status.cloud_prefixes} prefixes)\n"
        )
        write(f"  relays: {'; '.join(enricher.relays.describe())}\n")
        for err in status.errors:
            write(f"  data error: {err}\n")
            problems += 1
    except (OSError, ValueError) as exc:
        write(f"  data: cannot load: {exc}\n")
        problems += 1
    return problems


def _check_policy(cfg: Config, out: TextIO) -> int:
    """The policy compiled against the data as `run` would load it: a class with no address
    (an ASN the embedded data cannot place, a cloud region with no range file) or a party
    vendors.toml does not know is a problem, since such a rule can never match."""
    write = out.write
    p = cfg.policy
    if not p.rules:
        write("policy: no rules\n")
        return 0
    from sensor.enforce import EnricherData
    from sensor.enrich.stage import Enricher
    from sensor.policy import compile_policy

    try:
        data = EnricherData(Enricher.load(cfg))
        compiled = compile_policy(p, cfg.devices, ["lan"], data, time.time())
    except (OSError, ValueError) as exc:
        write(f"policy: cannot compile: {exc}\n")
        return 1
    state = "enforced" if p.enabled else "checked only (policy.enabled = false)"
    write(f"policy: {len(p.rules)} rules, {state}, fail {p.fail}\n")
    problems = 0
    for r in compiled.rules:
        rule = r.rule
        write(f"  {r.index + 1}. {rule.name}: {rule.action}{' (expired)' if r.expired else ''}\n")
        for party in rule.parties:
            if not data.party_domains(party):
                write(f"     party {party!r}: not in vendors.toml, matches nothing\n")
                problems += 1
    for name, size in sorted(compiled.class_sizes.items()):
        if size == 0 and name.endswith("_4") and compiled.class_sizes.get(name[:-2] + "_6") == 0:
            write(f"     {name[:-2]}: no addresses in the data, matches nothing\n")
            problems += 1
    return problems


def _check_live(cfg: Config, out: TextIO) -> int:
    write = out.write
    problems = 0
    try:
        from sensor.kernel import conntrack, links

        ifaces = list(cfg.daemon.interfaces) or links.interfaces_for_prefixes(cfg.site.lan_networks)
        acct = conntrack.accounting_enabled()
    except (ImportError, OSError) as exc:
        write(f"live capture: cannot inspect this host: {exc}\n")
        return 1  # an environment problem
    write(f"interfaces: {', '.join(ifaces) or 'NONE (set daemon.interfaces)'}\n")
    if not ifaces:
        problems += 1
    state = {True: "on", False: "OFF (enable net.netfilter.nf_conntrack_acct=1)", None: "absent"}
    write(f"conntrack accounting: {state[acct]}\n")
    mode = cfg.daemon.accounting
    if mode == "auto":
        mode = "conntrack" if acct else "capture"
    if cfg.daemon.accounting == "conntrack" and not acct:
        problems += 1
    capture = cfg.daemon.capture
    if capture == "auto":
        capture = "nflog" if mode == "conntrack" else "packet"
    write(f"would run: capture {capture}, accounting {mode}\n")
    return problems


def _check_privileges(cfg: Config, out: TextIO) -> int:
    """As root: the service user `run` drops to. Otherwise: what `run` started by this user
    would lack (capabilities, the state directory)."""
    from sensor import privileges

    write = out.write
    if os.geteuid() == 0:
        user = cfg.daemon.user
        if user and privileges.user_exists(user):
            write(f"privileges: root; run drops to user {user}\n")
            return 0
        if cfg.daemon.allow_root:
            write("privileges: root; run stays root (daemon.allow_root)\n")
            return 0
        write(
            f"privileges: user {user!r} does not exist and daemon.allow_root is off: run would "
            "refuse (create the user, or set daemon.user / daemon.allow_root)\n"
        )
        return 1
    problems = 0
    try:
        caps = privileges.effective_capabilities()
    except OSError:
        caps = 0
    missing = [
        name
        for name, bit in (
            ("CAP_NET_ADMIN", privileges.CAP_NET_ADMIN),
            ("CAP_NET_RAW", privileges.CAP_NET_RAW),
        )
        if not caps & (1 << bit)
    ]
    if missing:
        write(
            f"privileges: uid {os.geteuid()} lacks {', '.join(missing)}: run started by this user "
            "could not install its nftables rules or capture; start it as root or as "
            "phonehome.service (it drops to the service user keeping only those two)\n"
        )
        problems += 1
    state = Path(cfg.paths.state_dir)
    if state.is_dir() and not os.access(state, os.R_OK | os.W_OK | os.X_OK):
        write(
            f"privileges: {state} is not readable and writable by uid {os.geteuid()}: run could "
            "not keep its state there, and this check cannot see all its data (run check as root)\n"
        )
        problems += 1
    elif not state.exists() and not os.access(_nearest_dir(state), os.W_OK):
        write(f"privileges: uid {os.geteuid()} cannot create {state}\n")
        problems += 1
    return problems


def _nearest_dir(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.is_dir():
            return parent
    return Path("/")


def geo_age_lines(geo: tuple[str, ...] | list[str], now: float) -> list[str]:
    """The date of each geo data set that names one (the embedded GeoLite2 file does:
    ``...-20240618``), with a warning when it is over `GEO_MAX_AGE_DAYS` old."""
    lines = []
    for desc in geo:
        m = _GEO_DATE.search(desc)
        if m is None:
            continue
        try:
            day = dt.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            continue
        age = (dt.datetime.fromtimestamp(now, dt.UTC).date() - day).days
        name = desc.split(":", 1)[0]
        if age > GEO_MAX_AGE_DAYS:
            lines.append(
                f"geo data date: {day.isoformat()} ({name}), WARNING: {age} days old; country "
                "answers drift as address blocks move: set geo.country_db to a current "
                "MaxMind-format database, or upgrade phonehome"
            )
        else:
            lines.append(f"geo data date: {day.isoformat()} ({name}), {age} days old")
    return lines
