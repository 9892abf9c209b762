"""Benchmark: a fleet's cost. Active series of one busy site, and 100 / 300 sites' worth of
them remote-written into one central Prometheus.

    python -m bench.fleet_bench [--sites 100,300] [--rounds 6] [--keep DIR]

1. The busy home: 64 devices (16 phones, 48 others: laptops, TVs, speakers, cameras) and the
   benchmark's traffic mix (bench.mix: TLS with ClientHellos, HTTP POSTs, DNS), each device
   talking to its own set of 40 vendors' servers in 16 countries (phones 24 destinations,
   the rest 8); 8 phones send identifiers in cleartext to 3 vendors each. The capture runs
   through the pipeline and the exporter the daemon runs (sensor.metrics.Exporter); its
   exposition is this site's scrape. Prints the active series (samples per scrape, plus the
   agent's up/scrape_* series) and the largest families. Goal: at most 2,000.
2. The fleet: that exposition, relabelled per site (site="site-0001"..., the agent's external
   label; device names kept), pushed with Prometheus' remote-write protocol (protobuf,
   snappy; the same request an agent sends) into a central Prometheus
   (``--web.enable-remote-write-receiver``, Debian's prometheus) on loopback, `--rounds`
   scrapes' worth 30 s apart (timestamps in the past, sent as fast as the server takes
   them). Prints samples/s ingested, the server's resident memory after ingesting, and the
   query time of each panel of the fleet dashboard (all sites selected, 5-minute range).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import cramjam

from sensor.config import parse_config
from sensor.lab.synth import (
    DEMO_IMEI,
    DEMO_PHONE,
    Capture,
    Host,
    PcapWriter,
    TcpSession,
    client_hello,
    http_request,
)
from sensor.metrics import Exporter, SensorView
from sensor.model import Device, Flow
from sensor.pipeline import Pipeline
from sensor.sources.pcap import CaptureFile, read_captures
from sensor.stages import build as build_stages

ROOT = Path(__file__).resolve().parent.parent
DEVICES = 64
PHONES = 16
COUNTRIES = (
    "DE", "US", "IE", "NL", "FR", "GB", "SE", "FI",
    "SG", "JP", "CN", "HK", "IN", "BR", "AU", "CA",
)  # fmt: skip
"""The destinations' countries: the 16 /28s of 203.0.113.0/24 in the geo overrides."""
LEAK = f"imei={DEMO_IMEI}&phone=%2B{DEMO_PHONE[1:]}&model=x"
FLEET_PROFILE = {"top_vendors": 5, "top_countries": 5}
"""The [metrics] settings etc/fleet/phonehome-site.toml recommends for fleet sites."""
AGENT_SERIES = 5
"""Series a Prometheus agent adds per target: up, scrape_duration_seconds,
scrape_samples_scraped, scrape_samples_post_metric_relabeling, scrape_series_added."""


# --- 1. the busy home ---------------------------------------------------------------------


class _Output:
    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def flow(self, flow: Flow) -> None:
        self.exporter.flow_ended(flow)

    def device(self, device: Device) -> None:
        pass


