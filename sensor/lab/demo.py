"""`phonehome demo`: the live sensor on the lab gateway, watching a phone leak.

Builds the namespace lab (a LAN with a Xiaomi-like phone, a Samsung-like phone and a laptop; a
NAT gateway; servers "in China", "in AWS Singapore" and "at home" on documentation addresses),
runs `phonehome run` in the gateway, plays the demo traffic with real clients, prints the alerts
as they land in the event log and the per-device flows the daemon sees, then tears it all down.
Without root (or without network namespaces) it falls back to `analyze` on a sample capture.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from sensor.report import human_bytes


def _print_alerts(events: Path, seen: int, out: TextIO) -> int:
    if not events.exists():
        return seen
    lines = events.read_text().splitlines()
    for line in lines[seen:]:
        a = json.loads(line)
        if a.get("type") == "alert":
            out.write(f"  ALERT {a['severity'].upper():<8} {a['rule']}: {a['summary']}\n")
    out.flush()
    return len(lines)


def live(out: TextIO, hold: float = 0.0) -> int:
    from sensor.lab.netns import Lab, LabError
    from sensor.lab.scenario import play_demo_traffic, sensor_config

    base = Path(tempfile.mkdtemp(prefix="phonehome-demo-", dir="/var/tmp"))
    state = base / "state"
    state.mkdir()
    try:
        lab = Lab.create()
    except LabError as exc:
        out.write(f"cannot build the lab: {exc}\n")
        return 1
    with lab:
        cfg = base / "phonehome.toml"
        cfg.write_text(sensor_config(lab, state))
        log = (base / "daemon.log").open("w")
        out.write(
            f"lab up in {lab.startup_seconds:.2f} s: gateway namespace {lab.gw_ns}, "
            f"LAN bridge {lab.lan_bridge}\n"
            f"starting `phonehome run --config {cfg}` in the gateway (log: {log.name})\n"
        )
        daemon = lab.gw_popen(
            [sys.executable, "-m", "sensor", "run", "--config", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            snapshot = state / "flows.json"
            deadline = time.monotonic() + 20
            while not snapshot.exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    out.write(Path(log.name).read_text())
                    return 1
                time.sleep(0.1)
            out.write(
                "daemon running; metrics are served once [metrics] is configured; "
                f"events: {state / 'events.jsonl'}\n\nplaying the demo traffic:\n"
            )
            seen = 0
            for r in play_demo_traffic(lab):
                what = r.server.get("sni") or r.server.get("host")
                out.write(
                    f"  {r.server.get('proto', 'http')} to {what}: sent {human_bytes(r.sent)}\n"
                )
                time.sleep(0.3)
                seen = _print_alerts(state / "events.jsonl", seen, out)
            time.sleep(max(2.0, hold))  # a conntrack dump and a snapshot
            seen = _print_alerts(state / "events.jsonl", seen, out)
            _print_flows(json.loads(snapshot.read_text()), out)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
            _print_alerts(state / "events.jsonl", seen, out)
            out.write(f"\ndaemon stopped (exit {daemon.returncode}); lab torn down\n")
    return 0


def _print_flows(snap: dict[str, Any], out: TextIO) -> None:
    flows = list(snap.get("flows", [])) + list(snap.get("ended", []))
    names = {
        d["mac"]: d.get("name") or " ".join(x for x in (d.get("vendor"), d.get("kind")) if x)
        for d in snap["devices"]
    }
    out.write("\nflows the daemon counted (bytes from conntrack):\n")
    rows = sorted(flows, key=lambda f: -(f["bytes_up"] + f["bytes_down"]))
    for f in rows[:20]:
        if f.get("app") in ("dns", "dhcp", "mdns") or f["dst_port"] == 53:
            continue
        dev = names.get(f.get("device_mac")) or f["src_ip"]
        where = " ".join(
            str(x) for x in (f.get("country"), f.get("provider"), f.get("region")) if x
        )
        out.write(
            f"  {str(dev)[:18]:<18} {str(f.get('server_name') or f['dst_ip'])[:30]:<30} "
            f"{str(f.get('vendor') or '-')[:10]:<10} {where:<22} "
            f"up {human_bytes(f['bytes_up']):>9}  down {human_bytes(f['bytes_down']):>9}\n"
        )


def main(argv: list[str] | None = None) -> int:
    out = sys.stdout
    if os.geteuid() != 0:
        out.write("the live demo needs root (network namespaces); showing `analyze` instead\n")
        return _offline(out)
    return live(out)


def _offline(out: TextIO) -> int:
    from sensor.analyze import analyze
    from sensor.lab.synth import write_sample

    Path("var/demo/state").mkdir(parents=True, exist_ok=True)
    write_sample("var/demo/home.pcap")
    return analyze(["var/demo/home.pcap"], "etc/demo.toml", out=out)
