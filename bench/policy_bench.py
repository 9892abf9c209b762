"""Issue 17: the per-device policy's costs, in the namespace lab (root).

1. Country sets: compile and load one rule naming CN, US and RU (every prefix the embedded geo
   data has for them, IPv4 and IPv6) into the gateway namespace; load time (`nft -f`, the whole
   table in one transaction), compile time (Python), intervals, and the kernel memory the table
   takes (the slab growth, /proc/meminfo "Slab", median of 3 loads: approximate on a busy host).
2. Throughput and CPU: iperf3 (4 TCP streams, laptop -> "home" server through the NAT gateway)
   with no policy table, with 1,000 rules naming another device (the laptop's packets are
   dispatched past them), and with 1,000 rules naming the laptop, none matching this
   destination (the worst case: each of its packets walks all of them). CPU: the host's busy
   time during the run (/proc/stat), per Gbit transferred.
3. Decision -> last payload: the Redmi uploads continuously (1 KiB every millisecond) to the
   "Singapore" server; a DNS answer then puts that address into a domain rule's set (what the
   daemon does). Measured: from the decision (before the `nft` call) to the set element being in
   force (the call returns), and to the last payload byte the server received. Goal < 1 s.

Run: `make bench` (or `sudo .venv/bin/python -m bench.policy_bench`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sensor.config import parse_config
from sensor.enforce import Enforcer, EnricherData, load, remove
from sensor.enrich.stage import Enricher
from sensor.lab import Lab
from sensor.policy import compile_policy

HOME = "192.0.2.80"
SG = "198.51.100.20"
IPERF_PORT = 5201

SINK = r"""
import socket, sys, time
s = socket.create_server(("0.0.0.0", 9000))
print("ready", flush=True)
c, _ = s.accept()
last = 0.0
n = 0
c.settimeout(3.0)
while True:
    try:
        b = c.recv(65536)
    except OSError:
        break
    if not b:
        break
    n += len(b)
    last = time.time()
print(f"{n} {last}", flush=True)
"""

UPLOAD = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], 9000), timeout=5)
end = time.monotonic() + 30
try:
    while time.monotonic() < end:
        c.sendall(b"x" * 1024)
        time.sleep(0.001)
except OSError:
    pass
"""


def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def busy_jiffies() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle


def country_sets(lab: Lab) -> None:
    cfg = parse_config(
        {
            "policy": {
                "rules": [
                    {"name": "no-cn-us-ru", "action": "block", "countries": ["CN", "US", "RU"]}
                ]
            }
        }
    )
    enricher = Enricher.load(cfg)
    t0 = time.perf_counter()
    compiled = compile_policy(
        cfg.policy, cfg.devices, [lab.lan_bridge], EnricherData(enricher), time.time()
    )
    compile_s = time.perf_counter() - t0
    loads, mems = [], []
    for _ in range(3):
        remove(netns=lab.gw_ns)
        time.sleep(0.5)
        slab0 = meminfo("Slab") + meminfo("Percpu")
        t0 = time.perf_counter()
        load(compiled, netns=lab.gw_ns)
        loads.append(time.perf_counter() - t0)
        time.sleep(0.5)
        mems.append(meminfo("Slab") + meminfo("Percpu") - slab0)
    remove(netns=lab.gw_ns)
    sizes = compiled.class_sizes
    total = sum(sizes.values())
    print("== country sets: CN, US and RU at once ==")
    for name, n in sorted(sizes.items()):
        print(f"  {name}: {n} intervals")
    print(f"  {total} intervals, script {len(compiled.script) / 1e6:.1f} MB")
    print(f"  compile (Python): {compile_s:.2f} s")
    print(f"  load (nft -f, one transaction): median {statistics.median(loads):.2f} s")
    print(
        f"  kernel memory (slab growth): median {statistics.median(mems) / 2**20:.1f} MiB "
        f"({statistics.median(mems) / max(total, 1):.0f} bytes per interval)"
    )


