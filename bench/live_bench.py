"""Benchmark: the live daemon on the lab gateway under bulk traffic and under many short flows.

    python -m bench.live_bench [--seconds 8] [--streams 4] [--flow-seconds 5]   (root)

1. Bulk: iperf3 (Debian's) pushes TCP from the laptop through the NAT gateway to a server "in
   China", several streams, once without and once with `phonehome run` in the gateway. Prints
   the daemon's CPU seconds per GB forwarded, the share of packets that reached Python, the
   kernel's drop counters, and the accounting error (the daemon's conntrack byte counts against
   what iperf3 sent). Goal: < 1 CPU-second per 10 GB, zero drops, error < 0.1%.
2. Flow rate: clients on three devices open short TCP connections as fast as they can; prints
   the connections/s offered and whether the daemon kept up (drops, overruns, flows counted).
Traffic stays inside the lab's namespaces; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sensor.lab import Lab, sensor_config

SERVER = "203.0.113.10"
IPERF_PORT = 5201
SINK_PORT = 7000
TICK = os.sysconf("SC_CLK_TCK")

_FLOOD = r"""
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    s = socket.create_connection((host, port), timeout=2)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    s.close()
    n += 1
print(n)
"""

_SINK = r"""
import socket, sys, threading
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=4096)
def drain(c):
    try:
        c.recv(4096)
    finally:
        c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def iperf(lab: Lab, seconds: float, streams: int) -> dict[str, Any]:
    out = lab.exec(
        "laptop",
        [
            "iperf3",
            "-c",
            SERVER,
            "-p",
            str(IPERF_PORT),
            "-P",
            str(streams),
            "-t",
            str(seconds),
            "-J",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def start_daemon(lab: Lab, base: Path) -> tuple[subprocess.Popen[Any], Path]:
    state = base / "state"
    state.mkdir(exist_ok=True)
    cfg = base / "phonehome.toml"
    cfg.write_text(sensor_config(lab, state))
    log = (base / "daemon.log").open("w")
    proc = lab.gw_popen(
        [sys.executable, "-m", "sensor", "run", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    snap = state / "flows.json"
    end = time.monotonic() + 20
    while not snap.exists():
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit(Path(log.name).read_text())
        time.sleep(0.1)
    return proc, snap


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def bulk(lab: Lab, base: Path, seconds: float, streams: int) -> None:
    lab.ns_popen(
        lab.wan_ns,
        ["iperf3", "-s", "-B", SERVER, "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    plain = iperf(lab, seconds, streams)
    gbps = plain["end"]["sum_sent"]["bits_per_second"] / 1e9
    print(f"without the daemon: {gbps:.1f} Gbit/s through the gateway")

    proc, snap = start_daemon(lab, base)
    try:
        time.sleep(1.0)
        cpu0 = cpu_seconds(proc.pid)
        before = json.loads(snap.read_text())["stats"]
        res = iperf(lab, seconds, streams)
        time.sleep(2.5)  # a conntrack dump and a snapshot after the transfer
        cpu = cpu_seconds(proc.pid) - cpu0
        s = json.loads(snap.read_text())
    finally:
        stop(proc)
    sent = res["end"]["sum_sent"]["bytes"]
    gbps = res["end"]["sum_sent"]["bits_per_second"] / 1e9
    # Only this run's connections (the first run's linger in conntrack as TIME_WAIT).
    ports = {c["local_port"] for c in res["start"]["connected"]}
    flows = [
        f
        for f in s["flows"] + s["ended"]
        if f["dst_ip"] == SERVER and f["dst_port"] == IPERF_PORT and f["src_port"] in ports
    ]
    bytes_up = sum(f["bytes_up"] for f in flows)
    packets = sum(f["packets_up"] + f["packets_down"] for f in flows)
    payload = bytes_up - 52 * sum(f["packets_up"] for f in flows)
    src, src0 = s["stats"]["source"], before["source"]
    delivered = src.get("delivered", 0) - src0.get("delivered", 0)
    drops = src.get("drops", 0) + src.get("overruns", 0)
    gb = sent / 1e9
    print(
        f"with the daemon:    {gbps:.1f} Gbit/s, {gb:.1f} GB sent in {seconds:.0f} s, "
        f"{len(flows)} iperf3 flows"
    )
    print(f"  daemon CPU: {cpu:.2f} s = {cpu / gb * 10:.3f} CPU-seconds per 10 GB (goal < 1)")
    print(
        f"  packets reaching Python: {delivered} of {packets} the kernel counted "
        f"({100 * delivered / max(packets, 1):.3f}%; over veth the kernel counts GSO "
        "super-packets)"
    )
    print(f"  kernel drops/overruns: {drops}")
    print(
        f"  accounting: conntrack says {bytes_up} IP bytes up, about {payload} payload; "
        f"iperf3 sent {sent}: error {100 * abs(payload - sent) / sent:.3f}% (goal < 0.1%)"
    )


def flow_rate(lab: Lab, base: Path, seconds: float) -> None:
    lab.ns_popen(
        lab.wan_ns,
        [sys.executable, "-c", _SINK, SERVER, str(SINK_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    proc, snap = start_daemon(lab, base)
    try:
        time.sleep(1.0)
        flows0 = json.loads(snap.read_text())["stats"]["flows"]
        clients = [
            lab.popen(
                dev,
                [sys.executable, "-c", _FLOOD, SERVER, str(SINK_PORT), str(seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for dev in ("xiaomi", "samsung", "laptop")
        ]
        made = sum(int((c.communicate(timeout=seconds + 30)[0] or "0").strip()) for c in clients)
        time.sleep(2.5)
        s = json.loads(snap.read_text())
    finally:
        stop(proc)
    counted = s["stats"]["flows"] - flows0  # flows created (DNS etc. are not in this run)
    src = s["stats"]["source"]
    ct = s["stats"].get("conntrack", {})
    print(f"flow rate: {made} connections in {seconds:.0f} s = {made / seconds:.0f}/s offered")
    print(
        f"  flows the daemon counted: {counted} ({100 * counted / max(made, 1):.1f}%); "
        f"source drops {src.get('drops', 0)}, overruns {src.get('overruns', 0)}, "
        f"conntrack event overruns {ct.get('lost_overruns', 0)}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--flow-seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("iperf3") is None:
        print("needs root and iperf3 (packaging/system-deps.sh bench)")
        return 1
    base = Path(tempfile.mkdtemp(prefix="phonehome-live-bench-", dir="/var/tmp"))
    try:
        with Lab.create(quic=False) as lab:
            (base / "bulk").mkdir()
            bulk(lab, base / "bulk", args.seconds, args.streams)
            (base / "flows").mkdir()
            flow_rate(lab, base / "flows", args.flow_seconds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
