"""Integration: a real Prometheus (Debian's) in the lab gateway scrapes the live daemon; the
phone leaks; Prometheus shows the exposure counter and the firing IdentifierExposedAbroad
alert, and every dashboard query returns series."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sensor.lab import Lab
from sensor.lab.synth import LEAK_BODY
from tests.lab.test_daemon import Daemon
from tests.test_dashboards import RULES, panel_targets, substitute

METRICS_PORT = 14663
PROM_PORT = 19090

_GET = r"""
import json, sys, urllib.parse, urllib.request
url = sys.argv[1] + "?" + urllib.parse.urlencode({"query": sys.argv[2]})
with urllib.request.urlopen(url, timeout=10) as r:
    sys.stdout.write(r.read().decode())
"""


def _query(lab: Lab, expr: str) -> list[dict[str, Any]]:
    out = lab.gw_exec(
        [sys.executable, "-c", _GET, f"http://127.0.0.1:{PROM_PORT}/api/v1/query", expr],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["status"] == "success", doc
    data = doc["data"]
    return list(data["result"]) if data["resultType"] == "vector" else [data["result"]]


def _wait(lab: Lab, expr: str, timeout: float) -> list[dict[str, Any]]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        res = _query(lab, expr)
        if res:
            return res
        time.sleep(0.5)
    raise AssertionError(f"no series for {expr}")


def test_prometheus_scrapes_the_daemon_and_fires_on_the_leak(
    lab_usable: None, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed (packaging/system-deps.sh test)")
    with Lab.create(quic=False) as lab:
        # A dry-run policy rule: the leak passes and is counted (the "Policy" panels).
        policy = (
            '[policy]\n[[policy.rules]]\nname = "redmi-cn-dry-run"\ndevices = ["Redmi phone"]\n'
            'countries = ["CN"]\n'
        )
        d = Daemon(lab, tmp_path, extra=f"[metrics]\nport = {METRICS_PORT}\n" + policy)
        prom_cfg = tmp_path / "prometheus.yml"
        prom_cfg.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {
                            "job_name": "phonehome",
                            "static_configs": [{"targets": [f"127.0.0.1:{METRICS_PORT}"]}],
                        }
                    ],
                }
            )
        )
        prom = lab.gw_popen(
            [
                prometheus,
                f"--config.file={prom_cfg}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{PROM_PORT}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            d.wait_notify("READY=1")
            _wait(lab, 'up{job="phonehome"} == 1', timeout=30)
            lab.http_post(
                "xiaomi", "api.account.xiaomi.com", path="/pass/v2/register", body=LEAK_BODY
            )
            lab.tls_upload("xiaomi", "tracking.intl.miui.com", 300_000)
            exposed = _wait(
                lab, 'phonehome_identifier_exposures_total{identifier="imei"} > 0', timeout=20
            )
            labels = exposed[0]["metric"]
            assert labels["dst_country"] == "CN" and labels["party"] == "Xiaomi"
            assert labels["encoding"] == "plain"
            # Another exposure once the series exists (increase() needs a change it saw).
            time.sleep(2)
            lab.http_post("xiaomi", "api.account.xiaomi.com", path="/again", body=LEAK_BODY)
            firing = _wait(
                lab,
                'ALERTS{alertname="IdentifierExposedAbroad", alertstate="firing"}',
                timeout=30,
            )
            assert firing[0]["metric"]["severity"] == "critical"
            would = _wait(
                lab,
                'phonehome_policy_packets_total{action="alert", device="Redmi phone"} > 0',
                timeout=20,
            )
            assert would[0]["metric"]["rule"] == "redmi-cn-dry-run"
            time.sleep(3)  # a few more scrapes, so rate() and increase() have two points
            empty = {
                title
                for title, _ref, target in panel_targets()
                if not _query(lab, substitute(target["expr"]))
            }
            # The nftables rules sample TCP and UDP only, and the lab's clients send nothing
            # malformed: a healthy sensor skips no packet, so that panel is rightly empty
            # here (tests/test_dashboards.py shows it filled from a capture that has some).
            # Likewise DNS bypass: the lab's devices resolve with the network's resolver
            # (tests/lab/test_dns_bypass.py covers a bypass on the live gateway).
            rightly_empty = {"Packets skipped, by reason", "DNS bypass by resolver"}
            assert empty <= rightly_empty, f"queries without series: {empty}"
        finally:
            prom.terminate()
            try:
                prom.wait(15)
            except subprocess.TimeoutExpired:
                prom.kill()
            assert d.stop() == 0, d.output()