class _Sensor:
    """What the exporter reads of the daemon: its settings, stages and pipeline."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.source = None
        self.conntrack = None
        self.interfaces = ["br-lan"]
        self.conntrack_updates = 0
        self.exporter = Exporter(
            cfg.metrics,
            SensorView(
                config=lambda: self.cfg,
                pipeline=lambda: self.pipeline,
                enricher=lambda: self.stages.enricher,
                detector=lambda: self.stages.detector,
                alert_stage=lambda: self.stages.alerts,
                interfaces=lambda: self.interfaces,
                conntrack_updates=lambda: self.conntrack_updates,
            ),
        )
        self.stages = build_stages(cfg, _Output(self.exporter), [self.exporter.alert_sink()])
        assert self.stages.alerts is not None
        self.stages.alerts.add_listener(self.exporter.observation)
        self.pipeline = Pipeline(cfg, self.stages, self.stages)
        self.stages.devices = self.pipeline.devices


def _vendor_names() -> list[str]:
    """One server name per vendor of the shipped vendor map (api.<its first domain>)."""
    doc = tomllib.loads((ROOT / "sensor" / "data" / "vendors.toml").read_text())
    names = []
    for v in doc["vendor"]:
        for key in ("api", "domains", "telemetry", "cloud", "push"):
            if v.get(key):
                names.append(f"api.{v[key][0]}")
                break
    return names


def busy_home_capture(path: Path, seed: int = 18) -> None:
    rng = random.Random(seed)
    with path.open("wb") as fh:
        cap = Capture(PcapWriter(fh), seed=seed)
        hosts = [Host(f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", f"192.168.1.{10 + i}")
                 for i in range(DEVICES)]  # fmt: skip
        vendors = rng.sample(_vendor_names(), 40)
        dests = [(vendors[i % 40], f"203.0.113.{16 * (i % 16) + 1 + i // 16}") for i in range(80)]
        port = 30000
        for i, dev in enumerate(hosts):
            phone = i < PHONES
            for name, server in rng.sample(dests, 24 if phone else 8):
                port += 1
                cap.dns_lookup(dev, "192.168.1.1", name, [server], ttl=300)
                s = TcpSession(cap, dev, server, port, 443)
                s.open()
                s.send(client_hello(name))
                s.send(b"\x16\x03\x03" + bytes(3000), up=False)
                s.send(b"\x17\x03\x03" + bytes(rng.randrange(500, 20000)))
                s.close()
            if i < 8:  # eight phones leak identifiers in cleartext to three vendors each
                for name, server in rng.sample(dests, 3):
                    port += 1
                    s = TcpSession(cap, dev, server, port, 80)
                    s.open()
                    s.send(
                        http_request("POST", name, "/v1/register", "okhttp/4.9.0", LEAK.encode())
                    )
                    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", up=False)
                    s.close()


def geo_overrides(path: Path) -> None:
    path.write_text(
        "".join(
            f'[[prefix]]\nnet = "203.0.113.{16 * i}/28"\ncountry = "{c}"\n'
            for i, c in enumerate(COUNTRIES)
        )
    )


def busy_home_exposition(work: Path, metrics: dict[str, Any] | None = None) -> str:
    """The busy home's /metrics, as the daemon's exporter serves it after the traffic."""
    pcap = work / "busy-home.pcap"
    busy_home_capture(pcap)
    state = work / "state"
    state.mkdir(exist_ok=True)
    geo_overrides(work / "geo.toml")
    devices = [
        {"mac": f"02:00:00:00:00:{i:02x}", "name": f"phone-{i}", "kind": "phone"}
        for i in range(PHONES)
    ]
    cfg = parse_config(
        {
            "site": {"home_country": "DE", "name": "busy-home", "lan_networks": ["192.168.1.0/24"]},
            "paths": {"state_dir": str(state)},
            "geo": {"overrides": str(work / "geo.toml")},
            "devices": devices,
            "metrics": {"port": 0, **(metrics or {})},
        }
    )
    sensor = _Sensor(cfg)
    try:
        sensor.pipeline.run(read_captures([CaptureFile(str(pcap))]))
        sensor.pipeline.flows.flush()  # every flow ended: counted in the exporter's tables
        return sensor.exporter.render().decode()
    finally:
        sensor.exporter.stop()
        sensor.stages.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ValueError(f"unparsed exposition line: {line!r}")
        labels = {
            k: bytes(v, "utf-8").decode("unicode_escape")
            for k, v in _LABEL.findall(m.group(3) or "")
        }
        out.append((m.group(1), labels, float(m.group(4))))
    return out


# --- 2. remote write ------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def encode_series(labels: dict[str, str]) -> bytes:
    """A prompb.TimeSeries' labels part (sorted by name, as the protocol requires)."""
    return b"".join(
        _field(1, _field(1, k.encode()) + _field(2, v.encode())) for k, v in sorted(labels.items())
    )


def encode_sample(value: float, ts_ms: int) -> bytes:
    """A prompb.Sample: value (double, field 1), timestamp (int64 ms, field 2)."""
    return _field(2, b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(ts_ms))