def iperf(lab: Lab, seconds: float, streams: int) -> dict[str, Any]:
    out = lab.exec(
        "laptop",
        ["iperf3", "-c", HOME, "-p", str(IPERF_PORT), "-P", str(streams), "-t", str(seconds), "-J"],
        timeout=seconds + 30,
        check=True,
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def thousand_rules(lab: Lab, device: str) -> Any:
    """1,000 block rules naming `device`, none matching the home server (empty AS sets)."""
    mac = lab.devices[device].mac
    rules = [
        {"name": f"r{i}", "action": "block", "devices": [mac], "asns": [65000 + i]}
        for i in range(1000)
    ]
    cfg = parse_config({"policy": {"rules": rules}})
    enricher = Enricher.load(cfg)
    return compile_policy(
        cfg.policy, cfg.devices, [lab.lan_bridge], EnricherData(enricher), time.time()
    )


def throughput(lab: Lab, seconds: float, streams: int) -> None:
    lab.ns_popen(
        lab.wan_ns,
        ["iperf3", "-s", "-B", HOME, "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    print(f"== iperf3, {streams} streams, {seconds:.0f} s, laptop -> home through the gateway ==")
    cases = [
        ("no policy table", None),
        ("1,000 rules naming another device (the Redmi)", thousand_rules(lab, "xiaomi")),
        ("1,000 rules naming the laptop, none matching", thousand_rules(lab, "laptop")),
    ]
    for label, compiled in cases:
        if compiled is not None:
            t0 = time.perf_counter()
            load(compiled, netns=lab.gw_ns)
            print(f"  ({label}: loaded in {time.perf_counter() - t0:.2f} s)")
        j0 = busy_jiffies()
        res = iperf(lab, seconds, streams)
        busy = (busy_jiffies() - j0) / 100
        sent = res["end"]["sum_sent"]
        gbit = sent["bytes"] * 8 / 1e9
        print(
            f"  {label}: {sent['bits_per_second'] / 1e9:.2f} Gbit/s, "
            f"host CPU {busy:.1f} s busy ({busy / max(gbit, 1e-9):.2f} CPU-s per Gbit)"
        )
    remove(netns=lab.gw_ns)


def decision_latency(lab: Lab, trials: int) -> None:
    redmi = lab.devices["xiaomi"]
    cfg = parse_config(
        {
            "devices": [{"mac": redmi.mac, "name": "Redmi"}],
            "policy": {
                "resolvers": ["192.0.2.53"],
                "rules": [
                    {
                        "name": "no-mistat",
                        "action": "block",
                        "devices": ["Redmi"],
                        "domains": ["mistat.xiaomi.com"],
                    }
                ],
            },
        }
    )
    enricher = Enricher.load(cfg)
    commits, lasts = [], []
    for _ in range(trials):
        compiled = compile_policy(
            cfg.policy, cfg.devices, [lab.lan_bridge], EnricherData(enricher), time.time()
        )
        enf = Enforcer(
            compiled, resolvers=["192.0.2.53"], abroad_expiry=60, abroad_max=4, netns=lab.gw_ns
        )
        enf.install()
        enf.learn_neighbour(redmi.ipv4, redmi.mac)
        sink = lab.ns_popen(
            lab.wan_ns,
            [sys.executable, "-c", SINK],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        up = lab.popen("xiaomi", [sys.executable, "-c", UPLOAD, SG])
        time.sleep(1.0)
        decided = time.time()
        enf.dns_answer("192.0.2.53", "data.mistat.xiaomi.com", SG, 300)
        committed = time.time()
        out, _ = sink.communicate(timeout=30)
        up.wait(40)
        _n, last = out.split()
        commits.append(committed - decided)
        lasts.append(max(0.0, float(last) - decided))
        enf.remove()
    print(f"== decision -> block, {trials} trials (a DNS answer fills a domain rule's set) ==")
    print(
        f"  element in force (nft call returned): median {statistics.median(commits) * 1e3:.0f} "
        f"ms, max {max(commits) * 1e3:.0f} ms"
    )
    print(
        f"  last payload byte at the server after the decision: median "
        f"{statistics.median(lasts) * 1e3:.0f} ms, max {max(lasts) * 1e3:.0f} ms (goal < 1000 ms)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="phonehome-policy-bench-"), Lab.create() as lab:
        country_sets(lab)
        throughput(lab, args.seconds, args.streams)
        decision_latency(lab, args.trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
