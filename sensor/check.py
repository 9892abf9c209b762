"""`phonehome check`: validate configuration and data, and say what `run` would do.

Exit status 0 when `run` could start as configured, 1 when something would stop it (or data it
needs is broken), 2 when the configuration itself is invalid: the file, or a file or folder it
names (`config.check_files`). Then the one line says the file, the key and the reason.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TextIO

from sensor.config import Config, ConfigError, check_files, load_config


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def check(config_path: str | None, out: TextIO) -> int:
    w = out.write
    try:
        cfg = load_config(config_path)
        check_files(cfg)
    except ConfigError as exc:
        w(f"config: INVALID: {exc}\n")
        return 2
    w(f"config: {cfg.source}: valid\n")
    problems = 0
    problems += _check_site(cfg, out)
    problems += _check_data(cfg, out)
    problems += _check_live(cfg, out)
    problems += _check_policy(cfg, out)
    w("result: OK\n" if problems == 0 else f"result: {problems} problem(s)\n")
    return 0 if problems == 0 else 1


def _check_site(cfg: Config, out: TextIO) -> int:
    write = out.write
    home = cfg.site.home_country
    write(f"home country: {home or 'UNSET (abroad cannot be judged; set site.home_country)'}\n")
    write(f"LAN networks: {', '.join(cfg.site.lan_networks)}\n")
    return 0


def _check_data(cfg: Config, out: TextIO) -> int:
    write = out.write
    problems = 0
    state = Path(cfg.paths.state_dir)
    write(f"state directory: {state} ({'present' if state.is_dir() else 'missing'})\n")
    manifest = state / "data" / "manifest.json"
    now = time.time()
    try:
        data = json.loads(manifest.read_bytes())
        sources = data.get("sources", data) if isinstance(data, dict) else {}
        if not isinstance(sources, dict):
            raise ValueError("no sources table")
        for name, info in sorted(sources.items()):
            if not isinstance(info, dict):
                continue
            fetched = info.get("fetched") or info.get("date") or info.get("updated")
            ts = _parse_time(fetched)
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

        status = Enricher.load(cfg).status()
        write(f"  geo: {'; '.join(status.geo)}\n")
        write(
            f"  cloud: {', '.join(status.cloud_sources) or 'none'} "
            f"({status.cloud_prefixes} prefixes)\n"
        )
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
        from sensor import netlink

        ifaces = list(cfg.daemon.interfaces) or netlink.interfaces_for_prefixes(
            cfg.site.lan_networks
        )
        acct = netlink.accounting_enabled()
    except (ImportError, OSError) as exc:
        write(f"live capture: cannot inspect this host: {exc}\n")
        return 1
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
    if os.geteuid() == 0 and not cfg.daemon.allow_root:
        from sensor import privileges

        user = cfg.daemon.user
        if not user or not privileges.user_exists(user):
            write(f"privileges: user {user!r} missing and allow_root is off: run would refuse\n")
            problems += 1
    return problems


def _parse_time(value: object) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None
