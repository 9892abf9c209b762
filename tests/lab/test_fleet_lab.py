"""Integration: a fleet of three sites, with the reference configuration of etc/fleet.

Three labs (three gateways, each with its phones and its daemon, site.name site-0..2), three
Prometheus agents (Debian's prometheus, ``--enable-feature=agent``, one per gateway) that
remote-write over TLS with basic auth to one central Prometheus (``--web.enable-remote-write-
receiver``) in a namespace of this test's own; two Alertmanagers clustered there, and a
webhook receiver on that namespace's loopback. Every sensor sends every alert to both
Alertmanagers (alertmanager.urls).

It shows: the fleet dashboard's queries with `site` return each site's data; each leak is
notified at least once and, with the cluster settled, once only; with one Alertmanager killed
the next leaks are still notified; the agent with the MAC-dropping relabelling sends no MAC.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from sensor.lab import Lab, write_tls_material
from sensor.lab.synth import LEAK_BODY
from tests.lab.test_daemon import Daemon
from tests.test_dashboards import fleet_targets, substitute
from tests.test_fleet_configs import mac_relabelling

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "etc" / "fleet"
RULES = ROOT / "etc" / "prometheus" / "phonehome.rules.yml"
AM_BINARY = "/usr/bin/prometheus-alertmanager"

SITES = 3
CENTRAL = "10.250.0.1"
AMS = ("10.250.0.2", "10.250.0.3")
HOOK_PORT = 15001
METRICS_PORT = 14663
PASSWORD = "fleet lab password"
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

_GET = r"""
import base64, json, ssl, sys, urllib.parse, urllib.request
url, expr, ca, auth = sys.argv[1:5]
req = urllib.request.Request(url + "?" + urllib.parse.urlencode({"query": expr}))
req.add_header("Authorization", "Basic " + auth)
ctx = ssl.create_default_context(cafile=ca)
with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
    sys.stdout.write(r.read().decode())
"""

_HOOK = r"""
import http.server, sys
out = open(sys.argv[2], "ab", buffering=0)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        out.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def sh(*argv: str) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{' '.join(argv)}: {out.stderr}"


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, f"the reference config lost {old!r}"
    return text.replace(old, new)


