"""sensor.metrics: the exporter's families, its bounds, monotonic counters, the endpoint."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import io
import ipaddress
import json
import os
import random
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import dpkt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sensor import metrics
from sensor.alerts import RULES
from sensor.config import Config, FlowsConfig, parse_config
from sensor.daemon import sensor_view
from sensor.flows import FlowEntry, FlowTable
from sensor.lab.synth import (
    AWS_SG_IP,
    DEMO_CONTACTS,
    DEMO_IMEI,
    DEMO_PHONE,
    LAPTOP,
    PHONE,
    Capture,
    PcapWriter,
    sample_home,
)
from sensor.metrics import (
    DEFAULT_PORT,
    OTHER,
    Exporter,
    MetricsConfig,
    MetricsError,
    SensorView,
    TopK,
    safe_label,
)
from sensor.model import Alert, Destination, Device, DeviceRef, Flow, Observation
from sensor.pipeline import Pipeline
from sensor.sources.pcap import CaptureFile, read_captures
from sensor.stages import build as build_stages
from sensor.visibility import classify

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- helpers ----------------------------------------------------------------------------------


def parse(text: str | bytes) -> Series:
    if isinstance(text, bytes):
        text = text.decode()
    out: Series = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def values(series: Series, name: str, **labels: str) -> list[float]:
    want = set(labels.items())
    return [v for (n, ls), v in series.items() if n == name and want <= ls]


def total(series: Series, name: str, **labels: str) -> float:
    return sum(values(series, name, **labels))


def label_values(series: Series, name: str, label: str) -> set[str]:
    return {dict(ls)[label] for (n, ls) in series if n == name}


def increase(prev: Series, now: Series, name: str) -> float:
    """What Prometheus' increase() adds up between two scrapes, over every series of `name`:
    a new series counts whole, a series that went down counts as reset (whole)."""
    out = 0.0
    for key, v in now.items():
        if key[0] == name:
            p = prev.get(key)
            out += v if p is None or v < p else v - p
    return out


def assert_monotonic(before: Series, after: Series) -> None:
    for key, old in before.items():
        if key[0].endswith("_total") and key in after:
            assert after[key] >= old, f"{key} went down: {old} -> {after[key]}"


def identifier_forms(*values: str) -> set[str]:
    """Every value in the forms that would betray it: plain, digits, hex, base64, digests."""
    forms: set[str] = set()
    for v in values:
        digits = "".join(c for c in v if c.isdigit())
        for s in {v, digits, digits[2:] if v.startswith("+") else digits, "0" + digits[2:]}:
            if len(s) < 6:
                continue
            b = s.encode()
            forms |= {
                s,
                b.hex(),
                base64.b64encode(b).decode().rstrip("="),
                hashlib.md5(b).hexdigest(),
                hashlib.sha1(b).hexdigest(),
                hashlib.sha256(b).hexdigest(),
            }
    return forms


class Output:
    """The daemon's record output, as the daemon will wire it: ended flows to the exporter."""

    def __init__(self) -> None:
        self.exporter: Exporter | None = None

    def flow(self, flow: Flow) -> None:
        assert self.exporter is not None
        self.exporter.flow_ended(flow)

    def device(self, device: Device) -> None:
        pass


class Wired:
    """`analyze`'s wiring plus an exporter: what the daemon does (the exporter reads this
    object's attributes as it reads the daemon's)."""

    def __init__(
        self,
        cfg: Config,
        mcfg: MetricsConfig | None = None,
        source: object = None,
        conntrack: object = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.conntrack = conntrack
        self.interfaces = ["br-lan"]
        self.conntrack_updates = 0
        self.capture_mode = "packet"
        self.rules_restored: dict[str, int] = {}
        self.rules_missing = False
        self.enforcer: Any = None
        self.write_errors: dict[tuple[str, str], int] = {}
        out = Output()
        self.exporter = Exporter(mcfg or MetricsConfig(port=0), self.view())
        out.exporter = self.exporter
        self.stages = build_stages(cfg, out, [self.exporter.alert_sink()])
        assert self.stages.alerts is not None
        self.stages.alerts.add_listener(self.exporter.observation)
        self.pipeline = Pipeline(cfg, self.stages, self.stages)
        self.stages.devices = self.pipeline.devices

    def view(self) -> SensorView:
        """What the daemon's `metrics_view` hands the exporter, read from this object."""
        return sensor_view(self)

    def feed(self, path: Path) -> None:
        self.pipeline.run(read_captures([CaptureFile(str(path))]))

    def close(self) -> None:
        self.exporter.stop()
        self.stages.close()


def home_config(state: Path, **extra: Any) -> Config:
    doc: dict[str, Any] = {
        "site": {"home_country": "ID", "name": "home"},
        "paths": {"state_dir": str(state)},
        "identifiers": {"phone": [DEMO_PHONE], "imei": [DEMO_IMEI]},
        "devices": [{"mac": PHONE.mac, "name": "Redmi phone", "kind": "phone"}],
    }
    doc.update(extra)
    return parse_config(doc)


def sample_capture(path: Path) -> Path:
    with open(path, "wb") as fh:
        sample_home(fh)
    return path


def icmp_capture(path: Path, start: float) -> Path:
    """One ICMP echo: a packet the pipeline skips (ip.not_tcp_udp)."""
    buf = io.BytesIO()
    cap = Capture(PcapWriter(buf), start=start)
    echo = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"ping"))
    cap.emit(cap.ip(PHONE.ip, "192.0.2.1", 1, echo), False, PHONE, True)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[Wired]:
    state = tmp_path / "state"
    state.mkdir()
    w = Wired(home_config(state))
    yield w
    w.close()


