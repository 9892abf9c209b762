"""etc/prometheus and etc/grafana: rules, scrape snippet and dashboard, checked with promtool and
against a real Prometheus (Debian's `prometheus`) scraping the exporter on loopback."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sensor.cli import main as cli_main
from sensor.config import parse_config
from sensor.enforce import Enforcer
from sensor.lab.synth import (
    AWS_SG_IP,
    DEMO_IMEI,
    DEMO_PHONE,
    LAPTOP,
    PHONE,
    RESOLVER,
    Capture,
    PcapWriter,
    TcpSession,
    client_hello,
    xiaomi_register,
)
from sensor.metrics import MetricsConfig
from sensor.policy import compile_policy
from tests.test_metrics import Wired, home_config, icmp_capture, make_certificate, sample_capture

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "etc" / "prometheus" / "phonehome.rules.yml"
RULE_TESTS = ROOT / "etc" / "prometheus" / "phonehome.rules.test.yml"
SCRAPE = ROOT / "etc" / "prometheus" / "scrape.yml"
GRAFANA = ROOT / "etc" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "phonehome.json"
FLEET_DASHBOARD = GRAFANA / "dashboards" / "phonehome-fleet.json"
PROVIDER = GRAFANA / "provisioning" / "dashboards" / "phonehome.yml"

GRAFANA_VARIABLES = {
    # Grafana's built-ins, as it would fill them for "last 5 minutes" at a 1 s scrape interval.
    "__rate_interval": "10s",
    "__interval": "2s",
    "__range": "5m",
    # The dashboard's own, with "All" selected.
    "job": "phonehome",
    "instance": ".*",
    "device": ".*",
    "site": ".*",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package prometheus)")
    return path


def substitute(expr: str) -> str:
    """Grafana's variable interpolation for $name and ${name} (not label_replace's $1)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return GRAFANA_VARIABLES.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", one, expr)


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panel_targets(board: dict[str, Any] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (p["title"], t["refId"], t)
        for p in (board or dashboard())["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]


def fleet_dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FLEET_DASHBOARD.read_text())
    return doc


def fleet_targets() -> list[tuple[str, str, dict[str, Any]]]:
    return panel_targets(fleet_dashboard())


# --- the dashboard file -----------------------------------------------------------------------


def test_dashboard_json_is_what_the_generator_builds() -> None:
    res = subprocess.run(
        [sys.executable, str(GRAFANA / "build_dashboard.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr


def test_dashboard_is_ready_for_file_provisioning() -> None:
    d = dashboard()
    assert "__inputs" not in d and "__requires" not in d
    assert d["id"] is None and d["uid"] == "phonehome-overview" and len(d["uid"]) <= 40
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "instance", "device"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ds = {"type": "prometheus", "uid": "${datasource}"}
    for v in ("job", "instance", "device"):
        assert variables[v]["datasource"] == ds
    assert variables["device"]["includeAll"] and variables["device"]["allValue"] == ".*"
    ids: set[int] = set()
    boxes: list[tuple[int, int, int, int, str]] = []
    for p in d["panels"]:
        assert p["id"] not in ids
        ids.add(p["id"])
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        for x, y, w, h, other in boxes:
            overlap = (
                g["x"] < x + w and x < g["x"] + g["w"] and g["y"] < y + h and y < g["y"] + g["h"]
            )
            assert not overlap, (p["title"], other)
        boxes.append((g["x"], g["y"], g["w"], g["h"], p["title"]))
        if p["type"] == "row":
            continue
        assert p["datasource"] == ds, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"] == ds and t["expr"].strip()
            for name in re.findall(r"\$\{?([A-Za-z_]\w*)", t["expr"]):
                assert name in GRAFANA_VARIABLES, (p["title"], name)
    kinds = {p["type"] for p in d["panels"]}
    assert {"geomap", "table", "timeseries", "stat", "bargauge", "row"} <= kinds
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert rows == [
        "Devices",
        "Where uploads go",
        "Identifiers and alerts",
        "Policy",
        "Sensor health",
    ]
    (geo,) = [p for p in d["panels"] if p["type"] == "geomap"]
    layer = geo["options"]["layers"][0]
    assert layer["location"] == {
        "mode": "lookup",
        "lookup": "dst_country",
        "gazetteer": "public/gazetteer/countries.json",
    }
    assert "sum by (dst_country)" in geo["targets"][0]["expr"]
    assert geo["targets"][0]["format"] == "table" and geo["targets"][0]["instant"]


def test_fleet_dashboard_has_site_on_every_panel() -> None:
    d = fleet_dashboard()
    assert d["id"] is None and d["uid"] == "phonehome-fleet"
    assert d["uid"] != dashboard()["uid"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert set(variables) == {"datasource", "site"}
    assert variables["site"]["includeAll"] and variables["site"]["allValue"] == ".*"
    assert "phonehome_site_info, site" in variables["site"]["definition"]
    titles = set()
    for title, ref, t in fleet_targets():
        titles.add(title)
        # every selector in the query narrows by site
        selectors = re.findall(r"\b[a-zA-Z_:]\w*\{[^}]*\}|\{__name__[^}]*\}", t["expr"])
        assert selectors, (title, ref)
        for sel in selectors:
            assert 'site=~"$site"' in sel, (title, ref, sel)
    assert {
        "Sites",
        "Sensor alerts per site",
        "Devices exposing identifiers, across the fleet",
    } <= titles


def test_provisioning_provider() -> None:
    text = PROVIDER.read_text()
    assert text.startswith("#") and "\napiVersion: 1\n" in text
    assert re.search(r"^\s+type: file$", text, re.M)
    assert re.search(r"^\s+path: /var/lib/grafana/dashboards/phonehome$", text, re.M)
    assert "__inputs" not in text


def policy_enforcer() -> Enforcer:
    """An enforcer over a one-rule policy (never installed: the metrics read its counters)."""
    cfg = parse_config(
        {
            "devices": [{"mac": "64:09:80:00:00:01", "name": "Redmi"}],
            "policy": {"rules": [{"name": "r", "devices": ["Redmi"], "countries": ["CN"]}]},
        }
    )
    data = SimpleNamespace(ranges=lambda kind, value: ([], []), party_domains=lambda p: [])
    compiled = compile_policy(cfg.policy, cfg.devices, ["lan"], data, 0.0)
    return Enforcer(compiled, resolvers=(), abroad_expiry=60, abroad_max=1)


def test_names_in_dashboard_and_rules_exist(tmp_path: Path) -> None:
    """Every phonehome_* name the dashboard and the rules use is one the exporter serves."""
    state = tmp_path / "state"
    state.mkdir()
    w = Wired(
        home_config(state),
        source=SimpleNamespace(stats=lambda: {"received": 1, "delivered": 1, "drops": 0}),
        conntrack=SimpleNamespace(received=1, lost_overruns=0, decode_errors=0, backlog=lambda: 0),
    )
    try:
        (state / "data").mkdir()
        (state / "data" / "manifest.json").write_text(
            json.dumps({"sources": {"aws": {"fetched": "2025-07-24T00:00:00Z", "records": 1}}})
        )
        w.feed(sample_capture(tmp_path / "home.pcap"))
        w.feed(icmp_capture(tmp_path / "icmp.pcap", 1_700_000_001.0))
        w.feed(second_visit(tmp_path / "second.pcap", 1_700_000_600.0))  # DoT: dns_bypass
        w.write_errors = {("flows.json", "ENOSPC"): 1}  # served only once a write has failed
        w.capture_mode, w.rules_restored = "nflog", {}  # served for the NFLOG capture only
        w.enforcer = policy_enforcer()  # served while a policy is loaded
        served = set(re.findall(r"^(\w+)", w.exporter.render().decode(), re.M))
    finally:
        w.close()
    # served only with Alertmanagers configured (tests/test_metrics.py shows them)
    served |= {"phonehome_alertmanager_alerts_total", "phonehome_alertmanager_queue_length"}
    recorded = set(re.findall(r"record: (\S+)", RULES.read_text()))
    used = set()
    for _, _, t in panel_targets() + fleet_targets():
        used |= set(re.findall(r"\b(phonehome_\w+|process_\w+)", t["expr"]))
    used |= set(re.findall(r"\b(phonehome_\w+)", RULES.read_text()))
    missing = {n for n in used if n not in served and n not in recorded}
    assert not missing, missing


# --- promtool ---------------------------------------------------------------------------------


def test_rules_check_and_unit_tests() -> None:
    promtool = tool("promtool")
    res = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_scrape_snippet_is_a_valid_config(tmp_path: Path) -> None:
    promtool = tool("promtool")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(SCRAPE.read_text().replace("/etc/prometheus/phonehome.rules.yml", str(RULES)))
    res = subprocess.run(
        [promtool, "check", "config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each (interpolated) query as a recording rule's expression."""
    promtool = tool("promtool")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": substitute(t["expr"])}
                    for i, (_, _, t) in enumerate(panel_targets() + fleet_targets())
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    res = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr


# --- a real Prometheus ------------------------------------------------------------------------

AWS_RANGES = {
    "syncToken": "1700000000",
    "createDate": "2025-07-24-00-00-00",
    "prefixes": [
        {
            "ip_prefix": "52.74.0.0/16",
            "region": "ap-southeast-1",
            "service": "AMAZON",
            "network_border_group": "ap-southeast-1",
        },
        {
            "ip_prefix": "52.74.0.0/16",
            "region": "ap-southeast-1",
            "service": "EC2",
            "network_border_group": "ap-southeast-1",
        },
    ],
    "ipv6_prefixes": [],
}


def second_visit(path: Path, start: float) -> Path:
    """Ten minutes after the sample: the phone leaks again and uploads more to Singapore."""
    buf = io.BytesIO()
    cap = Capture(PcapWriter(buf), start=start)
    body = f"imei={DEMO_IMEI}&phone=%2B{DEMO_PHONE[1:]}&model=Redmi+Note+8+Pro".encode()
    xiaomi_register(cap, 41001, body)
    cap.dns_lookup(PHONE, RESOLVER, "tracking.intl.miui.com", [AWS_SG_IP], ttl=300)
    s = TcpSession(cap, PHONE, AWS_SG_IP, 41002, 443)
    s.open()
    s.send(client_hello("tracking.intl.miui.com"))
    s.send(bytes(2000), up=False)
    s.send(bytes(300_000), up=True)
    s.close()
    s = TcpSession(cap, LAPTOP, "192.0.2.80", 50001, 443)
    s.open()
    s.send(client_hello("www.example.com"))
    s.send(bytes(40_000), up=False)
    s.close()
    s = TcpSession(cap, LAPTOP, "198.51.100.53", 50002, 853)  # DoT past the network's resolver
    s.open()
    s.send(client_hello("dns.example.net"))
    s.send(bytes(3_000), up=False)
    s.close()
    path.write_bytes(buf.getvalue())
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """Debian's prometheus on 127.0.0.1, storage in a temporary directory, stopped by PID."""

    def __init__(self, config: Path, data: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus not ready in time")

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path} {params}: {exc.code} {exc.read()[:500]!r}") from None
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [data["result"]]

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None

    def wait_for(self, expr: str, want: float, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.value(expr)
            if got is not None and got >= want:
                return
            time.sleep(0.25)
        raise AssertionError(f"{expr}: {got}, wanted {want}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to this PID only
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Wired, Prometheus, SimpleNamespace]]:
    tool("prometheus")
    # A state directory after `phonehome update-data --from DIR` with a small AWS file.
    state = tmp_path / "state"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "ip-ranges.json").write_text(json.dumps(AWS_RANGES))
    ucfg = tmp_path / "update.toml"
    ucfg.write_text(f'[paths]\nstate_dir = "{state}"\n')
    assert cli_main(["update-data", "--config", str(ucfg), "--from", str(inbox)]) == 0
    # The exporter over TLS with basic auth, as a Prometheus on another machine would scrape.
    cert, key = make_certificate(tmp_path)
    password = tmp_path / "password"
    password.write_text("correct horse\n")
    password.chmod(0o600)
    mcfg = MetricsConfig(
        port=0,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        basic_auth_user="prometheus",
        basic_auth_password_file=str(password),
    )
    counters = SimpleNamespace(received=1000, drops=3, conntrack=40)
    source = SimpleNamespace(
        stats=lambda: {
            "received": counters.received,
            "delivered": counters.received - counters.drops,
            "drops": counters.drops,
            "freeze": 0,
            "malformed": 0,
            "truncated": 0,
        }
    )
    conntrack = SimpleNamespace(received=0, lost_overruns=0, decode_errors=0, backlog=lambda: 0)
    w = Wired(home_config(state), mcfg, source=source, conntrack=conntrack)
    w.enforcer = policy_enforcer()
    w.exporter.start()
    target = w.exporter.url.split("//")[1].split("/")[0]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "900ms",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "phonehome",
                        "scheme": "https",
                        "tls_config": {"ca_file": str(cert)},
                        "basic_auth": {"username": "prometheus", "password_file": str(password)},
                        "static_configs": [{"targets": [target]}],
                    }
                ],
            }
        )
    )
    prom = Prometheus(config, tmp_path / "tsdb", tmp_path / "prometheus.log")
    try:
        yield w, prom, SimpleNamespace(counters=counters, conntrack=conntrack, tmp=tmp_path)
    finally:
        prom.stop()
        w.close()


def test_dashboard_queries_and_alerts_on_a_real_prometheus(
    live: tuple[Wired, Prometheus, SimpleNamespace],
) -> None:
    w, prom, ctl = live
    tmp: Path = ctl.tmp
    w.feed(sample_capture(tmp / "home.pcap"))
    w.feed(icmp_capture(tmp / "icmp.pcap", 1_700_000_001.0))
    prom.wait_ready()
    sel = '{job="phonehome"}'
    prom.wait_for(f"count_over_time(phonehome_packets_read_total{sel}[1m])", 2)
    assert prom.value(f"up{sel}") == 1.0
    # Ten minutes of traffic later (flows of the first visit end idle on the way).
    read_before = prom.value(f"phonehome_packets_read_total{sel}")
    assert read_before is not None
    w.feed(second_visit(tmp / "second.pcap", 1_700_000_600.0))
    w.feed(icmp_capture(tmp / "icmp2.pcap", 1_700_000_700.0))
    ctl.counters.received += 500
    ctl.counters.drops += 2
    ctl.conntrack.received += 25
    read_after = float(w.pipeline.packets_read)
    assert read_after > read_before
    prom.wait_for(f"phonehome_packets_read_total{sel}", read_after)
    time.sleep(3)  # a few more scrapes, so every rate window spans the second visit

    # The identifier went to China from a home in Indonesia: IdentifierExposedAbroad fires.
    deadline = time.monotonic() + 30
    firing: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not firing:
        firing = [
            a
            for a in prom.api("alerts")["alerts"]
            if a["labels"]["alertname"] == "IdentifierExposedAbroad" and a["state"] == "firing"
        ]
        time.sleep(0.3)
    assert firing, prom.api("alerts")
    labels = {(a["labels"]["device"], a["labels"]["identifier"], a["labels"]["dst_country"])
              for a in firing}  # fmt: skip
    assert ("Redmi phone", "imei", "CN") in labels
    assert all(a["labels"]["severity"] == "critical" for a in firing)
    assert all(a["labels"]["dst_country"] != "ID" for a in firing)

    # Counters only grew in Prometheus' view across the flows' end.
    resets = prom.query(f"resets(phonehome_upload_bytes_total{sel}[5m]) > 0")
    assert not resets, resets

    # Every dashboard query returns series.
    empty = []
    for title, ref, t in panel_targets():
        expr = substitute(t["expr"])
        if not prom.query(expr):
            empty.append(f"{title} [{ref}]: {expr}")
    assert not empty, "\n".join(empty)

    # And the variables' label_values() queries have values.
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", var["query"]["query"])
        assert m, var["query"]
        got = prom.api(f"label/{m.group(2)}/values", **{"match[]": substitute(m.group(1))})
        assert got, var["name"]
    assert "Redmi phone" in prom.api("label/device/values")
    # What the geomap plots: the uploads' countries, SG (AWS ap-southeast-1) and CN among them.
    geomap = next(t for _, _, t in panel_targets() if "sum by (dst_country) (inc" in t["expr"])
    countries = {r["metric"]["dst_country"] for r in prom.query(substitute(geomap["expr"]))}
    assert {"CN", "SG"} <= countries
    regions = prom.query('phonehome_upload_bytes_total{provider="aws"}')
    assert {r["metric"]["cloud_region"] for r in regions} == {"ap-southeast-1"}