class Fleet:
    """The central namespace: wired to each lab's gateway by a veth pair."""

    def __init__(self, labs: list[Lab], tmp: Path) -> None:
        self.labs = labs
        self.tmp = tmp
        self.ns = f"{labs[0].id}-fleet"  # named like the lab's, so a stale one is cleaned up
        self.procs: list[subprocess.Popen[bytes]] = []
        sh("ip", "netns", "add", self.ns)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        for addr in (CENTRAL, *AMS):
            sh("ip", "-n", self.ns, "addr", "add", f"{addr}/32", "dev", "lo")
        for i, lab in enumerate(labs):
            here, there = f"10.250.{10 + i}.1", f"10.250.{10 + i}.2"
            sh("ip", "-n", self.ns, "link", "add", f"fl{i}", "type", "veth", "peer", "name",
               "fleet0", "netns", lab.gw_ns)  # fmt: skip
            sh("ip", "-n", self.ns, "addr", "add", f"{here}/30", "dev", f"fl{i}")
            sh("ip", "-n", self.ns, "link", "set", f"fl{i}", "up")
            sh("ip", "-n", lab.gw_ns, "addr", "add", f"{there}/30", "dev", "fleet0")
            sh("ip", "-n", lab.gw_ns, "link", "set", "fleet0", "up")
            sh("ip", "-n", lab.gw_ns, "route", "add", "10.250.0.0/24", "via", here)
        self.tls = tmp / "tls"
        self.tls.mkdir()
        self.ca = write_tls_material(self.tls, ["central.fleet"], [CENTRAL])
        self.auth = base64.b64encode(f"site:{PASSWORD}".encode()).decode()

    def popen(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        f = (self.tmp / log).open("wb")
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=f, stderr=f)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "delete", self.ns], capture_output=True)

    # -- the central Prometheus

    def start_central(self, prometheus: str) -> None:
        text = (FLEET / "central" / "prometheus.yml").read_text()
        text = replaced(text, "evaluation_interval: 30s", "evaluation_interval: 1s")
        text = replaced(text, "/etc/prometheus/phonehome.rules.yml", str(RULES))
        text = replaced(
            text,
            "/etc/prometheus/phonehome-fleet.rules.yml",
            str(FLEET / "central" / "phonehome-fleet.rules.yml"),
        )
        text = replaced(
            text, '["10.10.0.11:9093", "10.10.0.12:9093"]', json.dumps([f"{a}:9093" for a in AMS])
        )
        (self.tmp / "central.yml").write_text(text)
        pw_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
        web = (FLEET / "central" / "web.yml").read_text()
        web = replaced(web, "/etc/prometheus/metrics.example.net.crt", str(self.tls / "cert.pem"))
        web = replaced(web, "/etc/prometheus/metrics.example.net.key", str(self.tls / "key.pem"))
        web = re.sub(r"(?m)^  home-1: .*$", f"  site: {pw_hash}", web)
        (self.tmp / "web.yml").write_text(web)
        self.popen(
            [
                prometheus,
                f"--config.file={self.tmp / 'central.yml'}",
                f"--web.config.file={self.tmp / 'web.yml'}",
                f"--storage.tsdb.path={self.tmp / 'central-tsdb'}",
                f"--web.listen-address={CENTRAL}:9090",
                "--web.enable-remote-write-receiver",
                "--log.level=warn",
            ],
            "central.log",
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", _GET,
             f"https://{CENTRAL}:9090/api/v1/query", expr, str(self.ca), self.auth],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["status"] == "success", doc
        data = doc["data"]
        return list(data["result"]) if data["resultType"] == "vector" else [data["result"]]

    def wait(self, expr: str, what: str, timeout: float = 60) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            res = self.query(expr)
            if res:
                return res
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}: {expr}\n{self.logs()}")

    # -- the agents, one per gateway

    def start_agent(self, prometheus: str, i: int, drop_macs: bool) -> None:
        lab = self.labs[i]
        text = (FLEET / "agent" / "prometheus.yml").read_text()
        text = replaced(text, "scrape_interval: 30s", "scrape_interval: 1s")
        text = replaced(text, "scrape_timeout: 10s", "scrape_timeout: 1s")
        text = replaced(text, "site: home-1", f"site: site-{i}")
        text = replaced(text, "https://metrics.example.net:9090/", f"https://{CENTRAL}:9090/")
        text = replaced(text, "server_name: metrics.example.net", f"server_name: {CENTRAL}")
        text = replaced(text, "/etc/prometheus/fleet-ca.crt", str(self.ca))
        text = replaced(text, "username: home-1", "username: site")
        pw = self.tmp / f"agent-{i}.password"
        pw.write_text(PASSWORD)
        text = replaced(text, "/etc/prometheus/fleet-remote-write.password", str(pw))
        text = replaced(text, "batch_send_deadline: 10s", "batch_send_deadline: 1s")
        if drop_macs:
            text = mac_relabelling(text)
        conf = self.tmp / f"agent-{i}.yml"
        conf.write_text(text)
        log = (self.tmp / f"agent-{i}.log").open("wb")
        lab.gw_popen(
            [
                prometheus,
                "--enable-feature=agent",
                f"--config.file={conf}",
                f"--storage.agent.path={self.tmp / f'agent-{i}-wal'}",
                "--web.listen-address=127.0.0.1:19091",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
        )

    # -- the Alertmanager pair and the webhook receiver

    def start_alertmanagers(self) -> None:
        self.hook = self.tmp / "webhook.jsonl"
        self.hook.touch()
        self.popen([sys.executable, "-c", _HOOK, str(HOOK_PORT), str(self.hook)], "hook.log")
        text = (FLEET / "alertmanager" / "alertmanager.yml").read_text()
        text = replaced(text, "group_wait: 30s", "group_wait: 2s")
        text = replaced(text, "group_interval: 5m", "group_interval: 5s")
        text = replaced(
            text, "https://hooks.example.net/phonehome", f"http://127.0.0.1:{HOOK_PORT}/"
        )
        (self.tmp / "alertmanager.yml").write_text(text)
        self.am: list[subprocess.Popen[bytes]] = []
        for n, (addr, peer) in enumerate((AMS, AMS[::-1])):
            self.am.append(
                self.popen(
                    [
                        AM_BINARY,
                        f"--config.file={self.tmp / 'alertmanager.yml'}",
                        f"--storage.path={self.tmp / f'am-{n}'}",
                        f"--web.listen-address={addr}:9093",
                        f"--cluster.listen-address={addr}:9094",
                        f"--cluster.advertise-address={addr}:9094",
                        f"--cluster.peer={peer}:9094",
                        "--cluster.peer-timeout=5s",
                        "--cluster.gossip-interval=200ms",
                        "--cluster.pushpull-interval=2s",
                        "--log.level=warn",
                    ],
                    f"am-{n}.log",
                )
            )

    def am_api(self, addr: str, path: str) -> Any:
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c",
             "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
             "sys.argv[1], timeout=10).read().decode())", f"http://{addr}:9093{path}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def notifications(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.hook.read_text().splitlines() if line]

    def logs(self) -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )


def leak_keys(notes: list[dict[str, Any]]) -> Counter[tuple[str, str, frozenset[str]]]:
    """Firing notifications by (site, group, the alerts in it): the same notification from
    both Alertmanagers counts 2."""
    out: Counter[tuple[str, str, frozenset[str]]] = Counter()
    for n in notes:
        if n.get("status") != "firing":
            continue
        alerts = frozenset(a["fingerprint"] for a in n["alerts"] if a["status"] == "firing")
        out[(n["groupLabels"].get("site", ""), n["groupKey"], alerts)] += 1
    return out


def sites_notified(notes: list[dict[str, Any]], device: str) -> set[str]:
    """The sites whose identifier_abroad alert about `device` (its MAC) was notified."""
    return {
        a["labels"]["site"]
        for n in notes
        for a in n["alerts"]
        if a["labels"].get("alertname") == "PhonehomeIdentifierAbroad"
        and a["labels"].get("device") == device
    }


