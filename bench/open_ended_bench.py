"""Benchmark: connections ended while still open (issue 14), what remembering them costs.

    python -m bench.open_ended_bench [--entries 32768] [--dumps 200000]

The flow table remembers up to `sensor.flows.MAX_OPEN_ENDED` connections whose flow left the
table (size cap, memory shedding, idle sweep) while conntrack still held them, so a later dump
adds only what came since. Prints:

- the Python heap the full memory holds (tracemalloc), total and per connection, with
  realistic keys (IPv4 and IPv6), counters and server names;
- conntrack dump entries per second for remembered connections with nothing new (the periodic
  dump of a phone's idle connections under a flood: no flow is made), and with growth (a
  continuation flow made, then pushed out again by the cap);
- the same entries per second for connections the table holds (the common case, for scale).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

from sensor.config import Config, FlowsConfig
from sensor.flows import MAX_OPEN_ENDED
from sensor.model import Device, Flow
from sensor.pipeline import Pipeline

T0 = 1_700_000_000.0


class _Drop:
    def flow(self, flow: Flow) -> None:
        pass

    def device(self, device: Device) -> None:
        pass


def _addresses(n: int, rng: random.Random) -> list[tuple[str, int, str, int, int]]:
    """(src, sport, dst, dport, ct_id): a third IPv6, the rest IPv4, LAN sources."""
    out = []
    for i in range(n):
        if i % 3 == 2:
            src = f"fd00::{rng.randrange(1, 0xFFFF):x}:{rng.randrange(1, 0xFFFF):x}"
            dst = f"2001:db8::{rng.randrange(1, 0xFFFF):x}"
        else:
            src = f"192.168.{rng.randrange(1, 3)}.{rng.randrange(2, 250)}"
            dst = f"203.0.113.{rng.randrange(1, 255)}"
        out.append((src, 1024 + i % 60000, dst, 443, i + 1))
    return out


def _pipeline(entries: int) -> Pipeline:
    p = Pipeline(Config(flows=FlowsConfig(max_flows=16, end_grace=0.0)), _Drop())
    p.flows.open_ended.size = entries
    return p


def _fill(p: Pipeline, conns: list[tuple[str, int, str, int, int]], rng: random.Random) -> None:
    for i, (src, sport, dst, dport, ct_id) in enumerate(conns):
        p.account_conntrack("tcp", src, sport, dst, dport, rng.randrange(500, 10**7), 20,
                            rng.randrange(500, 10**8), 30, T0 + i * 1e-3, ct_id=ct_id)  # fmt: skip
        entry = next(reversed(p.flows.entries.values()))
        entry.flow.server_name = f"api{rng.randrange(10**6)}.example.com"
    for _ in range(16):  # push the last ones out too
        p.account_conntrack("tcp", "192.168.9.9", rng.randrange(60000), "198.51.100.1", 80,
                            60, 1, 40, 1, T0 + 100)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=MAX_OPEN_ENDED)
    ap.add_argument("--dumps", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    conns = _addresses(args.entries, rng)

    gc.collect()
    p = _pipeline(args.entries)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    _fill(p, conns, random.Random(args.seed))
    p._lan_cache.clear()  # the addresses' LAN lookups: not the memory measured
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    remembered = len(p.flows.open_ended)
    print(f"open_ended: {remembered} connections remembered, heap held {held / 2**20:.1f} MB "
          f"({held / max(1, remembered):.0f} B each; unique 25-character server names, a flow "
          f"table of 16 included)")  # fmt: skip

    # Dumps of remembered connections with nothing new since: no flow made.
    snapshot = dict(p.flows.open_ended.counted)
    by_key = list(snapshot.values())
    n = min(args.dumps, remembered)
    t = time.perf_counter()
    done = 0
    while done < args.dumps:
        for (src, sport, dst, dport, ct_id), prior in zip(conns[:n], by_key[:n], strict=False):
            p.account_conntrack("tcp", src, sport, dst, dport, prior.bytes_up, prior.packets_up,
                                prior.bytes_down, prior.packets_down, T0 + 200,
                                ct_id=ct_id)  # fmt: skip
            done += 1
    dt = time.perf_counter() - t
    print(f"dump entries of remembered connections, nothing new: {done / dt:,.0f}/s "
          f"(flows made: {p.stats()['flows_continued']})")  # fmt: skip

    # With growth: each makes a continuation flow, the cap pushes one out again.
    t = time.perf_counter()
    done = 0
    for (src, sport, dst, dport, ct_id), prior in zip(conns[:n], by_key[:n], strict=False):
        p.account_conntrack("tcp", src, sport, dst, dport, prior.bytes_up + 100,
                            prior.packets_up + 1, prior.bytes_down, prior.packets_down,
                            T0 + 300, ct_id=ct_id)  # fmt: skip
        done += 1
    dt = time.perf_counter() - t
    print(f"dump entries of remembered connections, grown: {done / dt:,.0f}/s "
          f"(continuation flows: {p.stats()['flows_continued']})")  # fmt: skip

    # For scale: dump entries of connections the table holds.
    q = Pipeline(Config(flows=FlowsConfig(end_grace=0.0)), _Drop())
    live = conns[: min(n, 20_000)]
    for src, sport, dst, dport, ct_id in live:
        q.account_conntrack("tcp", src, sport, dst, dport, 500, 5, 900, 5, T0, ct_id=ct_id)
    t = time.perf_counter()
    done = 0
    while done < args.dumps:
        for src, sport, dst, dport, ct_id in live:
            q.account_conntrack("tcp", src, sport, dst, dport, 500, 5, 900, 5, T0 + 1,
                                ct_id=ct_id)  # fmt: skip
            done += 1
    dt = time.perf_counter() - t
    print(f"dump entries of connections in the table, nothing new: {done / dt:,.0f}/s")


if __name__ == "__main__":
    main()
