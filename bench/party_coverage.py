"""Coverage figure (issue 19): how many named flows get a company as their party.

    python -m bench.party_coverage [CAPTURE ...] [--state DIR] [--synthetic]

Runs `phonehome analyze --json` on the captures (pcap/pcapng; default: the public real-traffic
captures committed under tests/captures/, each set on its own and all together: `quic/`, QUIC
client first flights from nDPI's and Zeek's test suites, and `apps/`, the TLS, QUIC and DNS
first flights of Android and iOS app traffic from nDPI's test suite; see tests/README.md) and
prints, over the flows that have a server name, the share - of flows and of bytes - whose
party is a company or organisation (from the vendor map or the domain-owner dataset) rather
than a bare registrable domain, and the bare domains that carry the most bytes (the next
entries worth adding to sensor/data/vendors_services.toml). A second line leaves out the
names that can have no party at all (an address or a single label such as "localhost" in a
Host header or SNI), which are neither. `--state` points at a state directory after
`phonehome update-data`, so the fetched datasets take part; `--synthetic` uses the synthetic
home capture that `sensor.lab.synth.sample_home` writes instead.

The captures hold first flights only (ClientHellos, QUIC Initials, DNS), so a flow's bytes are
those of its handshake: the byte share weighs flows by their first flight, not by volume.

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
from typing import Any

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
    out, err = io.StringIO(), io.StringIO()
    rc = analyze([str(c) for c in captures], str(cfg), as_json=True, out=out, err=err)
    if rc != 0:
        print(err.getvalue(), file=sys.stderr)
        return None
    return [r for r in map(json.loads, out.getvalue().splitlines()) if r["type"] == "flow"]


def _report(label: str, flows: list[dict[str, Any]]) -> None:
    named = [f for f in flows if f.get("server_name")]
    print(f"{label}: flows: {len(flows)}, with a server name: {len(named)}")

    def size(f: dict[str, Any]) -> int:
        return int(f["bytes_up"] + f["bytes_down"])

    # None: a name with no party at all (an address or a single label): neither kind.
    for what, rows in (
        ("named flows", named),
        (
            "named flows that can have a party",
            [f for f in named if f.get("party_source") is not None],
        ),
    ):
        company = [f for f in rows if f.get("party_source") in COMPANY_SOURCES]
        share = len(company) / len(rows) if rows else 0.0
        total = sum(map(size, rows))
        share_bytes = sum(map(size, company)) / total if total else 0.0
        marks = ["met" if v >= GOAL else "NOT met" for v in (share, share_bytes)]
        print(
            f"  party is a company: {share:6.1%} of {what} ({marks[0]}), "
            f"{share_bytes:6.1%} of their bytes ({marks[1]}; goal >= {GOAL:.0%})"
        )
    by_source = Counter(f.get("party_source") for f in named)
    print("  by source: " + ", ".join(f"{k}={v}" for k, v in sorted(by_source.items(), key=str)))
    bare: Counter[str] = Counter()
    for f in named:
        if f.get("party_source") == "domain":
            bare[f["party"]] += size(f)
    if bare:
        print("  bare domains by bytes: " + ", ".join(f"{d} {n}" for d, n in bare.most_common(15)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("captures", nargs="*", type=Path)
    ap.add_argument("--state", type=Path, help="state directory after update-data")
    ap.add_argument("--synthetic", action="store_true", help="the synthetic home capture")
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
        if len(sets) > 1:
            _report("all public captures", every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
