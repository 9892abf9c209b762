"""Relays and visibility end to end: captures built with dpkt through `phonehome analyze`."""

from __future__ import annotations

from pathlib import Path

from sensor.enrich.relays import TOR_FILE
from sensor.lab.synth import LAPTOP, PHONE, RESOLVER, Capture, TcpSession, client_hello
from tests.pipeline_helpers import build, flow_to, run_analyze
from tests.relay_fixtures import ONIONOO, TOR_GUARD, TOR_GUARD_PORT

RELAY_IP = "198.51.100.50"
PLAIN_IP = "192.0.2.80"
BARE_IP = "203.0.113.5"
WG_IP = "203.0.113.60"
AUTHORITY = ("131.188.40.189", 443)  # gabelmoo, embedded


def scenario(cap: Capture) -> None:
    # The iPhone resolves Private Relay's ingress and connects to the answer.
    cap.dns_lookup(PHONE, RESOLVER, "mask.icloud.com", [RELAY_IP], cnames=["mask.apple-dns.net"])
    s = TcpSession(cap, PHONE, RELAY_IP, 41000, 443)
    s.open()
    s.send(client_hello(None), up=True)
    s.send(bytes(20_000), up=False)
    s.close()
    # Tor: a guard from the fetched consensus, and a directory authority.
    s = TcpSession(cap, LAPTOP, TOR_GUARD, 41001, TOR_GUARD_PORT)
    s.open()
    s.send(client_hello(None), up=True)
    s.send(bytes(5_000), up=False)
    s.close()
    # A named TLS flow, and one without any name.
    cap.dns_lookup(LAPTOP, RESOLVER, "www.example.com", [PLAIN_IP])
    s = TcpSession(cap, LAPTOP, PLAIN_IP, 41002, 443)
    s.open()
    s.send(client_hello("www.example.com"), up=True)
    s.send(bytes(3_000), up=False)
    s.close()
    s = TcpSession(cap, LAPTOP, BARE_IP, 41003, 8443)
    s.open()
    s.send(bytes(700), up=True)
    s.close()
    # A WireGuard handshake initiation.
    cap.udp(LAPTOP, WG_IP, 41004, 51820, b"\x01\x00\x00\x00" + bytes(144), up=True)
    cap.udp(LAPTOP, WG_IP, 41004, 51820, b"\x02\x00\x00\x00" + bytes(88), up=False)


def config(tmp_path: Path, state: Path) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[site]\nhome_country = "DE"\n[paths]\nstate_dir = "{state}"\n')
    return cfg


def test_relays_marked_and_bytes_per_device(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "data").mkdir(parents=True)
    (state / "data" / TOR_FILE).write_bytes(ONIONOO)
    pcap = build(tmp_path / "r.pcap", scenario)
    flows, devices, _, err = run_analyze(pcap, config=config(tmp_path, state))
    assert "tor relays" not in err

    relay = flow_to(flows, RELAY_IP, 443)
    assert (relay["server_name"], relay["name_source"]) == ("mask.icloud.com", "dns")
    assert relay["relay"] == "icloud-private-relay"
    assert relay["visibility"] == "relay"
    assert relay["party"] is None  # Apple runs the relay; who gets the data is hidden

    tor = flow_to(flows, TOR_GUARD, TOR_GUARD_PORT)
    assert (tor["relay"], tor["visibility"], tor["server_name"]) == ("tor", "relay", None)

    named = flow_to(flows, PLAIN_IP, 443)
    assert "relay" not in named and named["visibility"] == "tls"
    assert named["party"] == "example.com"
    assert flow_to(flows, BARE_IP, 8443)["visibility"] == "none"

    wg = flow_to(flows, WG_IP, 51820)
    assert (wg["relay"], wg["vpn_protocol"], wg["visibility"]) == ("vpn", "wireguard", "relay")

    dns = [f for f in flows if f["dst_port"] == 53]
    assert dns and all("visibility" not in f for f in dns)  # the LAN resolver: not "where to"

    by_mac = {d["mac"]: d for d in devices}
    phone = by_mac[PHONE.mac]
    assert phone["relay_bytes"] == {
        "icloud-private-relay": {"up": relay["bytes_up"], "down": relay["bytes_down"]}
    }
    assert phone["visibility_bytes"]["relay"]["down"] == relay["bytes_down"] > 20_000
    laptop = by_mac[LAPTOP.mac]
    assert set(laptop["relay_bytes"]) == {"tor", "vpn"}
    assert laptop["visibility_bytes"]["none"]["up"] == flow_to(flows, BARE_IP, 8443)["bytes_up"]
    assert laptop["visibility_bytes"]["tls"]["down"] == named["bytes_down"]


def test_without_fetched_lists_the_authorities_stand_in(tmp_path: Path) -> None:
    def to_authority(cap: Capture) -> None:
        s = TcpSession(cap, LAPTOP, AUTHORITY[0], 41010, AUTHORITY[1])
        s.open()
        s.send(client_hello(None), up=True)
        s.close()
        s = TcpSession(cap, LAPTOP, TOR_GUARD, 41011, TOR_GUARD_PORT)
        s.open()
        s.close()

    pcap = build(tmp_path / "a.pcap", to_authority)
    flows, _, _, _ = run_analyze(pcap, config=config(tmp_path, tmp_path / "empty"))
    assert flow_to(flows, *AUTHORITY)["relay"] == "tor"
    assert "relay" not in flow_to(flows, TOR_GUARD, TOR_GUARD_PORT)


def test_text_summary_says_what_was_hidden(tmp_path: Path) -> None:
    import io

    from sensor.analyze import analyze

    state = tmp_path / "state"
    (state / "data").mkdir(parents=True)
    (state / "data" / TOR_FILE).write_bytes(ONIONOO)
    pcap = build(tmp_path / "r.pcap", scenario)
    out, err = io.StringIO(), io.StringIO()
    assert analyze([str(pcap)], config_path=str(config(tmp_path, state)), out=out, err=err) == 0
    text = out.getvalue()
    assert "through relays (icloud-private-relay)" in text
    assert "through relays (tor, vpn), " in text and "without a name" in text
    assert "(Private Relay)" in text and "(Tor)" in text and "(VPN)" in text
