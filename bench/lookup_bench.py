"""Benchmark: geo (country/ASN), cloud (provider/region), IP-to-ASN and party lookups.

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

- issue 19: the same with every dataset loaded as the daemon holds them (`Enricher`): the
  embedded geo data, every range file, an IP-to-ASN dataset and a domain-owner dataset, the
  vendor map and the cloud AS table. The real iptoasn and Exodus files cannot be downloaded
  here, so the bench writes files of their real format and size (650,000 ranges of ~75,000
  ASes; 12,000 owner names). One lookup is one flow's geo + cloud + ASN + party:
  the daemon's path (`Enricher.destination`, which remembers 65,536 destinations) on flows
  that repeat servers as traffic does (1 distinct in 8), in the steady state of a running
  daemon (every server met once before the clock starts); the same without the destination
  cache (`Enricher._destination`: geo, name and AS caches still on); and cold (no geo cache,
  every name new).

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

from sensor.enrich import asn as asn_data
from sensor.enrich.cloud import CLOUD_SOURCES, CloudAsns, CloudRanges
from sensor.enrich.device import DeviceIdentifier, OuiRegistry
from sensor.enrich.geo import EmbeddedGeo, GeoDB, key_text
from sensor.enrich.party import DomainOwners, PartyResolver
from sensor.enrich.stage import Enricher
from sensor.enrich.vendors import VendorMap
from tests.shared_data import CLOUD_FILES, SHARED

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = SHARED
SHARED_FILES = CLOUD_FILES  # source name -> the shared folder's file name

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


ASN_RANGES = (450_000, 200_000)
"""IPv4 and IPv6 ranges of the synthetic IP-to-ASN file (iptoasn's combined file, 2025)."""
ASN_COUNT = 75_000
OWNER_NAMES = 12_000


def write_ip2asn(path: Path, rng: random.Random) -> None:
    """An iptoasn ip2asn-combined.tsv.gz of the real size: sorted, disjoint, gzipped."""
    import gzip

    orgs = [f"AS{n}-NET Example Networks {n % 977} Co., Ltd." for n in range(1, ASN_COUNT + 1)]
    lines = []
    n4, n6 = ASN_RANGES
    step4 = (0xDF000000 - 0x01000000) // n4
    start = 0x01000000
    for _ in range(n4):
        size = rng.randint(256, step4)
        asn = rng.randint(1, ASN_COUNT)
        a, b = key_text((4, start, 0)), key_text((4, start + size - 1, 0))
        lines.append(f"{a}\t{b}\t{asn}\tUS\t{orgs[asn - 1]}\n")
        start += step4
    base = 0x2001 << 112
    step6 = (1 << 112) // n6
    for i in range(n6):
        first = base + i * step6
        last = first + (1 << 80) - 1
        asn = rng.randint(1, ASN_COUNT)
        a = key_text((6, first >> 64, first & ((1 << 64) - 1)))
        b = key_text((6, last >> 64, last & ((1 << 64) - 1)))
        lines.append(f"{a}\t{b}\t{asn}\tDE\t{orgs[asn - 1]}\n")
    path.write_bytes(gzip.compress("".join(lines).encode(), 6))


def owner_hosts(rng: random.Random) -> list[tuple[str, str]]:
    return [
        (f"sdk{i}-{rng.randrange(1 << 30):x}.example", f"Tracker {i // 3}")
        for i in range(OWNER_NAMES)
    ]


def write_owners(path: Path, rng: random.Random) -> None:
    """A Disconnect-style entity list of OWNER_NAMES names."""
    entities: dict[str, dict[str, list[str]]] = {}
    for host, org in owner_hosts(rng):
        entities.setdefault(org, {"properties": [], "resources": []})["resources"].append(host)
    path.write_text(json.dumps({"license": "synthetic", "entities": entities}))


def load_all(data: Path, cache_dir: Path, extra: Path) -> Enricher:
    """Every dataset, as `Enricher.load` holds them."""
    vendors = VendorMap.load()
    geo = GeoDB(
        embedded=EmbeddedGeo.load(cache_dir=cache_dir),
        asn_data=asn_data.parse((extra / "ip2asn-combined.tsv.gz").read_bytes()),
    )
    owners = DomainOwners.parse((extra / "owners.json").read_bytes())
    return Enricher(
        geo,
        CloudRanges.load_files(find_files(data)),
        vendors,
        DeviceIdentifier(OuiRegistry()),
        "ID",
        parties=PartyResolver(vendors, owners),
        cloud_asns=CloudAsns.load(),
    )


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
    elif mode == "asn":
        obj = asn_data.parse((cache_dir / "ip2asn-combined.tsv.gz").read_bytes())
    elif mode == "party":
        vendors = VendorMap.load()
        owners = DomainOwners.parse((cache_dir / "owners.json").read_bytes())
        obj = PartyResolver(vendors, owners)
    elif mode == "all":
        obj = load_all(data, cache_dir, cache_dir)
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
    if "geo" in mode:
        result["ranges"] = len(obj.country_index) + len(obj.asn_index)
    elif mode == "party":
        result["ranges"] = len(obj.vendors.entries) + len(obj.owners or ())
    elif mode == "all":
        result["ranges"] = 0
    else:
        result["ranges"] = len(obj)
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
    ap.add_argument("--skip-load", action="store_true", help="skip the load/memory table")
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
        synth_rng = random.Random(args.seed)
        write_ip2asn(cache_dir / "ip2asn-combined.tsv.gz", synth_rng)
        write_owners(cache_dir / "owners.json", synth_rng)
        print(
            "\nload (each in a fresh process)       time    RSS +   peak RSS   heap kept  heap peak"
        )
        total_kept = 0
        modes = () if args.skip_load else ("geo-cold", "geo-warm", "cloud", "asn", "party", "all")
        all_kept = 0
        for mode in modes:
            plain = _run_child(mode, args.data, cache_dir, traced=False)
            traced = _run_child(mode, args.data, cache_dir, traced=True)
            if mode in ("geo-warm", "cloud"):
                total_kept += plain["rss_delta"]
            if mode == "all":
                all_kept = plain["rss_delta"]
            print(
                f"  {mode:<10} {plain['ranges']:>9} ranges  {plain['load_s']:6.2f} s"
                f" {plain['rss_delta'] / mb:7.1f} MB {plain['peak_rss'] / mb:7.1f} MB"
                f" {traced['traced_kept'] / mb:8.1f} MB {traced['traced_peak'] / mb:7.1f} MB"
            )
        print(
            f"  geo (warm) + cloud: {total_kept / mb:.1f} MB RSS growth"
            f" (goal < {GOAL_MB} MB: {'met' if total_kept < GOAL_MB * mb else 'NOT met'})"
        )
        print(
            f"  every dataset (Enricher: geo, cloud, asn, party, cloud ASes):"
            f" {all_kept / mb:.1f} MB RSS growth"
            f" (goal < {GOAL_MB} MB: {'met' if all_kept < GOAL_MB * mb else 'NOT met'})"
        )
        enricher = load_all(args.data, cache_dir, cache_dir)
        cold = load_all(args.data, cache_dir, cache_dir)
        cold.geo = GeoDB(embedded=cold.geo.embedded, asn_data=cold.geo.asn_data, cache_size=0)

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

    # issue 19: one flow = geo + cloud + ASN + party, every dataset loaded
    flows = flow_workload(ips, enricher, rng)
    distinct_flows = flows[: max(1, len(flows) // 8)]
    repeated_flows = [rng.choice(distinct_flows) for _ in range(len(flows))]
    fresh = [(ip, f"{n}.{i}.fresh-{i}.example" if n else None) for i, (ip, n) in enumerate(flows)]

    def flow_rate(e: Enricher, work: Sequence[tuple[str, str | None]]) -> float:
        lookup = e._destination
        if work is repeated_flows:
            for ip, name in distinct_flows:  # warm, as above
                lookup(ip, name)
        t0 = time.perf_counter()
        for ip, name in work:
            lookup(ip, name)
        return len(work) / (time.perf_counter() - t0)

    def daemon_rate(e: Enricher, work: Sequence[tuple[str, str | None]]) -> float:
        lookup = e.destination
        for ip, name in distinct_flows:  # a running daemon has met its servers before
            lookup(ip, 443, name)
        t0 = time.perf_counter()
        for ip, name in work:
            lookup(ip, 443, name)
        return len(work) / (time.perf_counter() - t0)

    flow_results = [
        ("daemon path, flows repeat", daemon_rate(enricher, repeated_flows)),
        ("no destination cache, repeats", flow_rate(enricher, repeated_flows)),
        ("cold: no geo cache, new names", flow_rate(cold, fresh)),
    ]
    dests = [enricher._destination(ip, n) for ip, n in flows[:20_000]]
    with_asn = sum(d.asn is not None for d in dests)
    with_party = sum(d.party is not None for d in dests)
    print(
        f"\nper flow: geo + cloud + ASN + party, every dataset loaded ({len(flows)} flows;"
        f" of 20,000: {with_asn} with an AS number, {with_party} with a party)"
    )
    for label, value in flow_results:
        mark = "" if value >= GOAL_RATE else f"  (below the {GOAL_RATE:,}/s goal)"
        print(f"  {label:<30} {value:>12,.0f} /s{mark}")
    return 0


def flow_workload(
    ips: Sequence[str], enricher: Enricher, rng: random.Random
) -> list[tuple[str, str | None]]:
    """(address, server name) pairs: a fifth without a name, the rest names below the vendor
    map's domains, the owner dataset's hosts, or unknown domains (4:4:4)."""
    mapped = sorted(enricher.vendors.entries)
    owned = sorted(enricher.parties.owners.owners) if enricher.parties.owners else mapped
    out: list[tuple[str, str | None]] = []
    for i, ip in enumerate(ips):
        r = i % 15
        if r < 3:
            name = None
        elif r < 7:
            name = f"api{i % 7}.{rng.choice(mapped)}"
        elif r < 11:
            name = f"e{i % 5}.{rng.choice(owned)}"
        else:
            name = f"cdn{i % 3}.site{rng.randrange(50_000)}.com"
        out.append((ip, name))
    return out


if __name__ == "__main__":
    sys.exit(main())
