"""Coverage figure (issue 19): how many named flows get a company as their party.

    python -m bench.party_coverage [CAPTURE ...] [--state DIR]

Runs `phonehome analyze --json` on the captures (pcap/pcapng; default: the synthetic home
capture `sensor.synth.sample_home` writes, since no public real-traffic capture ships with
the project) and prints, over the flows that have a server name, the share - of flows and of
bytes - whose party is a company (from the vendor map or the domain-owner dataset) rather than
a bare registrable domain, and the bare domains that carry the most bytes (the next entries
worth adding to sensor/data/vendors_services.toml). `--state` points at a state directory
after `phonehome update-data`, so the fetched datasets take part.

Goal: at least 90 % of named flows and bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from sensor.analyze import analyze
from sensor.enrich.party import COMPANY_SOURCES
from sensor.lab.synth import write_sample

GOAL = 0.90


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("captures", nargs="*", type=Path)
    ap.add_argument("--state", type=Path, help="state directory after update-data")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="phonehome-coverage-") as tmp:
        captures = list(args.captures)
        if not captures:
            sample = Path(tmp) / "home.pcap"
            write_sample(str(sample))
            captures = [sample]
            print("no capture given: the synthetic home capture (not real traffic)")
        state = args.state if args.state is not None else Path(tmp) / "state"
        cfg = Path(tmp) / "c.toml"
        cfg.write_text(f'[paths]\nstate_dir = "{state}"\n')
        out, err = io.StringIO(), io.StringIO()
        rc = analyze([str(c) for c in captures], str(cfg), as_json=True, out=out, err=err)
        if rc != 0:
            print(err.getvalue(), file=sys.stderr)
            return rc
    flows = [r for r in map(json.loads, out.getvalue().splitlines()) if r["type"] == "flow"]
    named = [f for f in flows if f.get("server_name")]
    company = [f for f in named if f.get("party_source") in COMPANY_SOURCES]
    total_bytes = sum(f["bytes_up"] + f["bytes_down"] for f in named)
    company_bytes = sum(f["bytes_up"] + f["bytes_down"] for f in company)
    share = len(company) / len(named) if named else 0.0
    share_bytes = company_bytes / total_bytes if total_bytes else 0.0
    print(f"captures: {', '.join(str(c) for c in captures)}")
    print(f"flows: {len(flows)}, with a server name: {len(named)}")
    for label, value in (("named flows", share), ("bytes of named flows", share_bytes)):
        mark = "met" if value >= GOAL else "NOT met"
        print(f"  party is a company: {value:6.1%} of {label} (goal >= {GOAL:.0%}: {mark})")
    by_source = Counter(f.get("party_source") for f in named)
    # None: a name with no party at all (an address-like or unparsable name)
    print("  by source: " + ", ".join(f"{k}={v}" for k, v in sorted(by_source.items(), key=str)))
    bare: Counter[str] = Counter()
    for f in named:
        if f.get("party_source") == "domain":
            bare[f["party"]] += f["bytes_up"] + f["bytes_down"]
    if bare:
        print("  bare domains by bytes: " + ", ".join(f"{d} {n}" for d, n in bare.most_common(15)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
