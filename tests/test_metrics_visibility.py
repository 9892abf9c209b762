"""phonehome_device_visibility_bytes_total: bytes by visibility class, live and ended, exact."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

from sensor.enrich.relays import TOR_FILE
from sensor.flows import FlowEntry
from sensor.lab.synth import LAPTOP, PHONE
from sensor.visibility import classify
from tests import test_dashboards
from tests.pipeline_helpers import build
from tests.relay_fixtures import ONIONOO, TOR_GUARD
from tests.test_dashboards import Prometheus
from tests.test_metrics import FakeSensor, Wired, assert_monotonic, home_config, parse, total
from tests.test_relays_analyze import BARE_IP, PLAIN_IP, RELAY_IP, WG_IP, scenario

NAME = "phonehome_device_visibility_bytes_total"


def test_relay_and_named_bytes_live_and_after_the_end(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "data").mkdir(parents=True)
    (state / "data" / TOR_FILE).write_bytes(ONIONOO)
    w = Wired(home_config(state))
    try:
        w.feed(build(tmp_path / "r.pcap", scenario))
        live = parse(w.exporter.render())
        entries = {e.flow.dst_ip: e for e in w.pipeline.flows.entries.values()}
        relay = entries[RELAY_IP]
        phone = {"device": "Redmi phone"}  # the configured name of PHONE's MAC
        assert total(live, NAME, visibility="relay", direction="up", **phone) == relay.up.nbytes
        assert total(live, NAME, visibility="relay", direction="down", **phone) == (
            relay.down.nbytes
        )
        # Every byte beyond the site once, in exactly one class; the LAN resolver in none.
        outside = (RELAY_IP, TOR_GUARD, PLAIN_IP, BARE_IP, WG_IP)
        beyond = [e for ip, e in entries.items() if ip in outside]
        assert total(live, NAME, direction="up") == sum(e.up.nbytes for e in beyond)
        assert total(live, NAME, direction="down") == sum(e.down.nbytes for e in beyond)
        laptop = {"device": LAPTOP.mac}  # no DHCP in this capture: labelled by its MAC
        assert total(live, NAME, visibility="tls", **laptop) == (
            entries[PLAIN_IP].up.nbytes + entries[PLAIN_IP].down.nbytes
        )
        assert total(live, NAME, visibility="none", **laptop) == (
            entries[BARE_IP].up.nbytes + entries[BARE_IP].down.nbytes
        )
        tor_and_wg = sum(
            entries[ip].up.nbytes + entries[ip].down.nbytes for ip in (TOR_GUARD, WG_IP)
        )
        assert total(live, NAME, visibility="relay", **laptop) == tor_and_wg
        # The relay's name (icloud.com, were it a party) is not the party, live or ended.
        assert total(live, "phonehome_upload_bytes_total", party="icloud.com") == 0
        w.pipeline.finish()
        ended = parse(w.exporter.render())
        assert {k: v for k, v in live.items() if k[0] == NAME} == {
            k: v for k, v in ended.items() if k[0] == NAME
        }
        assert total(ended, "phonehome_upload_bytes_total", party="icloud.com") == 0
        devices = {d.mac: d for d in w.pipeline.devices.values()}
        assert devices[PHONE.mac].extra["visibility_bytes"] == {
            "relay": {"up": relay.up.nbytes, "down": relay.down.nbytes}
        }
        assert set(devices[LAPTOP.mac].extra["relay_bytes"]) == {"tor", "vpn"}
    finally:
        w.close()


class ClassifyingSensor(FakeSensor):
    """FakeSensor whose ended flows carry the class enrichment would write."""

    def _on_end(self, entry: FlowEntry, reason: str) -> None:
        entry.flow.extra["visibility"] = classify(entry.flow)
        super()._on_end(entry, reason)


def test_class_changes_mid_flow_count_each_byte_once() -> None:
    rng = random.Random(16)
    s = ClassifyingSensor(max_flows=30)
    prev: dict = {}
    for _ in range(40):
        for _ in range(rng.randrange(1, 8)):
            e = s.open(rng.choice(["aa:00:00:00:00:01", "aa:00:00:00:00:02"]), "198.51.100.9")
            s.grow(e, rng.randrange(0, 4000), rng.randrange(0, 40000))
        for e in rng.sample(list(s.flows.entries.values()), k=min(8, len(s.flows))):
            s.grow(e, rng.randrange(0, 2000), rng.randrange(0, 2000))
            r = rng.random()
            if r < 0.2:
                e.flow.server_name, e.flow.name_source = "a.example", "tls"
            elif r < 0.3:
                e.flow.relay = "tor"
        for e in rng.sample(list(s.flows.entries.values()), k=min(3, len(s.flows))):
            s.flows.end(e, "end")
        now = s.scrape()
        assert_monotonic(prev, now)
        assert total(now, NAME, direction="up") == s.sent_up
        assert total(now, NAME, direction="down") == s.sent_down
        prev = now
    s.flows.flush()
    final = s.scrape()
    assert total(final, NAME, direction="up") == s.sent_up
    assert {v for (n, labels), v in final.items() if n == NAME} and all(
        dict(labels)["visibility"] in {"none", "tls", "relay"} for (n, labels) in final if n == NAME
    )


live = test_dashboards.live
"""A real Prometheus scraping an exporter over TLS (the dashboard tests' fixture)."""


def test_shares_in_a_real_prometheus(live: tuple[Wired, Prometheus, SimpleNamespace]) -> None:
    """The recording rules on a real Prometheus scraping the exporter: the phone's only traffic
    beyond the site goes into Private Relay (hidden share 1), the laptop's partly."""
    w, prom, ctl = live
    tmp: Path = ctl.tmp
    w.feed(build(tmp / "first.pcap", scenario))
    prom.wait_ready()
    sel = '{job="phonehome"}'
    prom.wait_for(f"count_over_time({NAME}{sel}[1m])", 2)
    before = float(w.pipeline.packets_read)
    w.feed(build(tmp / "second.pcap", scenario, start=1_700_000_600.0))  # the counters grow
    prom.wait_for(f"phonehome_packets_read_total{sel}", float(w.pipeline.packets_read))
    assert w.pipeline.packets_read > before
    share = 'phonehome:device_visibility_bytes:share1h{device="Redmi phone", visibility="relay"}'
    prom.wait_for(share, 1.0)
    hidden = "phonehome:device_hidden_bytes:share1h"
    prom.wait_for(f'{hidden}{{device="Redmi phone"}}', 1.0)
    laptop = prom.value(f'{hidden}{{device="{LAPTOP.mac}"}}')
    assert laptop is not None and 0 < laptop < 1
    classes = {
        r["metric"]["visibility"]
        for r in prom.query(f'phonehome:device_visibility_bytes:share1h{{device="{LAPTOP.mac}"}}')
    }
    assert classes == {"tls", "none", "relay"}  # www.example.com; 203.0.113.5; WireGuard