class FakeEnricher:
    """Places an address by its hash: vendor, provider, region, country from `spread`."""

    devices = None

    def __init__(self, vendors: int = 5, countries: int = 5, regions: int = 3) -> None:
        self.spread = (vendors, countries, regions)
        self.relabel: dict[str, str] = {}

    def visibility(self, flow: Flow) -> str | None:
        return classify(flow)  # the bare rule: no relays, no local networks

    def destination(self, ip: str, port: int, name: str | None) -> Destination:
        h = int(hashlib.blake2b(ip.encode(), digest_size=8).hexdigest(), 16)
        nv, nc, nr = self.spread
        vendor = self.relabel.get(name or "", f"Vendor{h % nv}")
        c = h // nv % nc
        country = chr(65 + c // 26 % 26) + chr(65 + c % 26)
        return Destination(
            ip=ip,
            port=port,
            server_name=name,
            vendor=vendor,
            party=vendor,
            provider=f"cloud{h % 3}",
            region=f"region-{h // 7 % nr}",
            country=country,
        )


class FakeSensor:
    """A flow table and devices, without packets: flows opened, grown and ended by hand."""

    def __init__(self, cfg: MetricsConfig | None = None, max_flows: int = 1_000_000) -> None:
        self.flows = FlowTable(FlowsConfig(max_flows=max_flows), self._on_end)
        self.pipeline = SimpleNamespace(
            flows=self.flows, devices={}, devices_dropped=0, not_devices={}
        )
        self.enricher = FakeEnricher()
        self.stages = SimpleNamespace(enricher=self.enricher, detector=None, alerts=None)
        view = SensorView(
            pipeline=lambda: self.pipeline,
            enricher=lambda: self.stages.enricher,
            alert_stage=lambda: self.stages.alerts,
        )
        self.exporter = Exporter(
            cfg
            or MetricsConfig(
                port=0, disabled_collectors=("pipeline", "process", "data", "capture")
            ),
            view,
        )
        self.n = 0
        self.sent_up = 0
        self.sent_down = 0

    def _on_end(self, entry: FlowEntry, reason: str) -> None:
        flow = entry.sync()
        d = self.enricher.destination(flow.dst_ip, flow.dst_port, flow.server_name)
        flow.extra.update(party=d.party, provider=d.provider, region=d.region, country=d.country)
        self.exporter.flow_ended(flow)

    def open(self, mac: str | None, dst_ip: str, name: str | None = None) -> FlowEntry:
        self.n += 1
        flow = Flow(
            uid=f"F{self.n:x}",
            proto="tcp",
            src_ip="192.168.1.2",
            src_port=self.n & 0xFFFF,
            dst_ip=dst_ip,
            dst_port=443,
            device_mac=mac,
            first_seen=0.0,
            last_seen=0.0,
            server_name=name,
        )
        key = self.n.to_bytes(12, "big")
        return self.flows.add(flow, key + b"u", key + b"d")

    def grow(self, entry: FlowEntry, up: int, down: int) -> None:
        entry.up.nbytes += up
        entry.down.nbytes += down
        self.sent_up += up
        self.sent_down += down

    def scrape(self) -> Series:
        return parse(self.exporter.render())


def random_mac(rng: random.Random) -> str:
    return ":".join(f"{rng.randrange(256):02x}" for _ in range(6))


# --- settings ---------------------------------------------------------------------------------


def test_defaults_are_valid_and_listen_on_loopback() -> None:
    cfg = MetricsConfig()
    cfg.validate()
    assert (cfg.address, cfg.port) == ("127.0.0.1", DEFAULT_PORT)
    assert DEFAULT_PORT > 10000
    assert (cfg.max_devices, cfg.top_vendors, cfg.top_countries) == (64, 10, 10)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"address": "localhost"}, "address"),
        ({"port": 70000}, "port"),
        ({"max_devices": 0}, "max_devices"),
        ({"top_vendors": 0}, "top_vendors"),
        ({"top_countries": 5000}, "top_countries"),
        ({"max_series_per_device": 0}, "max_series_per_device"),
        ({"disabled_collectors": ("nope",)}, "disabled_collectors"),
        ({"tls_cert_file": "/x.crt"}, "tls_cert_file"),
        ({"basic_auth_user": "p"}, "basic_auth_user"),
        ({"basic_auth_user": "a:b", "basic_auth_password_sha256": "0" * 64}, "basic_auth_user"),
        ({"basic_auth_password_file": "/pw"}, "basic_auth_user"),
        (
            {"basic_auth_user": "p", "basic_auth_password_sha256": "xyz"},
            "basic_auth_password_sha256",
        ),
        ({"scrape_timeout": 0}, "scrape_timeout"),
        ({"min_interval": -1}, "min_interval"),
        ({"max_connections": 0}, "max_connections"),
        ({"connection_timeout": 0.01}, "connection_timeout"),
        ({"address": "0.0.0.0"}, "address"),  # public without credentials
        ({"address": "192.168.1.1"}, "address"),
    ],
)
def test_invalid_settings_name_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=rf"^{key}: "):
        MetricsConfig(**kwargs).validate()


def test_public_address_with_credentials_or_explicit_opt_out() -> None:
    MetricsConfig(address="::", bearer_token_file="/t").validate()
    MetricsConfig(
        address="192.168.1.1", basic_auth_user="p", basic_auth_password_sha256="a" * 64
    ).validate()
    MetricsConfig(address="0.0.0.0", allow_unauthenticated=True).validate()
    MetricsConfig(address="0.0.0.0", enabled=False).validate()


# --- label hygiene and bounds -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("Redmi phone", "Redmi phone"),
        ("laptop", "laptop"),
        ("64:09:80:12:34:56", "64:09:80:12:34:56"),
        ("SM-S911B", "SM-S911B"),
        ("ap-southeast-1", "ap-southeast-1"),
        ("android-1a2b3c4d5e6f7a8b", "android-…"),
        (f"imei {DEMO_IMEI}", "imei …"),
        ("Budi +62 812-3456-7890", "Budi …"),
        ("budi@example.com's phone", "…'s phone"),
        ("dev 123e4567-e89b-12d3-a456-426614174000", "dev …"),
        ("a\nb\x00c", "abc"),
        (None, ""),
    ],
)
def test_safe_label_masks_identifier_shapes(raw: str | None, want: str) -> None:
    assert safe_label(raw) == want


def test_topk_is_sticky_and_promotes_the_heavier() -> None:
    top = TopK(2)
    assert top.admit("a", 10) == ("a", None)
    assert top.admit("b", 5) == ("b", None)
    assert top.admit("c", 3) == (OTHER, None)  # full: a candidate
    assert top.admit("b", 1) == ("b", None)  # members stay
    assert top.admit("c", 2) == (OTHER, None)  # 5 < b's 6
    assert top.admit("c", 2) == ("c", "b")  # 7 > 6: c takes b's place
    assert set(top.members) == {"a", "c"}


# --- the sample home through the pipeline --------------------------------------------------------


