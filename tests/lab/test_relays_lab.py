"""Relays on the live lab gateway: a phone resolves iCloud Private Relay's ingress through the
lab resolver and connects to the answer; a laptop connects to a Tor relay from a fetched list.
The daemon marks both flows, counts their bytes under visibility "relay" in the metrics, and
the device records say how much went through which relay."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sensor.lab import DEFAULT_ZONE, SERVERS, Lab
from sensor.update import datafiles
from tests.lab.test_daemon import Daemon

METRICS_PORT = 14663
_CN, _SG, _HOME = SERVERS
RELAY = _HOME  # mask.icloud.com answers with the "home" server's address
TOR_RELAY = _CN  # a guard on port 443 in the fetched list

_SCRAPE = r"""
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    sys.stdout.write(r.read().decode())
"""


def _onionoo() -> bytes:
    relay = {"or_addresses": [f"{TOR_RELAY.ipv4}:443"], "flags": ["Guard", "Running"]}
    return json.dumps({"version": "8.0", "relays": [relay], "bridges": []}).encode()


def _import_tor_list(state: Path) -> None:
    """`update-data --from DIR` with a consensus list naming the lab's "cn" server a relay."""
    inbox = state / "relay-inbox"
    inbox.mkdir()
    (inbox / "details.json").write_bytes(_onionoo())
    (result,) = datafiles.update(state, from_dir=inbox, sources=["tor"])
    assert result.status == "updated", result


def _visibility_bytes(text: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("phonehome_device_visibility_bytes_total{"):
            labels, value = line.rsplit(" ", 1)
            pairs = dict(p.split("=", 1) for p in labels[labels.index("{") + 1 : -1].split(","))
            key = tuple(pairs[k].strip('"') for k in ("device", "visibility", "direction"))
            out[key] = float(value)  # type: ignore[index]
    return out  # type: ignore[return-value]


def test_private_relay_and_tor_are_relays(lab_usable: None, tmp_path: Path) -> None:
    zone: dict[str, list[tuple[str, str]]] = dict(DEFAULT_ZONE)
    zone["mask.icloud.com"] = [("CNAME", "mask.apple-dns.net")]
    zone["mask.apple-dns.net"] = [("A", RELAY.ipv4)]
    with Lab.create(quic=False, zone=zone) as lab:

        def edit(text: str) -> str:
            _import_tor_list(tmp_path / "state")
            return text

        d = Daemon(lab, tmp_path, extra=f"[metrics]\nport = {METRICS_PORT}\n", edit=edit)
        try:
            d.wait_notify("READY=1")
            # Closed connections end (conntrack DESTROY) in a second, not after TIME_WAIT's 2 min.
            done = lab.gw_exec(
                ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
            assert lab.resolve("xiaomi", "mask.icloud.com", family=4) == [RELAY.ipv4]
            relayed = lab.tls_upload("xiaomi", "mask.icloud.com", 200_000, family=4)
            assert relayed.remote == RELAY.ipv4 and relayed.received == 200_000
            tor = lab.tls_upload("laptop", "www.example.com", 50_000, address=TOR_RELAY.ipv4)
            assert tor.received == 50_000

            def live() -> dict[str, dict[str, Any]] | None:
                recs = {r["dst_ip"]: r for r in d.snapshot()["flows"] if r["dst_port"] == 443}
                return recs if {RELAY.ipv4, TOR_RELAY.ipv4} <= set(recs) else None

            def ended() -> dict[str, dict[str, Any]] | None:
                recs = {r["dst_ip"]: r for r in d.snapshot()["ended"] if r["dst_port"] == 443}
                return recs if {RELAY.ipv4, TOR_RELAY.ipv4} <= set(recs) else None

            # While they are live (the snapshot says what they will be) ...
            now = d.wait_for("both flows", live, timeout=10)
            assert now[RELAY.ipv4]["relay"] == "icloud-private-relay"
            assert now[TOR_RELAY.ipv4]["visibility"] == "relay"
            # ... and once they ended.

            recs = d.wait_for("both flows to end", ended, timeout=30)
            r, t = recs[RELAY.ipv4], recs[TOR_RELAY.ipv4]
            # Named by the lab resolver's answer, then by the hello's SNI (the same name); the
            # capture-only path (no SNI: the answer alone) is in tests/test_relays_analyze.py.
            assert r["server_name"] == "mask.icloud.com"
            assert (r["relay"], r["visibility"], r["party"]) == (
                "icloud-private-relay",
                "relay",
                None,
            )
            assert (t["relay"], t["visibility"], t["party"]) == ("tor", "relay", None)
            assert r["bytes_up"] > 200_000 and t["bytes_up"] > 50_000

            phone_mac, laptop_mac = lab.devices["xiaomi"].mac, lab.devices["laptop"].mac
            devices = {x["mac"]: x for x in d.snapshot()["devices"]}
            assert (
                devices[phone_mac]["relay_bytes"]["icloud-private-relay"]["up"] == (r["bytes_up"])
            )
            assert devices[laptop_mac]["relay_bytes"]["tor"]["up"] == t["bytes_up"]
            assert devices[phone_mac]["visibility_bytes"]["relay"]["up"] >= r["bytes_up"]

            def scraped() -> dict[tuple[str, str, str], float] | None:
                out = lab.gw_exec(
                    [sys.executable, "-c", _SCRAPE, f"http://127.0.0.1:{METRICS_PORT}/metrics"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                got = _visibility_bytes(out.stdout) if out.returncode == 0 else {}
                phone = got.get(("Redmi phone", "relay", "up"), 0)
                laptop = got.get((laptop_mac, "relay", "up"), 0)
                return got if phone >= r["bytes_up"] and laptop >= t["bytes_up"] else None

            vis = d.wait_for("relay bytes in the metrics", scraped, timeout=20)
            assert vis[("Redmi phone", "relay", "down")] >= r["bytes_down"]
            assert not any(k[1] == "tls" and k[0] == "Redmi phone" for k in vis)
        finally:
            assert d.stop() == 0, d.output()
