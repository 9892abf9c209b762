"""Coverage figure (issue 19): how many named flows get a company as their party.

    python -m bench.party_coverage [CAPTURE ...] [--state DIR] [--synthetic] [--unmapped]

Runs `phonehome analyze --json` on the captures (pcap/pcapng; default: the public real-traffic
captures committed under tests/captures/, each set on its own and all together: `quic/`, QUIC
client first flights from nDPI's and Zeek's test suites, and `apps/`, the TLS, QUIC and DNS
first flights of 48 captures of app and online-service traffic (Android and iOS apps among
them) from nDPI's test suite; see tests/README.md) and
prints, over the flows that have a server name, the share - of flows and of bytes - whose
party is a company or organisation (from the vendor map or the domain-owner dataset) rather
than a bare registrable domain, and the bare domains that carry the most bytes (the next
entries worth adding to sensor/data/vendors_services.toml).

Two definitions of "named", both printed:
- every server-name value: whatever a flow carries as its name (SNI, Host header, DNS
  question), including an address written as a name ("192.0.2.1") and a single label
  ("localhost", "test");
- DNS names (the headline figure): those two left out. An address or a single label names no
  one that a name could be owned by: its party is null by design and the hosting side (cloud
  provider, AS) speaks for it, so it can be neither a company nor a bare domain. So is any
  other name without a registrable domain ("not a DNS name", e.g. one whose domain label the
  sensor wrote redacted as data: "www.….com"). The flows left out are counted, by kind, on
  the line, never dropped silently.

`--unmapped` lists every name whose party is not a company (bare domains, addresses, single
labels), with its flows, bytes and captures. `--state` points at a state directory after
`phonehome update-data`, so the fetched datasets take part; `--synthetic` uses the synthetic
home capture that `sensor.lab.synth.sample_home` writes instead.

The captures hold first flights only (ClientHellos, QUIC Initials, DNS), so a flow's bytes are
those of its handshake: the byte share weighs flows by their first flight, not by volume.

Goal: at least 90 % of named flows and bytes.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Final

from sensor.analyze import analyze
from sensor.enrich.party import COMPANY_SOURCES
from sensor.lab.synth import write_sample

GOAL = 0.90


CAPTURES = Path(__file__).resolve().parent.parent / "tests" / "captures"
SETS = ("quic", "apps")


def _flows(captures: list[Path], state: Path | None, tmp: str) -> list[dict[str, Any]] | None:
    state_dir = state if state is not None else Path(tmp) / "state"
    cfg = Path(tmp) / "c.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{state_dir}"\n')
    flows: list[dict[str, Any]] = []
    # One capture at a time, so each flow knows its capture (for --unmapped).
    for capture in captures:
        out, err = io.StringIO(), io.StringIO()
        rc = analyze([str(capture)], str(cfg), as_json=True, out=out, err=err)
        if rc != 0:
            print(err.getvalue(), file=sys.stderr)
            return None
        for r in map(json.loads, out.getvalue().splitlines()):
            if r["type"] == "flow":
                r["_capture"] = capture.name
                flows.append(r)
    return flows


def name_kind(flow: dict[str, Any]) -> str:
    """What a named flow's party is: "company", "bare domain", or why it has none."""
    source = flow.get("party_source")
    if source in COMPANY_SOURCES:
        return "company"
    if source is not None:
        return "bare domain"
    name = str(flow["server_name"]).strip("[]")
    try:
        ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        pass
    else:
        return "address"
    return "single label" if "." not in name.strip(".") else "not a DNS name"


NO_NAME: Final = frozenset({"address", "single label", "not a DNS name"})


def _size(f: dict[str, Any]) -> int:
    return int(f["bytes_up"] + f["bytes_down"])


def shares(rows: list[dict[str, Any]]) -> tuple[int, float, float]:
    """(flows, share of flows, share of bytes) whose party is a company."""
    company = [f for f in rows if name_kind(f) == "company"]
    share = len(company) / len(rows) if rows else 0.0
    total = sum(map(_size, rows))
    share_bytes = sum(map(_size, company)) / total if total else 0.0
    return len(rows), share, share_bytes


def _report(label: str, flows: list[dict[str, Any]]) -> None:
    named = [f for f in flows if f.get("server_name")]
    dns = [f for f in named if name_kind(f) not in NO_NAME]
    print(f"{label}: flows: {len(flows)}, with a server name: {len(named)}")
    left_out = Counter(name_kind(f) for f in named if name_kind(f) in NO_NAME)
    why = ", ".join(f"{k} {v}" for k, v in sorted(left_out.items())) or "none"
    for what, rows in (
        (f"DNS names ({len(named) - len(dns)} left out: {why})", dns),
        ("every server-name value", named),
    ):
        n, share, share_bytes = shares(rows)
        marks = ["met" if v >= GOAL else "NOT met" for v in (share, share_bytes)]
        print(
            f"  party is a company: {share:6.1%} of {n} flows, {what} ({marks[0]}); "
            f"{share_bytes:6.1%} of their bytes ({marks[1]}; goal >= {GOAL:.0%})"
        )
    by_source = Counter(f.get("party_source") for f in named)
    print("  by source: " + ", ".join(f"{k}={v}" for k, v in sorted(by_source.items(), key=str)))
    bare: Counter[str] = Counter()
    for f in named:
        if name_kind(f) == "bare domain":
            bare[f["party"]] += _size(f)
    if bare:
        print("  bare domains by bytes: " + ", ".join(f"{d} {n}" for d, n in bare.most_common(15)))


def _unmapped(flows: list[dict[str, Any]]) -> None:
    """Every name whose party is not a company: kind, party, flows, bytes, captures."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in flows:
        if f.get("server_name") and name_kind(f) != "company":
            rows.setdefault((name_kind(f), f["server_name"]), []).append(f)
    print(f"  not a company ({len(rows)} names):")
    for (kind, name), fs in sorted(rows.items()):
        captures = ", ".join(sorted({f["_capture"] for f in fs}))
        party = fs[0].get("party") or "-"
        size = sum(map(_size, fs))
        print(
            f"    {kind:<14} {name:<32} party {party:<20} {len(fs):3} flows {size:7} B  {captures}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("captures", nargs="*", type=Path)
    ap.add_argument("--state", type=Path, help="state directory after update-data")
    ap.add_argument("--synthetic", action="store_true", help="the synthetic home capture")
    ap.add_argument(
        "--unmapped", action="store_true", help="list the names whose party is not a company"
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="phonehome-coverage-") as tmp:
        sets: dict[str, list[Path]] = {}
        if args.captures:
            sets["captures"] = list(args.captures)
        elif args.synthetic:
            sample = Path(tmp) / "home.pcap"
            write_sample(str(sample))
            sets["synthetic home capture (not real traffic)"] = [sample]
        else:
            for name in SETS:
                sets[f"tests/captures/{name}"] = sorted((CAPTURES / name).glob("*.pcap*"))
        every: list[dict[str, Any]] = []
        for label, captures in sets.items():
            flows = _flows(captures, args.state, tmp)
            if flows is None:
                return 1
            every += flows
            _report(f"{label} ({len(captures)} files)", flows)
            if args.unmapped:
                _unmapped(flows)
        if len(sets) > 1:
            _report("all public captures", every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
