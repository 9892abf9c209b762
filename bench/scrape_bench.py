"""Figures of the metrics endpoint under hostile and crowded scrapers: the packet loop's pace
before, during and after each attack, connection lifetimes, collections shared.

    python -m bench.scrape_bench

The scenarios are the load tests' own (tests/test_metrics_load.py), which assert only counts
and ordering; this runs them and prints the figures they report, so pace is measured here and
never asserted there (shared machines are noisy).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("packet loop:", "10 dribblers:", "50 scrapers:")


def main() -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         "tests/test_metrics_load.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    print("== metrics endpoint under load (tests/test_metrics_load.py scenarios) ==")
    for line in proc.stdout.splitlines():
        start = next((line.find(f) for f in FIGURES if f in line), -1)
        if start >= 0:
            print(line[start:])
    if proc.returncode != 0:
        print(proc.stdout[-2000:], file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