def write_request(series: list[tuple[bytes, float]], ts_ms: int) -> bytes:
    """A prompb.WriteRequest, snappy-compressed (block format), ready to POST."""
    body = b"".join(_field(1, lab + encode_sample(v, ts_ms)) for lab, v in series)
    return bytes(cramjam.snappy.compress_raw(body))


class Central:
    def __init__(self, work: Path) -> None:
        prometheus = shutil.which("prometheus")
        if prometheus is None:
            raise SystemExit("prometheus not installed (packaging/system-deps.sh bench)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = work / "central.yml"
        conf.write_text(json.dumps({"global": {"evaluation_interval": "30s"}}))
        self.log = (work / "central.log").open("wb")
        self.proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={conf}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-remote-write-receiver",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=self.log,
        )
        end = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise SystemExit(f"no central Prometheus: {work / 'central.log'}") from None
                time.sleep(0.3)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def write(self, body: bytes) -> None:
        self.conn.request(
            "POST",
            "/api/v1/write",
            body=body,
            headers={
                "Content-Encoding": "snappy",
                "Content-Type": "application/x-protobuf",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
        )
        resp = self.conn.getresponse()
        detail = resp.read()
        if resp.status // 100 != 2:
            raise SystemExit(f"remote write: HTTP {resp.status} {detail[:300]!r}")

    def query(self, expr: str, at: float) -> tuple[float, int]:
        """(seconds, result series) of one instant query."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr, "time": f"{at:.3f}"}
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=300) as r:
            doc = json.loads(r.read())
        took = time.perf_counter() - t0
        if doc.get("status") != "success":
            raise SystemExit(f"query failed: {expr}: {doc}")
        return took, len(doc["data"]["result"]) if doc["data"]["resultType"] == "vector" else 1

    def query_range(self, expr: str, start: float, end: float) -> tuple[float, int]:
        """(seconds, result series) of one range query, 30 s steps."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "30"}
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=300) as r:
            doc = json.loads(r.read())
        took = time.perf_counter() - t0
        if doc.get("status") != "success":
            raise SystemExit(f"query failed: {expr}: {doc}")
        return took, len(doc["data"]["result"])

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def close(self) -> None:
        self.conn.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def fleet_queries() -> list[tuple[str, str, bool]]:
    """(panel/ref, query, range query?) of every fleet dashboard target, all sites, a
    5-minute range."""
    board = json.loads((ROOT / "etc/grafana/dashboards/phonehome-fleet.json").read_text())
    values = {"site": ".*", "__range": "5m", "__rate_interval": "2m", "__interval": "30s"}
    out = []
    for p in board["panels"]:
        for t in p.get("targets", []):
            expr = re.sub(
                r"\$\{(\w+)\}|\$([A-Za-z_]\w*)",
                lambda m: values.get(m.group(1) or m.group(2), m.group(0)),
                t["expr"],
            )
            out.append((f"{p['title']}/{t['refId']}", expr, bool(t.get("range"))))
    return out


