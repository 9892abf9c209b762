"""Benchmark: what marking relays and classifying visibility costs per flow (issue 16).

    python -m bench.visibility_bench [--flows 100000] [--vpn-entries 20000] [--seed 1]

Builds a relay matcher as a daemon holds it once update-data ran: Private Relay's names, a Tor
list of 10,000 ORPorts (the network's size) and two VPN lists of `--vpn-entries` addresses and
prefixes each, all made up in documentation-like space. Then prints, per flow:

- `RelayMatcher.match` uncached (every destination new) and cached (the exporter asks again
  for every live flow at each scrape);
- `Enricher.visibility` (site locality + relay + class), what the exporter runs per live flow
  that changed since the last scrape, on destinations that repeat as traffic does (1 in 8):
  the first pass (every server new to the caches) and the next (a running daemon).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import time

from sensor.enrich.relays import AddressList, RelayMatcher, TorRelays, embedded
from sensor.model import Flow
from sensor.visibility import Locality, classify


def _addr(rng: random.Random) -> str:
    return str(ipaddress.IPv4Address(rng.randrange(1 << 24, 223 << 24)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--vpn-entries", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    names, _ = embedded()
    tor = TorRelays(frozenset((_addr(rng), rng.choice((443, 9001))) for _ in range(10_000)))
    vpns = {
        f"list{i}": AddressList.build(
            ipaddress.ip_network(f"{_addr(rng)}/{rng.choice((32, 32, 32, 28, 24))}", strict=False)
            for _ in range(args.vpn_entries)
        )
        for i in range(2)
    }
    # A server is reached under one name or none; one in thirty is Private Relay's ingress.
    servers = [
        (
            _addr(rng),
            rng.choice((None, f"api{n}.example.com", "mask.icloud.com")[: 2 + (n % 10 == 0)]),
        )
        for n in range(max(1, args.flows // 8))
    ]
    flows = []
    for i in range(args.flows):
        ip, name = rng.choice(servers)
        flows.append(Flow(f"F{i}", "tcp", "192.168.1.2", 40000, ip, 443, None, 0.0, 0.0,
                          server_name=name, name_source="tls" if name else None))  # fmt: skip
    print(f"== relays and visibility: {args.flows} flows, {len(servers)} servers ==")
    print(f"tor ORPorts {len(tor)}, VPN lists 2 x {args.vpn_entries} entries")

    matcher = RelayMatcher(names, tor, vpns)
    uncached = [Flow(f"U{i}", "tcp", "192.168.1.2", 1, _addr(rng), 443, None, 0.0, 0.0)
                for i in range(args.flows)]  # fmt: skip
    t = time.perf_counter()
    for f in uncached:
        matcher.match(f)
    first = (time.perf_counter() - t) / len(uncached) * 1e6
    matcher = RelayMatcher(names, tor, vpns)
    for f in flows:
        matcher.match(f)
    t = time.perf_counter()
    for f in flows:
        matcher.match(f)
    cached = (time.perf_counter() - t) / len(flows) * 1e6
    print(f"relay match: {first:.2f} us/flow uncached, {cached:.2f} us/flow cached")

    local = Locality(("192.168.0.0/16", "fd00::/8"))

    def classify_all() -> float:
        t = time.perf_counter()
        for f in flows:
            if not local(f.dst_ip):
                classify(f) if matcher.match(f) is None else "relay"
        return (time.perf_counter() - t) / len(flows) * 1e6

    cold = classify_all()
    vis = classify_all()
    print(f"visibility (locality + relay + class): {cold:.2f} us/flow first, {vis:.2f} warm")
    print(f"10,000 live flows changed since the last scrape: {vis * 10_000 / 1000:.1f} ms a scrape")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
