"""Benchmark: geo (country/ASN) and cloud (provider/region) lookups.

    python -m bench.lookup_bench [--lookups 400000] [--data DIR] [--seed 1]

Loads every range file in DIR (default ../shared/data/cloud-ranges beside the repository: AWS,
Google, Azure, Oracle, Cloudflare, Fastly, DigitalOcean, Linode) and the embedded geo data
(geoip2fast), then prints:

- load time and memory of each part, each measured in a fresh child process: RSS growth, peak
  RSS, and the Python heap it keeps (tracemalloc); geo both cold (unpickling the package's
  data) and warm (from the on-disk cache `update-data` prepares);
- lookups/s on a mix of IPv4 and IPv6 addresses, half random, half drawn from the providers'
  real prefixes: geo without its LRU cache, geo with the cache on a workload that repeats
  addresses as flows do, cloud, and both per address.

Goal: >= 200,000 lookups/s and < 150 MB with all providers loaded.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sensor.enrich.cloud import CLOUD_SOURCES, CloudRanges
from sensor.enrich.geo import EmbeddedGeo, GeoDB, key_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cloud-ranges"

# the shared folder's names -> source names
SHARED_FILES = {
    "aws": "aws-ip-ranges.json",
    "google": "google-cloud-ip-ranges.json",
    "azure": "microsoft-azure-ip-ranges.json",
    "oracle": "oracle-cloud-ip-ranges.json",
    "cloudflare-v4": "cloudflare-v4-ip-ranges.txt",
    "cloudflare-v6": "cloudflare-v6-ip-ranges.txt",
    "fastly": "fastly-ip-ranges.json",
    "digitalocean": "digitalocean.csv",
    "linode": "linode.txt",
}

GOAL_RATE = 200_000
GOAL_MB = 150


def _rss() -> tuple[int, int]:
    """(current RSS, peak RSS) in bytes, from /proc."""
    cur = peak = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cur, peak


def find_files(data: Path) -> dict[str, Path]:
    """Source name -> file, under either the shared folder's or the providers' names."""
    published = {s.name: s.filename for s in CLOUD_SOURCES}
    found = {}
    for name in published:
        for candidate in (SHARED_FILES.get(name), published[name]):
            if candidate and (data / candidate).is_file():
                found[name] = data / candidate
                break
    return found


# --- children: one load each, in a clean process ------------------------------------------------


def _child(mode: str, data: Path, cache_dir: Path, traced: bool) -> dict[str, Any]:
    # modules are imported at the top: their cost is not part of the data's footprint
    gc.collect()
    rss0, _ = _rss()
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    if mode == "geo-cold":
        obj: Any = EmbeddedGeo.load()
    elif mode == "geo-warm":
        obj = EmbeddedGeo.load(cache_dir=cache_dir)
    else:
        obj = CloudRanges.load_files(find_files(data))
    elapsed = time.perf_counter() - t0
    gc.collect()
    result: dict[str, Any] = {"mode": mode, "load_s": elapsed}
    if traced:
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result.update(traced_kept=current, traced_peak=peak)
    else:
        rss1, hwm = _rss()
        result.update(rss_delta=rss1 - rss0, peak_rss=hwm, base_rss=rss0)
    result["ranges"] = len(obj.country_index) + len(obj.asn_index) if "geo" in mode else len(obj)
    return result


def _run_child(mode: str, data: Path, cache_dir: Path, traced: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.lookup_bench", "--child", mode, "--data", str(data)]
    cmd += ["--cache-dir", str(cache_dir)] + (["--traced"] if traced else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    parsed: dict[str, Any] = json.loads(out)
    return parsed


# --- workload -------------------------------------------------------------------------------------


def addresses(count: int, data: Path, rng: random.Random) -> list[str]:
    """Half random public-looking addresses, half inside the providers' real prefixes; half
    IPv4, half IPv6."""
    nets: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for name, path in find_files(data).items():
        parse = {s.name: s.parse for s in CLOUD_SOURCES}[name]
        for entry in parse(path.read_bytes()):
            fam, first, last = entry.net
            nets[fam].append((first, last))
    out = []
    for i in range(count):
        fam = 4 if i % 2 == 0 else 6
        if i % 4 < 2 and nets[fam]:
            first, last = rng.choice(nets[fam])
            value = rng.randint(first, last)
        elif fam == 4:
            value = rng.randint(0x01000000, 0xDFFFFFFF)
        else:
            value = rng.getrandbits(125) | (1 << 125)  # 2000::/3
        key = (4, value, 0) if fam == 4 else (6, value >> 64, value & ((1 << 64) - 1))
        out.append(key_text(key))
    return out


def rate(fn: Callable[[str], object], ips: Sequence[str]) -> float:
    t0 = time.perf_counter()
    for ip in ips:
        fn(ip)
    return len(ips) / (time.perf_counter() - t0)


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lookups", type=int, default=400_000)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(_child(args.child, args.data, args.cache_dir, args.traced)))
        return 0

    files = find_files(args.data)
    missing = sorted(set(SHARED_FILES) - set(files))
    note = f" (missing: {missing})" if missing else ""
    print(f"range files: {', '.join(sorted(files))}{note}")
    mb = 1 << 20
    with tempfile.TemporaryDirectory(prefix="phonehome-bench-") as tmp:
        cache_dir = Path(tmp)
        _run_child("geo-warm", args.data, cache_dir, traced=False)  # writes the cache
        print(
            "\nload (each in a fresh process)       time    RSS +   peak RSS   heap kept  heap peak"
        )
        total_kept = 0
        for mode in ("geo-cold", "geo-warm", "cloud"):
            plain = _run_child(mode, args.data, cache_dir, traced=False)
            traced = _run_child(mode, args.data, cache_dir, traced=True)
            if mode != "geo-cold":
                total_kept += plain["rss_delta"]
            print(
                f"  {mode:<10} {plain['ranges']:>9} ranges  {plain['load_s']:6.2f} s"
                f" {plain['rss_delta'] / mb:7.1f} MB {plain['peak_rss'] / mb:7.1f} MB"
                f" {traced['traced_kept'] / mb:8.1f} MB {traced['traced_peak'] / mb:7.1f} MB"
            )
        print(
            f"  geo (warm) + cloud: {total_kept / mb:.1f} MB RSS growth"
            f" (goal < {GOAL_MB} MB: {'met' if total_kept < GOAL_MB * mb else 'NOT met'})"
        )

        rss0, _ = _rss()
        geo_nocache = GeoDB(embedded=EmbeddedGeo.load(cache_dir=cache_dir), cache_size=0)
        geo_cached = GeoDB(embedded=geo_nocache.embedded)
        cloud = CloudRanges.load_files(files)
        gc.collect()
        rss1, hwm = _rss()
        print(
            f"\nthis process with both loaded: RSS +{(rss1 - rss0) / mb:.1f} MB,"
            f" {rss1 / mb:.1f} MB in all (peak {hwm / mb:.1f} MB)"
        )

    rng = random.Random(args.seed)
    ips = addresses(args.lookups, args.data, rng)
    # flows repeat servers: 1/8 distinct addresses, shuffled repeats
    distinct = ips[: max(1, len(ips) // 8)]
    repeated = [rng.choice(distinct) for _ in range(len(ips))]

    def both(ip: str) -> object:
        return geo_nocache.lookup(ip), cloud.lookup(ip)

    results = [
        ("geo, no LRU cache", rate(geo_nocache.lookup, ips)),
        ("geo, LRU cache, repeats", rate(geo_cached.lookup, repeated)),
        ("cloud", rate(cloud.lookup, ips)),
        ("geo + cloud per address", rate(both, ips)),
    ]
    hits = sum(cloud.lookup(ip) is not None for ip in ips)
    print(f"\nlookups ({len(ips)} addresses, IPv4/IPv6 1:1, {hits} in a cloud range)")
    for label, value in results:
        mark = "" if value >= GOAL_RATE else f"  (below the {GOAL_RATE:,}/s goal)"
        print(f"  {label:<26} {value:>12,.0f} /s{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