def leak(lab: Lab, device: str) -> None:
    lab.http_post(device, "api.account.xiaomi.com", path="/pass/v2/register", body=LEAK_BODY)


def test_fleet_of_three_sites(lab_usable: None, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None or not Path(AM_BINARY).exists():
        pytest.skip("prometheus and prometheus-alertmanager needed (packaging/system-deps.sh)")
    urls = json.dumps([f"http://{a}:9093" for a in AMS])
    with contextlib.ExitStack() as stack:
        labs = [stack.enter_context(Lab.create(quic=False)) for _ in range(SITES)]
        fleet = Fleet(labs, tmp_path)
        stack.callback(fleet.close)
        fleet.start_alertmanagers()
        fleet.start_central(prometheus)
        daemons = []
        for i, lab in enumerate(labs):
            (tmp_path / f"site-{i}").mkdir()
            d = Daemon(
                lab,
                tmp_path / f"site-{i}",
                extra=f"[metrics]\nport = {METRICS_PORT}\n"
                f"[alertmanager]\nurls = {urls}\nbackoff = 0.5\ntimeout = 2\n",
                edit=lambda t, i=i: t.replace("[site]\n", f'[site]\nname = "site-{i}"\n', 1),
            )
            daemons.append(d)
            stack.callback(lambda d=d: d.stop())
            fleet.start_agent(prometheus, i, drop_macs=i == 2)
        for d in daemons:
            d.wait_notify("READY=1", timeout=30)
        names = [f"site-{i}" for i in range(SITES)]
        up = fleet.wait(
            "count(phonehome_site_info) by (site) and on (site) count(up == 1) by (site)",
            "every site's series at the central Prometheus",
        )
        end = time.monotonic() + 60
        while {r["metric"]["site"] for r in up} != set(names) and time.monotonic() < end:
            time.sleep(1)
            up = fleet.query("count by (site) (phonehome_site_info)")
        assert {r["metric"]["site"] for r in up} == set(names), up

        # 1. Every site's phone leaks, with both Alertmanagers up: each site's alert is
        # notified, and once the cluster has settled, each notification arrives once.
        for lab in labs:
            leak(lab, "xiaomi")
        end = time.monotonic() + 60
        redmi, samsung = labs[0].devices["xiaomi"].mac, labs[0].devices["samsung"].mac
        while sites_notified(fleet.notifications(), redmi) != set(names):
            assert time.monotonic() < end, (fleet.notifications(), fleet.logs())
            time.sleep(1)
        for addr in AMS:  # each member received each site's alert (from the sensors)
            status = fleet.am_api(addr, "/api/v2/status")
            assert status["cluster"]["status"] == "ready" and len(status["cluster"]["peers"]) == 2
            alerts = fleet.am_api(addr, "/api/v2/alerts")
            assert {
                a["labels"]["site"]
                for a in alerts
                if a["labels"]["alertname"] == "PhonehomeIdentifierAbroad"
                and a["labels"]["device"] == redmi
            } == set(names), (addr, alerts)
        time.sleep(15)  # longer than group_wait + peer timeout: the second member's turn
        dup = {k: n for k, n in leak_keys(fleet.notifications()).items() if n > 1}
        assert not dup, dup
        for lab in labs:  # a second exposure: the counters' increase() has a change to see
            leak(lab, "xiaomi")

        # 2. One Alertmanager dies; the next leak (another device at every site) is still
        # notified, by the other.
        fleet.am[0].terminate()
        fleet.am[0].wait(15)
        for lab in labs:
            leak(lab, "samsung")
        end = time.monotonic() + 90
        while (got := sites_notified(fleet.notifications(), samsung)) != set(names):
            assert time.monotonic() < end, (got, fleet.logs())
            time.sleep(1)
        for d in daemons:
            assert d.proc.poll() is None, d.output()

        # 3. The fleet dashboard, per site: every panel has data for each site, and only
        # that site's.
        fleet.wait(
            'ALERTS{alertname="IdentifierExposedAbroad", alertstate="firing", site="site-2"}',
            "the central rule firing for site-2",
        )
        time.sleep(5)  # a few more samples for every rate window
        for site in names:
            empty = []
            for title, ref, t in fleet_targets():
                expr = t["expr"].replace("$site", site)
                assert "$site" not in expr and site in expr
                expr = substitute(expr)
                res = fleet.query(expr)
                if not res:
                    empty.append(f"{title}/{ref}")
                other = {r["metric"].get("site", site) for r in res} - {site}
                assert not other, (site, title, other)
            assert not empty, (site, empty)

        # 4. The agent with the MAC-dropping relabelling sent no MAC; the others did.
        info = fleet.query('phonehome_device_info{site="site-2"}')
        assert info and all("mac" not in r["metric"] for r in info), info
        series = fleet.query('{site="site-2", device=~".+"}')
        assert series and not [r for r in series if MAC_RE.search(r["metric"]["device"])]
        assert any(r["metric"]["device"].startswith("mac-") for r in series)
        assert all(
            "mac" in r["metric"] for r in fleet.query('phonehome_device_info{site="site-0"}')
        )