def simulate(
    samples: list[tuple[str, dict[str, str], float]], sites: int, rounds: int, work: Path
) -> dict[str, Any]:
    (work / f"central-{sites}").mkdir()
    central = Central(work / f"central-{sites}")
    try:
        rng = random.Random(sites)
        per_site: list[list[tuple[bytes, float, bool]]] = []
        for n in range(sites):
            site = f"site-{n:04d}"
            rows = [
                (encode_series({**labels, "__name__": name, "job": "phonehome",
                                "instance": "127.0.0.1:14663", "site": site}), value,
                 name.endswith("_total"))
                for name, labels, value in samples
            ]  # fmt: skip
            # the agent's own series of the target (AGENT_SERIES)
            target = {"job": "phonehome", "instance": "127.0.0.1:14663", "site": site}
            for name, value in (
                ("up", 1.0),
                ("scrape_duration_seconds", 0.05),
                ("scrape_samples_scraped", float(len(samples))),
                ("scrape_samples_post_metric_relabeling", float(len(samples))),
                ("scrape_series_added", 0.0),
            ):
                rows.append((encode_series({**target, "__name__": name}), value, False))
            per_site.append(rows)
        series = sum(len(r) for r in per_site)
        start = time.time() - rounds * 30.0
        took = 0.0
        sent = 0
        first = (0, 0.0)
        for r in range(rounds):
            ts = int((start + 30.0 * r) * 1000)
            # Encoded before the clock starts: the figure is the server's ingestion (and
            # HTTP), not this script's protobuf encoding. Counters grow every round.
            bodies = []
            for rows in per_site:
                grown = [(lab, v + r if is_counter else v) for lab, v, is_counter in rows]
                # an agent sends up to max_samples_per_send (500) per request
                for i in range(0, len(grown), 500):
                    bodies.append(write_request(grown[i : i + 500], ts + rng.randrange(1000)))
                sent += len(grown)
            t0 = time.perf_counter()
            for body in bodies:
                central.write(body)
            dt = time.perf_counter() - t0
            took += dt
            if r == 0:
                first = (len(bodies), dt)
        time.sleep(2)
        rss = central.rss()
        at = start + 30.0 * (rounds - 1) + 1
        panels = []
        for title, expr, ranged in fleet_queries():
            times = []
            for _ in range(3):
                if ranged:
                    dt, n = central.query_range(expr, start, at)
                else:
                    dt, n = central.query(expr, at)
                times.append(dt)
            panels.append((f"{title} ({'range' if ranged else 'instant'})", sorted(times)[1], n))
        return {"sites": sites, "series": series, "samples": sent, "seconds": took,
                "rss": rss, "panels": panels, "first_seconds": first[1]}  # fmt: skip
    finally:
        central.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", default="100,300")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--keep", type=Path, help="keep the work directory here")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="phonehome-fleet-bench-"))
    for sub in ("defaults", "fleet-profile"):
        (work / sub).mkdir()
    try:
        print(f"== Issue 18: one busy site ({DEVICES} devices, {PHONES} phones, 40 vendors, "
              f"{len(COUNTRIES)} countries) ==")  # fmt: skip
        samples: list[tuple[str, dict[str, str], float]] = []
        for label, metrics in (("defaults", {}), ("fleet profile", FLEET_PROFILE)):
            text = busy_home_exposition(work / label.replace(" ", "-"), metrics)
            samples = parse_samples(text)
            total = len(samples) + AGENT_SERIES
            print(f"{label} {metrics or ''}: active series per site {total} "
                  f"({len(samples)} from the sensor + {AGENT_SERIES} from the agent; goal <= 2000;"
                  f" exposition {len(text)} bytes)")  # fmt: skip
            families = Counter(n for n, _, _ in samples)
            print("  " + ", ".join(f"{f} {n}" for f, n in families.most_common(5)))
        # the fleet profile's exposition is what each simulated site sends
        for sites in (int(s) for s in args.sites.split(",")):
            res = simulate(samples, sites, args.rounds, work)
            print(f"\n== Issue 18: {sites} sites into one central Prometheus (remote write) ==")
            print(f"series: {res['series']}; "
                  f"samples sent: {res['samples']} in {res['seconds']:.1f} s = "
                  f"{res['samples'] / res['seconds']:.0f} samples/s ingested")  # fmt: skip
            later = res["seconds"] - res["first_seconds"]
            print(f"  first scrape (every series new): {res['series'] / res['first_seconds']:.0f}"
                  f" samples/s; later scrapes (appends): "
                  f"{(res['samples'] - res['series']) / later:.0f} samples/s")  # fmt: skip
            print(f"central Prometheus RSS after ingest: {res['rss'] / 2**20:.0f} MiB "
                  f"({res['rss'] / res['series'] / 1024:.1f} KiB per series)")  # fmt: skip
            print(f"at a 30 s scrape interval this fleet sends {res['series'] / 30:.0f} samples/s")
            for title, dt, n in res["panels"]:
                print(f"  {dt * 1000:8.1f} ms  {n:5d} series  {title}")
    finally:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