def test_sample_home_families(wired: Wired, tmp_path: Path) -> None:
    wired.feed(sample_capture(tmp_path / "home.pcap"))
    live = parse(wired.exporter.render())
    # Every byte of every flow is counted once, while the flows are still live ...
    entries = list(wired.pipeline.flows.entries.values())
    assert total(live, "phonehome_upload_bytes_total") == sum(e.up.nbytes for e in entries)
    assert total(live, "phonehome_download_bytes_total") == sum(e.down.nbytes for e in entries)
    assert total(live, "phonehome_flows_total") == len(entries) == 9
    phone = {"device": "Redmi phone"}
    assert values(live, "phonehome_upload_bytes_total", party="Xiaomi", dst_country="CN",
                  **phone) == [614.0]  # fmt: skip
    assert total(live, "phonehome_upload_bytes_total", dst_country="SG", **phone) == 206317.0
    # ... and nothing changes when they end (idle sweep, end of capture).
    wired.pipeline.finish()
    ended = parse(wired.exporter.render())
    for name in (
        "phonehome_upload_bytes_total",
        "phonehome_download_bytes_total",
        "phonehome_flows_total",
    ):
        assert {k: v for k, v in live.items() if k[0] == name} == {
            k: v for k, v in ended.items() if k[0] == name
        }
    assert ended[("phonehome_metrics_tracked_flows", frozenset())] == 0
    # Exposures count every sighting (4); alerts only what was delivered (3; one suppressed).
    assert total(ended, "phonehome_identifier_exposures_total") == 4
    assert values(
        ended,
        "phonehome_identifier_exposures_total",
        identifier="imei",
        encoding="plain",
        dst_country="CN",
        party="Xiaomi",
        **phone,
    ) == [1.0]
    assert values(
        ended, "phonehome_alerts_total", rule="identifier_abroad", severity="critical", **phone
    ) == [3.0]
    assert values(ended, "phonehome_alerts_suppressed_total", rule="identifier_abroad") == [1.0]
    # Who the devices are.
    assert values(
        ended,
        "phonehome_device_info",
        device="Redmi phone",
        mac=PHONE.mac,
        vendor="Xiaomi",
        model="Redmi Note 8 Pro",
        kind="phone",
    ) == [1.0]
    assert values(ended, "phonehome_device_info", device="laptop", mac=LAPTOP.mac) == [1.0]
    assert values(ended, "phonehome_site_info", home_country="ID", site="home") == [1.0]
    assert values(ended, "phonehome_build_info")
    assert values(ended, "phonehome_packets_read_total") == [261.0]
    assert values(ended, "phonehome_flows_evicted_total", reason="idle") == [0.0]
    ok = label_values(ended, "phonehome_scrape_collector_success", "collector")
    assert ok >= {"info", "traffic", "exposures", "alerts", "devices", "pipeline", "process"}
    assert set(values(ended, "phonehome_scrape_collector_success")) == {1.0}


def test_no_identifier_in_any_label_or_value(wired: Wired, tmp_path: Path) -> None:
    wired.feed(sample_capture(tmp_path / "home.pcap"))
    wired.pipeline.finish()
    text = wired.exporter.render().decode()
    low = text.lower()
    for form in identifier_forms(DEMO_IMEI, DEMO_IMEI[:14], DEMO_PHONE, *DEMO_CONTACTS):
        assert form.lower() not in low, form
    assert not [
        ln for ln in text.splitlines() if ln.split("{")[0].split(" ")[0].endswith("_created")
    ]
    assert "120.92.65.10" not in text and AWS_SG_IP not in text  # no addresses either


def test_endpoint_output_passes_promtool(wired: Wired, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    wired.feed(sample_capture(tmp_path / "home.pcap"))
    wired.exporter.start()
    with urllib.request.urlopen(wired.exporter.url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = resp.read()
    res = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    assert not res.stdout.strip() and not res.stderr.strip()
    req = urllib.request.Request(
        wired.exporter.url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        om = resp.read().decode()
    assert om.endswith("# EOF\n") and "phonehome_upload_bytes_total{" in om
    assert not [ln for ln in om.splitlines() if ln.split("{")[0].split(" ")[0].endswith("_created")]


# --- counters stay monotonic -------------------------------------------------------------------


def test_monotonic_across_eviction_relabel_and_end() -> None:
    rng = random.Random(7)
    s = FakeSensor(max_flows=40)  # small: the table evicts all the time
    macs = [random_mac(rng) for _ in range(5)] + [None]
    ips = [f"198.51.100.{i}" for i in range(12)]
    prev: Series = {}
    for step in range(60):
        for _ in range(rng.randrange(1, 12)):
            e = s.open(rng.choice(macs), rng.choice(ips), name=rng.choice([None, "a.example"]))
            s.grow(e, rng.randrange(0, 5000), rng.randrange(0, 50000))
        for e in rng.sample(list(s.flows.entries.values()), k=min(10, len(s.flows))):
            s.grow(e, rng.randrange(0, 3000), rng.randrange(0, 3000))
            if rng.random() < 0.2:  # the server name becomes known later: new labels
                e.flow.server_name = "b.example"
        s.enricher.relabel["b.example"] = f"Later{step % 3}"
        for e in rng.sample(list(s.flows.entries.values()), k=min(3, len(s.flows))):
            s.flows.end(e, "end")
        now = s.scrape()
        assert_monotonic(prev, now)
        # Exact: each byte counted once, whether its flow is live, evicted or ended.
        assert total(now, "phonehome_upload_bytes_total") == s.sent_up
        assert total(now, "phonehome_download_bytes_total") == s.sent_down
        assert total(now, "phonehome_flows_total") == s.n
        prev = now
    s.flows.flush()
    final = s.scrape()
    assert_monotonic(prev, final)
    assert total(final, "phonehome_upload_bytes_total") == s.sent_up
    assert final[("phonehome_metrics_tracked_flows", frozenset())] == 0


def test_monotonic_while_the_packet_loop_runs() -> None:
    """Scrapes in one thread, flows opened, grown and ended in another (the daemon's shape)."""
    s = FakeSensor(max_flows=500)
    macs = [f"02:00:00:00:00:{i:02x}" for i in range(8)]
    ips = [f"203.0.113.{i}" for i in range(20)]
    stop = threading.Event()
    lock = threading.Lock()  # only for the test's own tallies

    def packet_loop() -> None:
        rng = random.Random(3)
        while not stop.is_set():
            e = s.open(rng.choice(macs), rng.choice(ips))
            with lock:
                s.grow(e, rng.randrange(1, 2000), rng.randrange(1, 2000))
            live = list(s.flows.entries.values())
            for victim in live[: rng.randrange(0, 3)]:
                with lock:
                    s.grow(victim, rng.randrange(1, 500), 0)
                s.flows.end(victim, "idle")

    t = threading.Thread(target=packet_loop)
    t.start()
    prev: Series = {}
    scrapes = 0
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            now = s.scrape()
            assert_monotonic(prev, now)
            assert total(now, "phonehome_upload_bytes_total") <= s.sent_up + 1e-9
            prev = now
            scrapes += 1
    finally:
        stop.set()
        t.join()
    s.flows.flush()
    final = s.scrape()
    assert_monotonic(prev, final)
    assert scrapes > 5
    assert total(final, "phonehome_upload_bytes_total") == s.sent_up
    assert total(final, "phonehome_download_bytes_total") == s.sent_down
    assert total(final, "phonehome_flows_total") == s.n


def test_alert_stage_counters_carry_over_a_reload() -> None:
    s = FakeSensor()
    old = SimpleNamespace(sinks=[], stats=lambda: {"suppressed": {"new_country": 5}, "dropped": {}})
    s.stages.alerts = old
    first = s.scrape()
    assert values(first, "phonehome_alerts_suppressed_total", rule="new_country") == [5.0]
    new = SimpleNamespace(sinks=[], stats=lambda: {"suppressed": {"new_country": 2}, "dropped": {}})
    s.stages.alerts = new  # a reload built new stages
    second = s.scrape()
    assert values(second, "phonehome_alerts_suppressed_total", rule="new_country") == [7.0]


def test_each_alertmanager_has_its_own_counters_carried_over_a_reload() -> None:
    def am(endpoint: str, name: str, sent: int, failed: int, queued: int) -> SimpleNamespace:
        st = {"sent": sent, "failed": failed, "dropped_queue_full": 1, "queue_length": queued}
        return SimpleNamespace(endpoint=endpoint, name=name, stats=lambda: st)

    def stage(*sinks: SimpleNamespace) -> SimpleNamespace:
        return SimpleNamespace(
            sinks=list(sinks), stats=lambda: {"sinks": {x.name: x.stats() for x in sinks}}
        )

    s = FakeSensor()
    a1, b1 = am("10.0.0.1:9093", "alertmanager@a", 4, 0, 0), am("b:9093", "alertmanager@b", 0, 4, 3)
    s.stages.alerts = stage(a1, b1)
    first = s.scrape()
    got = values(first, "phonehome_alertmanager_alerts_total", alertmanager="10.0.0.1:9093")
    assert sorted(got) == [0.0, 0.0, 1.0, 4.0]
    assert values(
        first, "phonehome_alertmanager_alerts_total", alertmanager="b:9093", outcome="failed"
    ) == [4.0]
    assert values(first, "phonehome_alertmanager_queue_length", alertmanager="b:9093") == [3.0]
    a2 = am("10.0.0.1:9093", "alertmanager@a", 1, 0, 0)
    s.stages.alerts = stage(a2)  # a reload built new sinks
    second = s.scrape()
    sent = values(
        second, "phonehome_alertmanager_alerts_total", alertmanager="10.0.0.1:9093", outcome="sent"
    )
    assert sent == [5.0]


# --- cardinality ------------------------------------------------------------------------------


def test_a_flood_of_devices_and_destinations_stays_bounded() -> None:
    rng = random.Random(11)
    cfg = MetricsConfig(port=0, disabled_collectors=("pipeline", "process", "data", "capture"))
    s = FakeSensor(cfg)
    s.enricher.spread = (1000, 676, 300)  # 1000 vendors, 676 countries, 300 regions
    n = 100_000
    for _ in range(n):  # live flows: one random MAC and destination each
        e = s.open(random_mac(rng), str(ipaddress.IPv4Address(rng.getrandbits(32))))
        s.grow(e, rng.randrange(1, 10_000), rng.randrange(1, 10_000))
    # Real devices with steady traffic should keep their own series.
    heavy = [f"3c:22:fb:00:00:{i:02x}" for i in range(10)]
    for mac in heavy:
        for j in range(20):
            e = s.open(mac, f"198.51.100.{j}")
            s.grow(e, 5_000_000, 1_000_000)
    t0 = time.perf_counter()
    first = s.scrape()
    first_scrape = time.perf_counter() - t0
    s.flows.flush()  # and all of them end
    for _ in range(n):  # exposures and alerts from random devices to random places
        dev = DeviceRef(mac=random_mac(rng), ip="192.168.1.9", name=f"dev{rng.randrange(n)}")
        dst = Destination(
            ip="192.0.2.1",
            port=80,
            party=f"Vendor{rng.randrange(1000)}",
            country=f"{rng.randrange(26 * 26):03d}",
        )
        s.exporter.observation(
            Observation(
                what="identifier",
                ts=0.0,
                device=dev,
                dst=dst,
                identifier=rng.choice(["imei", "phone", "email", "bogus-kind"]),
                encoding=rng.choice(["plain", "md5", "base64", "rot13"]),
            )
        )
        s.exporter.alert(
            Alert(
                rule=rng.choice([*RULES, "bogus"]),
                severity="warning",
                ts=0.0,
                device=dev,
                dst=dst,
                summary="x",
            )
        )
    text = s.exporter.render().decode()
    final = parse(text)
    assert_monotonic(first, final)
    # Every byte is in some series' increase (series pushed out hand on what they had not
    # shown yet), though the sum of the values is less (those series are gone).
    assert increase({}, first, "phonehome_upload_bytes_total") == s.sent_up
    assert increase(first, final, "phonehome_upload_bytes_total") == 0
    assert total(first, "phonehome_flows_total") == n + 200
    assert total(final, "phonehome_identifier_exposures_total") == n
    assert total(final, "phonehome_alerts_total") == n
    per_device = (cfg.max_devices + 1) * (cfg.max_series_per_device + 1)
    counts = {}
    for name in (
        "phonehome_upload_bytes_total",
        "phonehome_download_bytes_total",
        "phonehome_flows_total",
        "phonehome_identifier_exposures_total",
        "phonehome_alerts_total",
    ):
        counts[name] = len(values(final, name))
        assert counts[name] <= per_device, (name, counts[name])
        devices = label_values(final, name, "device")
        assert len(devices) <= cfg.max_devices + 1, (name, len(devices))
    counts["phonehome_device_info"] = len(values(final, "phonehome_device_info"))
    assert counts["phonehome_device_info"] <= 3 * cfg.max_devices
    # The heavy devices kept their series; the flood went to "other".
    assert set(heavy) <= label_values(final, "phonehome_upload_bytes_total", "device")
    assert OTHER in label_values(final, "phonehome_upload_bytes_total", "device")
    for (name, labels), _ in final.items():
        if name.startswith("phonehome_") and "party" in dict(labels):
            assert not dict(labels)["party"].startswith("bogus")
    ident = label_values(final, "phonehome_identifier_exposures_total", "identifier")
    assert ident <= {"imei", "phone", "email", OTHER}
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(lines) < 5 * per_device
    print(  # the figures for the report (pytest -s)
        f"\nflood of {n} MACs/destinations: {len(lines)} series in all; "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"; first scrape of {n + 200} live flows {first_scrape:.2f} s"
    )


def test_per_device_limits() -> None:
    cfg = MetricsConfig(
        port=0,
        top_vendors=2,
        top_countries=2,
        max_series_per_device=5,
        disabled_collectors=("pipeline", "process", "data", "capture"),
    )
    s = FakeSensor(cfg)
    s.enricher.spread = (7, 9, 4)
    for i in range(200):
        e = s.open("02:00:00:00:00:01", f"198.51.100.{i}")
        s.grow(e, 1000 + i, 10)
    got = s.scrape()
    rows = [dict(ls) for (n, ls) in got if n == "phonehome_upload_bytes_total"]
    assert len(rows) <= 6
    assert len({r["party"] for r in rows} - {OTHER}) <= 2
    assert len({r["dst_country"] for r in rows} - {OTHER}) <= 2
    assert increase({}, got, "phonehome_upload_bytes_total") == s.sent_up
    # Later traffic: still every byte in an increase, series never lower.
    prev, sent = got, s.sent_up
    for i in range(200, 400):
        e = s.open("02:00:00:00:00:01", f"198.51.100.{i % 256}")
        s.grow(e, 5000 + 7 * i, 10)
        if i % 20 == 0:
            now = s.scrape()
            assert_monotonic(prev, now)
            assert increase(prev, now, "phonehome_upload_bytes_total") == s.sent_up - sent
            prev, sent = now, s.sent_up


# --- health collectors --------------------------------------------------------------------------


class BrokenSource:
    def stats(self) -> dict[str, int]:
        raise OSError("socket gone")


def test_a_failing_collector_shows_zero_and_the_rest_scrape(wired: Wired, tmp_path: Path) -> None:
    wired.source = BrokenSource()
    wired.feed(sample_capture(tmp_path / "home.pcap"))
    got = parse(wired.exporter.render())
    assert values(got, "phonehome_scrape_collector_success", collector="capture") == [0.0]
    others = [
        v
        for (n, ls), v in got.items()
        if n == "phonehome_scrape_collector_success" and dict(ls)["collector"] != "capture"
    ]
    assert others and set(others) == {1.0}
    assert total(got, "phonehome_upload_bytes_total") > 0


def test_capture_conntrack_and_skip_counters(wired: Wired, tmp_path: Path) -> None:
    stats = {"received": 1000, "delivered": 990, "drops": 10, "freeze": 1, "malformed": 0,
             "truncated": 2, "backlog": 4352}  # fmt: skip
    wired.source = SimpleNamespace(stats=lambda: dict(stats))
    wired.conntrack = SimpleNamespace(
        received=50, lost_overruns=3, decode_errors=1, backlog=lambda: 1280
    )
    wired.conntrack_updates = 77
    wired.feed(icmp_capture(tmp_path / "icmp.pcap", 1_700_000_000.0))
    got = parse(wired.exporter.render())
    iface = {"interface": "br-lan"}
    assert values(got, "phonehome_capture_received_packets_total", **iface) == [1000.0]
    assert values(got, "phonehome_capture_dropped_packets_total", **iface) == [10.0]
    assert values(got, "phonehome_capture_errors_total", kind="truncated", **iface) == [2.0]
    assert values(got, "phonehome_conntrack_events_total") == [50.0]
    assert values(got, "phonehome_conntrack_errors_total", kind="overrun") == [3.0]
    assert values(got, "phonehome_conntrack_updates_total") == [77.0]
    # How far behind the sensor is: what its sockets hold unread.
    assert values(got, "phonehome_capture_backlog_bytes", **iface) == [4352.0]
    assert values(got, "phonehome_conntrack_backlog_bytes") == [1280.0]
    assert values(got, "phonehome_packets_skipped_total", reason="ip.not_tcp_udp") == [1.0]
    # A racy read of the kernel counters that comes out low never lowers a counter.
    stats["received"] = 990
    again = parse(wired.exporter.render())
    assert values(again, "phonehome_capture_received_packets_total", **iface) == [1000.0]


def test_data_file_age_from_the_manifest(wired: Wired) -> None:
    data = Path(wired.cfg.paths.state_dir) / "data"
    data.mkdir()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def iso(t: dt.datetime) -> str:
        return t.isoformat().replace("+00:00", "Z")

    manifest = {
        "version": 1,
        "sources": {
            "aws": {"fetched": iso(now - dt.timedelta(days=2)), "records": 9000},
            "google": {
                "fetched": iso(now - dt.timedelta(days=20)),
                "records": 800,
                "last_error": "HTTP 503",
                "last_attempt": iso(now - dt.timedelta(hours=1)),
            },
        },
    }
    (data / "manifest.json").write_text(json.dumps(manifest))
    got = parse(wired.exporter.render())
    (aws,) = values(got, "phonehome_data_age_seconds", dataset="aws")
    assert 2 * 86400 - 5 <= aws <= 2 * 86400 + 60
    assert values(got, "phonehome_data_records", dataset="aws") == [9000.0]
    assert values(got, "phonehome_data_update_failing", dataset="aws") == [0.0]
    assert values(got, "phonehome_data_update_failing", dataset="google") == [1.0]


def test_device_labels_names_then_hostnames_then_macs() -> None:
    s = FakeSensor()
    devs = {
        "02:00:00:00:00:01": Device(mac="02:00:00:00:00:01", hostname="android"),
        "02:00:00:00:00:02": Device(mac="02:00:00:00:00:02", hostname="android"),
        "02:00:00:00:00:03": Device(mac="02:00:00:00:00:03", hostname="android-1a2b3c4d5e6f7a8b"),
        "02:00:00:00:00:04": Device(mac="02:00:00:00:00:04", hostname="other"),
        "02:00:00:00:00:05": Device(mac="02:00:00:00:00:05"),
    }
    s.pipeline.devices = devs
    for mac in [*devs, None]:
        s.grow(s.open(mac, "198.51.100.1"), 100, 100)
    got = label_values(s.scrape(), "phonehome_upload_bytes_total", "device")
    assert got == {
        "android (02:00:00:00:00:01)",
        "android (02:00:00:00:00:02)",
        "android-…",
        "other (02:00:00:00:00:04)",
        "02:00:00:00:00:05",
        "unknown",
    }


# --- cost ---------------------------------------------------------------------------------------


def test_scrape_cost_with_10k_flows_and_64_devices() -> None:
    s = FakeSensor(MetricsConfig(port=0))
    s.enricher.spread = (40, 25, 10)
    macs = [f"3c:22:fb:00:01:{i:02x}" for i in range(64)]
    entries = [s.open(macs[i % 64], f"198.51.{i % 200}.{i % 250}") for i in range(10_000)]
    for e in entries:
        s.grow(e, 5000, 50_000)
    t0 = time.perf_counter()
    first = s.exporter.render()
    t1 = time.perf_counter()
    for e in entries:
        s.grow(e, 100, 1000)
    t2 = time.perf_counter()
    second = s.exporter.render()
    t3 = time.perf_counter()
    got = parse(second)
    before = parse(first)
    assert increase({}, before, "phonehome_upload_bytes_total") == 10_000 * 5000
    assert increase(before, got, "phonehome_upload_bytes_total") == 10_000 * 100
    assert_monotonic(before, got)
    assert len(label_values(got, "phonehome_upload_bytes_total", "device")) == 64
    series = sum(1 for ln in second.decode().splitlines() if ln and ln[0] != "#")
    print(
        f"\n10k flows / 64 devices: first scrape {1000 * (t1 - t0):.0f} ms, next "
        f"{1000 * (t3 - t2):.0f} ms, {len(first)} / {len(second)} bytes, {series} series"
    )


# --- the endpoint -------------------------------------------------------------------------------


def _get(url: str, headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, **kw) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _basic(user: str, pw: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def test_paths_and_methods() -> None:
    s = FakeSensor()
    s.exporter.start()
    try:
        url = s.exporter.url
        assert url.startswith("http://127.0.0.1:")
        assert _get(url)[0] == 200
        assert _get(url.replace("/metrics", "/"))[0] == 200
        assert _get(url.replace("/metrics", "/secret"))[0] == 404
    finally:
        s.exporter.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port_of(url)), 1)


def test_basic_auth_with_a_hash(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    cfg = MetricsConfig(port=0, basic_auth_user="prom", basic_auth_password_sha256=digest)
    s = FakeSensor(cfg)
    s.exporter.start()
    try:
        url = s.exporter.url
        code, _ = _get(url)
        assert code == 401
        assert _get(url, _basic("prom", "wrong"))[0] == 401
        assert _get(url, _basic("other", "s3cret"))[0] == 401
        assert _get(url, {"Authorization": "Bearer s3cret"})[0] == 401
        code, body = _get(url, _basic("prom", "s3cret"))
        assert code == 200 and b"phonehome_scrape_collector_success" in body
    finally:
        s.exporter.stop()


def test_password_and_token_files_must_be_private(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    os.chmod(pw, 0o644)
    os.chmod(token, 0o600)
    cfg = MetricsConfig(
        port=0, basic_auth_user="prom", basic_auth_password_file=str(pw),
        bearer_token_file=str(token),
    )  # fmt: skip
    s = FakeSensor(cfg)
    with pytest.raises(MetricsError, match="readable by others"):
        s.exporter.start()
    os.chmod(pw, 0o600)
    s.exporter.start()
    try:
        url = s.exporter.url
        assert _get(url)[0] == 401
        assert _get(url, _basic("prom", "hunter2"))[0] == 200  # either credential will do
        assert _get(url, {"Authorization": "Bearer tok-123"})[0] == 200
        assert _get(url, {"Authorization": "Bearer tok-12"})[0] == 401
    finally:
        s.exporter.stop()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 / ::1 (PEM cert, PEM key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phonehome test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "metrics.crt", directory / "metrics.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    s = FakeSensor(MetricsConfig(port=0, tls_cert_file=str(cert), tls_key_file=str(key)))
    s.exporter.start()
    try:
        url = s.exporter.url
        assert url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        code, body = _get(url, context=ctx)
        assert code == 200 and b"phonehome_" in body
        with pytest.raises(urllib.error.URLError):  # an untrusted certificate is refused
            _get(url, context=ssl.create_default_context())
        # Plain HTTP to the TLS port gets nowhere, and the server carries on.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            _get(url.replace("https://", "http://"))
        assert _get(url, context=ctx)[0] == 200
    finally:
        s.exporter.stop()


def test_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    s = FakeSensor(MetricsConfig(address="::1", port=0))
    s.exporter.start()
    try:
        assert s.exporter.url.startswith("http://[::1]:")
        assert _get(s.exporter.url)[0] == 200
    finally:
        s.exporter.stop()


QUIET = ("pipeline", "process", "data", "capture")
"""FakeSensor's collectors off (it has no packets)."""


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _closed_within(conn: socket.socket, seconds: float) -> bool:
    """The server closed `conn` within `seconds` (whatever it sent before)."""
    try:
        _answered(conn, seconds)
    except TimeoutError:
        return False
    return True


def dropped(got: Series) -> dict[str, float]:
    """phonehome_metrics_connections_dropped_total of parsed metrics, by reason."""
    return {
        r: values(got, "phonehome_metrics_connections_dropped_total", reason=r)[0]
        for r in ("evicted", "timeout", "invalid")
    }


def _dropped(exporter: Exporter, reason: str) -> float:
    return dropped(parse(exporter.render()))[reason]


def test_at_the_limit_a_new_connection_takes_the_place_of_the_oldest_idle_one() -> None:
    s = FakeSensor(MetricsConfig(port=0, max_connections=4, disabled_collectors=QUIET))
    s.exporter.start()
    addr = ("127.0.0.1", port_of(s.exporter.url))
    idle = []
    try:
        for _ in range(4):
            idle.append(socket.create_connection(addr, timeout=5))
            time.sleep(0.05)  # in order of age
        idle[1].sendall(b"GET /metr")  # dribbling counts for nothing: age does
        assert _get(s.exporter.url)[0] == 200  # pushes the oldest idle connection out
        idle.append(socket.create_connection(addr, timeout=5))  # the limit again
        assert _get(s.exporter.url)[0] == 200  # and the next oldest, dribbling or not
        assert [_still_open(c) for c in idle] == [False, False, True, True, True]
        assert _dropped(s.exporter, "evicted") == 2
    finally:
        for c in idle:
            c.close()
        s.exporter.stop()


def _still_open(c: socket.socket, seconds: float = 0.3) -> bool:
    """The server has not closed `c` (checked without reading from it)."""
    p = select.poll()
    p.register(c, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return not p.poll(int(seconds * 1000))


def _connect_from(host: str, addr: tuple[str, int]) -> socket.socket:
    c = socket.socket()
    c.bind((host, 0))
    c.connect(addr)
    return c


def test_at_the_limit_the_address_with_the_most_connections_makes_room() -> None:
    s = FakeSensor(MetricsConfig(port=0, max_connections=4, disabled_collectors=QUIET))
    s.exporter.start()
    addr = ("127.0.0.1", port_of(s.exporter.url))
    quiet = _connect_from("127.0.0.1", addr)  # the oldest, but alone at its address
    time.sleep(0.05)
    crowd = [_connect_from("127.0.0.2", addr) for _ in range(3)]
    try:
        crowd += [_connect_from("127.0.0.2", addr) for _ in range(2)]  # push their own out
        other = _connect_from("127.0.0.3", addr)  # and so does a newcomer from elsewhere
        time.sleep(0.2)
        assert [_still_open(c, 0.1) for c in crowd] == [False, False, False, True, True]
        assert _still_open(quiet) and _still_open(other)
        assert _dropped(s.exporter, "evicted") == 3
    finally:
        for c in [quiet, other, *crowd]:
            c.close()
        s.exporter.stop()


def _unread_scrape(addr: tuple[str, int], source: str) -> socket.socket:
    """A scrape that never reads its answer (and keeps its receive buffer small)."""
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    c.bind((source, 0))
    c.connect(addr)
    c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    return c


def _wait_stalled(server: Any, host: str, n: int, deadline: float = 10.0) -> list[float]:
    """Wait until `host` has `n` answers in the server's hands, none of them moving (the client
    reads nothing): their last-progress marks, oldest first. Ordering by state, not by sleeps,
    so a loaded machine cannot reorder them."""
    end, last = time.monotonic() + deadline, None
    while time.monotonic() < end:
        try:
            conns = [c for c in list(server._conns.values()) if c.host == host]
        except RuntimeError:  # the serving thread changed the dict meanwhile
            continue
        marks = sorted(c.mark for c in conns if c.phase == metrics.server._WRITING and c.out)
        if len(marks) == n and marks == last:
            return marks
        last = marks
        time.sleep(0.3)
    raise AssertionError(f"{n} stalled answers to {host} not seen within {deadline} s")


def _answered(c: socket.socket, seconds: float = 2) -> bytes:
    """All the server sent before closing `c` (b"" when it reset it)."""
    c.settimeout(seconds)
    data = b""
    try:
        while chunk := c.recv(65536):
            data += chunk
    except ConnectionError:
        pass
    return data


def test_at_the_limit_the_longest_unread_answer_makes_room() -> None:
    s = FakeSensor(MetricsConfig(port=0, max_connections=2, disabled_collectors=QUIET))
    rng = random.Random(7)
    macs = [random_mac(rng) for _ in range(64)]
    for i in range(3000):  # an answer of ~900 kB
        s.grow(s.open(macs[i % 64], f"198.51.{i // 250}.{i % 250}"), 1000, 1000)
    s.exporter.start()
    server = s.exporter._server
    assert server is not None  # small send buffers (inherited from the listening socket), so
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # answers stall
    addr = ("127.0.0.1", port_of(s.exporter.url))
    first = _unread_scrape(addr, "127.0.0.2")
    _wait_stalled(server, "127.0.0.2", 1)
    second = _unread_scrape(addr, "127.0.0.2")
    marks = _wait_stalled(server, "127.0.0.2", 2)
    assert marks[0] < marks[1]  # the first answer stalled before the second one's last write
    try:
        code, body = _get(s.exporter.url)  # from 127.0.0.1: takes the first one's place
        assert code == 200 and len(body) > 800_000
        assert len(_answered(first)) < 800_000  # reset
        assert _still_open(second)  # its answer still stuck in the buffers
        assert _dropped(s.exporter, "evicted") == 1
    finally:
        first.close()
        second.close()
        s.exporter.stop()


def test_a_slow_request_is_cut_off_after_connection_timeout() -> None:
    s = FakeSensor(MetricsConfig(port=0, connection_timeout=0.5, disabled_collectors=QUIET))
    s.exporter.start()
    addr = ("127.0.0.1", port_of(s.exporter.url))
    silent = socket.create_connection(addr, timeout=5)
    dribbler = socket.create_connection(addr, timeout=0.05)
    try:
        t0 = time.monotonic()
        closed_at = None
        # A byte each 50 ms for 12 s at most: a dribble that would outlast any liveness deadline.
        for ch in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 220:
            try:
                dribbler.send(bytes([ch]))
                if dribbler.recv(100) == b"":
                    closed_at = time.monotonic() - t0
                    break
            except TimeoutError:
                continue
            except ConnectionError:  # dropped connections are reset
                closed_at = time.monotonic() - t0
                break
        # Cut off while still sending (never before the timeout); how soon after it is a figure.
        assert closed_at is not None and closed_at > 0.45, closed_at
        assert _closed_within(silent, 10)
        assert _dropped(s.exporter, "timeout") == 2
        assert _get(s.exporter.url)[0] == 200
    finally:
        silent.close()
        dribbler.close()
        s.exporter.stop()


def test_an_oversized_request_is_dropped() -> None:
    s = FakeSensor()
    s.exporter.start()
    try:
        c = socket.create_connection(("127.0.0.1", port_of(s.exporter.url)), timeout=5)
        c.sendall(b"GET /metrics HTTP/1.0\r\n" + b"X-Pad: " + b"a" * 10_000 + b"\r\n\r\n")
        assert _closed_within(c, 10)  # a liveness deadline: it is closed at once
        c.close()
        assert _dropped(s.exporter, "invalid") == 1
    finally:
        s.exporter.stop()


def test_new_connections_are_accepted_at_accept_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics.server, "ACCEPT_RATE", 20.0)
    monkeypatch.setattr(metrics.server, "_ACCEPT_BURST", 5.0)
    s = FakeSensor(MetricsConfig(port=0, disabled_collectors=QUIET))
    s.exporter.start()
    try:
        t0 = time.monotonic()
        codes = [_get(s.exporter.url)[0] for _ in range(25)]  # 5 at once, then 20 a second
        took = time.monotonic() - t0
        assert codes == [200] * 25
        assert took >= 0.9, took  # held to the rate; how much longer depends on the machine
    finally:
        s.exporter.stop()


def test_scrapes_within_min_interval_share_one_collection() -> None:
    s = FakeSensor(MetricsConfig(port=0, min_interval=0.5, disabled_collectors=QUIET))
    e = s.open("02:00:00:00:00:01", "198.51.100.1")
    s.grow(e, 10, 0)
    s.exporter.start()
    try:
        url = s.exporter.url
        first = _get(url)[1]
        s.grow(e, 5, 0)
        assert _get(url)[1] == first  # the same collection, byte for byte
        om = urllib.request.Request(
            url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        with urllib.request.urlopen(om, timeout=10) as resp:  # another format, same data
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            assert "phonehome_upload_bytes_total{" in resp.read().decode()
        got = parse(first)
        assert total(got, "phonehome_upload_bytes_total") == 10
        assert got[("phonehome_metrics_collections_total", frozenset())] == 1
        time.sleep(0.55)
        later = parse(_get(url)[1])
        assert total(later, "phonehome_upload_bytes_total") == 15
        assert later[("phonehome_metrics_collections_total", frozenset())] == 2
        gz = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(gz, timeout=10) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert parse(gzip.decompress(resp.read())) == later
        code, body = _get(url + "?name[]=phonehome_upload_bytes_total")
        assert code == 200 and set(parse(body)) == {
            k for k in later if k[0] == "phonehome_upload_bytes_total"
        }
        s.grow(e, 1, 0)
        assert total(parse(s.exporter.render()), "phonehome_upload_bytes_total") == 16
        codes = parse(s.exporter.render())
        assert values(codes, "phonehome_metrics_http_requests_total", code="200") == [6.0]
    finally:
        s.exporter.stop()


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_unauthenticated_requests_get_401_and_no_metrics(tmp_path: Path, scheme: str) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    token.chmod(0o600)
    if scheme == "basic":
        digest = hashlib.sha256(b"s3cret").hexdigest()
        cfg = MetricsConfig(port=0, basic_auth_user="prom", basic_auth_password_sha256=digest)
        good = _basic("prom", "s3cret")
    else:
        cfg = MetricsConfig(port=0, bearer_token_file=str(token))
        good = {"Authorization": "Bearer tok-123"}
    s = FakeSensor(cfg)
    s.open("02:00:00:00:00:01", "198.51.100.1")
    s.exporter.start()
    try:
        url = s.exporter.url
        bad: list[dict[str, str]] = [
            {},
            {"Authorization": ""},
            {"Authorization": "Basic"},
            {"Authorization": "Basic !!!notbase64"},
            {"Authorization": "Basic " + base64.b64encode(b"prom").decode()},  # no colon
            _basic("prom", "wrong"),
            _basic("prom", "s3cre"),
            _basic("Prom", "s3cret"),
            _basic("", ""),
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer tok-12"},
            {"Authorization": "Bearer tok-1234"},
            {"Authorization": "Bearer s3cret"},
            {"Authorization": "Digest tok-123"},
            {"Authorization": "tok-123"},
        ]
        for headers in bad:
            for path in ("/metrics", "/", "/nope"):
                code, body = _get(url.replace("/metrics", path), headers)
                assert (code, body) == (401, b"401 Unauthorized\n"), (headers, path)
        req = urllib.request.Request(url)
        try:
            urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as exc:
            scheme_word = "Basic" if scheme == "basic" else "Bearer"
            assert exc.headers["WWW-Authenticate"] == f'{scheme_word} realm="phonehome"'
        # Nothing was collected for them; the right credential scrapes.
        code, body = _get(url, good)
        assert code == 200 and b"phonehome_upload_bytes_total" in body
        got = parse(body)
        assert got[("phonehome_metrics_collections_total", frozenset())] == 1
        assert values(got, "phonehome_metrics_http_requests_total", code="401") == [
            3.0 * len(bad) + 1
        ]
    finally:
        s.exporter.stop()


def test_reconfigure_restarts_the_endpoint_and_keeps_the_counts() -> None:
    s = FakeSensor()
    e = s.open("02:00:00:00:00:01", "198.51.100.1")
    s.grow(e, 10, 20)
    s.exporter.start()
    try:
        assert total(parse(_get(s.exporter.url)[1]), "phonehome_upload_bytes_total") == 10
        old = s.exporter.cfg
        s.exporter.reconfigure(old)  # nothing changed: keeps running as it was
        token_cfg = MetricsConfig(  # min_interval 0: a fresh collection for the next scrape
            port=0, scrape_timeout=5.0, min_interval=0, disabled_collectors=old.disabled_collectors
        )
        s.exporter.reconfigure(token_cfg)
        s.grow(e, 5, 0)
        code, body = _get(s.exporter.url)
        assert code == 200
        assert total(parse(body), "phonehome_upload_bytes_total") == 15
    finally:
        s.exporter.stop()


def test_placeholders_and_thresholds_exported(wired: Wired, tmp_path: Path) -> None:
    wired.stages.detector.placeholders_seen["android_mac"] += 2
    wired.pipeline.not_devices["zero_mac"] += 1
    got = parse(wired.exporter.render())
    name = "phonehome_placeholders_total"
    assert values(got, name, reason="android_mac", **{"as": "identifier"}) == [2.0]
    assert values(got, name, reason="zero_mac", **{"as": "device"}) == [1.0]
    assert label_values(got, name, "reason") == set(wired.stages.detector.placeholders.reasons)
    # foreign_upload is off by default: only new_party_upload has a threshold.
    assert label_values(got, "phonehome_alert_threshold_bytes", "rule") == {"new_party_upload"}


def test_an_open_connection_pushed_out_of_a_full_table_counts_once(tmp_path: Path) -> None:
    """A phone's connection pushed out of the flow table by a flood, then seen again by each
    periodic conntrack dump: one flow and conntrack's own bytes in the metrics, scraped
    whether it is live or ended."""
    state = tmp_path / "state"
    state.mkdir()
    w = Wired(home_config(state, flows={"max_flows": 16, "end_grace": 0}))
    try:
        p = w.pipeline
        p.learn_neighbour(PHONE.ip, PHONE.mac)
        t = 1_700_000_000.0
        sent = [(713, 4000), (713, 4000), (900, 5000), (1500, 5000), (2100, 6000)]
        prev: Series = {}
        for i, (up, down) in enumerate(sent):
            p.account_conntrack("tcp", PHONE.ip, 40001, AWS_SG_IP, 443, up, 9 + i, down, 8 + i,
                                t + 10 * i, ct_id=7)  # fmt: skip
            now = parse(w.exporter.render())
            assert_monotonic(prev, now)
            prev = now
            for port in range(50000 + 100 * i, 50000 + 100 * i + 40):  # the flood
                p.account_conntrack("tcp", LAPTOP.ip, port, "198.51.100.9", 80, 60, 1, 40, 1,
                                    t + 10 * i + 1, ct_id=port)  # fmt: skip
        p.account_conntrack("tcp", PHONE.ip, 40001, AWS_SG_IP, 443, 2100, 13, 6000, 12, t + 60,
                            True, ct_id=7)  # fmt: skip
        got = parse(w.exporter.render())
        assert_monotonic(prev, got)
        phone = {"device": "Redmi phone"}  # its MAC from the neighbour table, named in config
        assert total(got, "phonehome_flows_total", **phone) == 1
        assert total(got, "phonehome_upload_bytes_total", **phone) == 2100
        assert total(got, "phonehome_download_bytes_total", **phone) == 6000
    finally:
        w.close()
