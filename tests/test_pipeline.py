"""End to end: captures built with dpkt (sensor.lab.synth) through the whole analyze pipeline."""

from __future__ import annotations

import io
import json
import random
import struct
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.analyze import analyze
from sensor.config import Config, FlowsConfig
from sensor.lab.synth import (
    AWS_SG_IP,
    LAPTOP,
    LINK_ETHERNET,
    LINK_RAW,
    LINK_SLL,
    LINK_SLL2,
    PHONE,
    PHONE6,
    REDMI_UA,
    RESOLVER,
    XIAOMI_API_IP,
    Capture,
    Host,
    TcpSession,
    client_hello,
    http_request,
    sample_home,
)
from sensor.model import Device, Flow, HttpRequest
from sensor.pipeline import Pipeline
from sensor.pipeline_consumers import NullObserver
from sensor.sources.pcap import CaptureFile, read_captures
from tests.builders import quic_initial_datagrams
from tests.pipeline_helpers import build, flow_to, ip_lengths_by_direction, run_analyze

SERVER = "203.0.113.10"


def sample_path(tmp_path: Path, linktype: int = LINK_ETHERNET, pcapng: bool = False) -> Path:
    p = tmp_path / f"sample-{linktype}-{int(pcapng)}.cap"
    with open(p, "wb") as fh:
        sample_home(fh, linktype, pcapng)
    return p


def test_sample_names_sources_and_devices(tmp_path: Path) -> None:
    flows, devices, stats, err = run_analyze(sample_path(tmp_path))
    assert err == ""
    http = flow_to(flows, XIAOMI_API_IP, 80)
    assert (http["server_name"], http["name_source"]) == ("api.account.xiaomi.com", "http")
    assert http["src_ip"] == PHONE.ip and http["device_mac"] == PHONE.mac
    assert http["http"][0]["method"] == "POST"
    assert http["http"][0]["path"] == "/pass/v2/register"
    assert http["http"][0]["user_agent"] == REDMI_UA
    tls = flow_to(flows, AWS_SG_IP, 443)
    assert (tls["server_name"], tls["name_source"]) == ("tracking.intl.miui.com", "tls")
    assert tls["bytes_up"] > 200_000 > tls["bytes_down"]
    v6 = flow_to(flows, "2001:db8::20", 443)
    # No SNI in that flow: the name is the one the phone asked the resolver for.
    assert (v6["server_name"], v6["name_source"]) == ("data.mistat.xiaomi.com", "dns")
    assert v6["src_ip"] == PHONE6.ip
    big = flow_to(flows, "192.0.2.80", 443)
    assert (big["server_name"], big["name_source"]) == ("www.example.com", "tls")
    by_mac = {d["mac"]: d for d in devices}
    phone = by_mac[PHONE.mac]
    assert phone["hostname"] == "Redmi-Note-8-Pro"
    assert phone["dhcp_vendor_class"] == "android-dhcp-13"
    assert set(phone["ips"]) == {PHONE.ip, PHONE6.ip}
    assert REDMI_UA in phone["user_agents"]
    assert by_mac[LAPTOP.mac]["dhcp_vendor_class"] == "MSFT 5.0"
    assert stats["packets_read"] == stats["packets_decoded"]
    assert stats["packets_skipped"] == 0


def test_byte_counts_match_ip_lengths(tmp_path: Path) -> None:
    path = sample_path(tmp_path)
    flows, _, _, _ = run_analyze(path)
    for lan in (PHONE.ip, LAPTOP.ip, PHONE6.ip):
        up, down = ip_lengths_by_direction(path, lan)
        mine = [f for f in flows if f["src_ip"] == lan]
        assert sum(f["bytes_up"] for f in mine) == up
        assert sum(f["bytes_down"] for f in mine) == down


def _normalised(flows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    keys = ("proto", "src_ip", "src_port", "dst_ip", "dst_port", "server_name", "name_source")
    keys2 = ("bytes_up", "bytes_down", "packets_up", "packets_down")
    return sorted(tuple(f[k] for k in keys + keys2) for f in flows)


@pytest.mark.parametrize(
    ("linktype", "pcapng"),
    [(LINK_SLL, False), (LINK_SLL2, False), (LINK_SLL2, True), (LINK_RAW, False), (1, True)],
)
def test_link_types_agree_with_ethernet(tmp_path: Path, linktype: int, pcapng: bool) -> None:
    eth, _, _, _ = run_analyze(sample_path(tmp_path))
    other, devices, stats, _ = run_analyze(sample_path(tmp_path, linktype, pcapng))
    assert _normalised(other) == _normalised(eth)
    assert stats["packets_skipped"] == 0
    if linktype in (LINK_SLL, LINK_SLL2):
        # Cooked captures name the sender only: the LAN device's MAC still comes through.
        assert {f["device_mac"] for f in other if f["src_ip"] == PHONE.ip} == {PHONE.mac}
        assert PHONE.mac in {d["mac"] for d in devices}


@pytest.mark.parametrize("vlans", [(10,), (100, 20)])
def test_vlan_and_qinq(tmp_path: Path, vlans: tuple[int, ...]) -> None:
    def scenario(cap: Capture) -> None:
        cap.dns_lookup(PHONE, RESOLVER, "vlan.example.com", ["192.0.2.7"])
        s = TcpSession(cap, PHONE, "192.0.2.7", 41000, 443)
        s.open()
        s.send(client_hello("sni.example.com"))
        s.send(bytes(20_000), up=False)
        s.close()

    flows, _, stats, _ = run_analyze(build(tmp_path / "v.pcap", scenario, vlans=vlans))
    f = flow_to(flows, "192.0.2.7", 443)
    assert (f["server_name"], f["name_source"]) == ("sni.example.com", "tls")
    assert f["bytes_down"] > 20_000
    assert f["device_mac"] == PHONE.mac
    assert stats["packets_skipped"] == 0


def _tls_flow(cap: Capture, lan: Host, server: str, port: int, **send_kw: object) -> None:
    s = TcpSession(cap, lan, server, port, 443)
    s.open()
    hello = client_hello("split.example.org", padding_alpn=3000)
    assert len(hello) > 3000  # like a hello with post-quantum key shares
    s.send(hello, segment=500, **send_kw)  # type: ignore[arg-type]
    s.send(bytes(5000), up=False)
    s.close()


@pytest.mark.parametrize(
    "send_kw",
    [
        {},
        {"order": [3, 1, 0, 6, 2, 5, 4]},
        {"order": [6, 5, 4, 3, 2, 1, 0], "duplicate": [2, 0]},
    ],
    ids=["in-order", "shuffled", "reversed-with-retransmits"],
)
def test_split_and_reordered_client_hello(tmp_path: Path, send_kw: dict[str, object]) -> None:
    flows, _, _, _ = run_analyze(
        build(tmp_path / "t.pcap", lambda cap: _tls_flow(cap, PHONE, SERVER, 42000, **send_kw))
    )
    f = flow_to(flows, SERVER, 443)
    assert (f["server_name"], f["name_source"]) == ("split.example.org", "tls")


@pytest.mark.parametrize("version", [0x00000001, 0x6B3343CF], ids=["v1", "v2"])
@pytest.mark.parametrize("big", [False, True], ids=["one-packet", "multi-packet"])
@pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "reversed"])
def test_quic_initial_sni(tmp_path: Path, version: int, big: bool, reverse: bool) -> None:
    dgrams = quic_initial_datagrams("quic.example.net", version, big=big)
    if big:
        assert len(dgrams) >= 2
    if reverse:
        dgrams = dgrams[::-1]

    def scenario(cap: Capture) -> None:
        for d in dgrams:
            cap.udp(PHONE6, "2001:db8::443", 50123, 443, d, up=True)
        for _ in range(20):
            cap.udp(PHONE6, "2001:db8::443", 50123, 443, b"\x40" + bytes(1200), up=False)

    flows, _, stats, _ = run_analyze(build(tmp_path / "q.pcap", scenario))
    f = flow_to(flows, "2001:db8::443", 443)
    assert (f["server_name"], f["name_source"]) == ("quic.example.net", "quic")
    assert f["packets_down"] == 20 and f["packets_up"] == len(dgrams)
    assert stats["weird"] == {}


def test_quic_versions_and_unnamed_reasons(tmp_path: Path) -> None:
    """Flow records carry quic_version; QUIC flows that end unnamed are counted by why."""
    from tests.builders import big_alpn, client_hello_message
    from tests.builders_quic import Q046, encrypted_flight, flight

    big = client_hello_message("cut.example.com", alpn=big_alpn(1500))
    handshake_only = b"\xe0" + (1).to_bytes(4, "big") + b"\x08" + bytes(8) + b"\x00\x40\x20"

    def scenario(cap: Capture) -> None:
        for d in flight(Q046, "gquic.example.com", dcid=b"\x01" * 8):
            cap.udp(PHONE, "203.0.113.61", 50201, 443, d, up=True)
        for d in flight(0xFF00001D, None, dcid=b"\x02" * 8):
            cap.udp(PHONE, "203.0.113.62", 50202, 443, d, up=True)
        cap.udp(  # the first of two datagrams only
            PHONE, "203.0.113.63", 50203, 443, encrypted_flight(big, 0xFACEB002)[0], up=True
        )
        cap.udp(PHONE, "203.0.113.64", 50204, 443, handshake_only + bytes(32), up=True)

    flows, _, stats, _ = run_analyze(build(tmp_path / "q.pcap", scenario))
    named = flow_to(flows, "203.0.113.61", 443)
    assert (named["server_name"], named["quic_version"]) == ("gquic.example.com", "Q046")
    assert flow_to(flows, "203.0.113.62", 443)["quic_version"] == "0xff00001d"
    assert flow_to(flows, "203.0.113.63", 443)["quic_version"] == "0xfaceb002"
    assert stats["quic_unnamed"] == {"no_sni": 1, "incomplete": 1, "no_client_initial": 1}
    assert stats["weird"] == {}


def test_dns_over_tcp_names_later_flow_and_cname_chain(tmp_path: Path) -> None:
    def scenario(cap: Capture) -> None:
        cap.dns_lookup(
            LAPTOP,
            RESOLVER,
            "app.vendor.example",
            ["198.51.100.9"],
            cnames=["edge.cdn.example", "a1.cdn.example"],
            tcp=True,
        )
        s = TcpSession(cap, LAPTOP, "198.51.100.9", 43000, 8883)
        s.open()
        s.send(b"\x10\x20MQTT-ish opaque bytes")
        s.close()

    flows, _, _, _ = run_analyze(build(tmp_path / "d.pcap", scenario))
    dns = flow_to(flows, RESOLVER, 53)
    assert dns["proto"] == "tcp" and dns["dns_queries"] == ["app.vendor.example"]
    f = flow_to(flows, "198.51.100.9", 8883)
    # The chain resolves back to the name the client asked for, not the CDN alias.
    assert (f["server_name"], f["name_source"]) == ("app.vendor.example", "dns")


def test_dns_ttl_and_per_client_cache(tmp_path: Path) -> None:
    def scenario(cap: Capture) -> None:
        cap.dns_lookup(PHONE, RESOLVER, "short.example", ["192.0.2.50"], ttl=30)
        s = TcpSession(cap, PHONE, "192.0.2.50", 44000, 443)
        s.open()  # within the TTL: named
        s.close()
        # Another device reaching the same address never asked: no name for it.
        s = TcpSession(cap, LAPTOP, "192.0.2.50", 44001, 443)
        s.open()
        s.close()
        cap.tick(120)  # past the TTL (and the UDP idle timeout)
        s = TcpSession(cap, PHONE, "192.0.2.50", 44002, 443)
        s.open()
        s.close()

    flows, _, _, _ = run_analyze(build(tmp_path / "ttl.pcap", scenario))
    by_port = {f["src_port"]: f for f in flows if f["dst_ip"] == "192.0.2.50"}
    assert by_port[44000]["server_name"] == "short.example"
    assert by_port[44001]["server_name"] is None
    assert by_port[44002]["server_name"] is None
    cfg = tmp_path / "grace.toml"
    cfg.write_text("[dns]\nttl_grace = 300\n")
    flows, _, _, _ = run_analyze(tmp_path / "ttl.pcap", config=cfg)
    by_port = {f["src_port"]: f for f in flows if f["dst_ip"] == "192.0.2.50"}
    assert by_port[44002]["server_name"] == "short.example"


def test_mdns_is_not_a_server_name(tmp_path: Path) -> None:
    def scenario(cap: Capture) -> None:
        resp = dpkt.dns.DNS(id=0, qr=dpkt.dns.DNS_R, op=0x8400)
        rr = dpkt.dns.DNS.RR(name="printer.local", type=dpkt.dns.DNS_A, ttl=120)
        rr.ip = bytes([192, 168, 1, 50])
        resp.an = [rr]
        cap.udp(LAPTOP, "224.0.0.251", 5353, 5353, bytes(resp), up=False)
        s = TcpSession(cap, PHONE, "192.168.1.50", 45000, 631)
        s.open()
        s.close()

    flows, _, _, _ = run_analyze(build(tmp_path / "m.pcap", scenario))
    assert flow_to(flows, "192.168.1.50", 631)["server_name"] is None


def _ipv6_ext_packet(src: str, dst: str, payload_tcp: bytes) -> bytes:
    import ipaddress

    hop_by_hop = bytes([6, 0]) + bytes([1, 4, 0, 0, 0, 0])  # next: TCP, PadN option
    ip6 = struct.pack(
        ">IHBB16s16s",
        6 << 28,
        len(hop_by_hop) + len(payload_tcp),
        0,  # next header: hop-by-hop
        64,
        ipaddress.ip_address(src).packed,
        ipaddress.ip_address(dst).packed,
    )
    return ip6 + hop_by_hop + payload_tcp


def test_ipv6_extension_headers(tmp_path: Path) -> None:
    hello = client_hello("ext.example.com")

    def scenario(cap: Capture) -> None:
        syn = dpkt.tcp.TCP(sport=46000, dport=443, seq=1000, flags=dpkt.tcp.TH_SYN)
        data = dpkt.tcp.TCP(
            sport=46000, dport=443, seq=1001, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data=hello
        )
        for seg in (syn, data):
            cap.emit(_ipv6_ext_packet(PHONE6.ip, "2001:db8::77", bytes(seg)), True, PHONE6, True)

    flows, _, stats, _ = run_analyze(build(tmp_path / "x.pcap", scenario))
    f = flow_to(flows, "2001:db8::77", 443)
    assert (f["server_name"], f["name_source"]) == ("ext.example.com", "tls")
    assert f["packets_up"] == 2
    assert f["bytes_up"] == 2 * 48 + 20 + len(hello) + 20  # IPv6 + HbH + TCP headers + data
    assert stats["packets_skipped"] == 0


def test_flow_seen_mid_stream_from_server_side(tmp_path: Path) -> None:
    def scenario(cap: Capture) -> None:
        s = TcpSession(cap, PHONE, "192.0.2.99", 47000, 443)
        # No handshake in the capture: the first packet we see is the server's data.
        s.send(bytes(3000), up=False)
        s.send(bytes(100), up=True)

    flows, _, _, _ = run_analyze(build(tmp_path / "mid.pcap", scenario))
    f = flow_to(flows, "192.0.2.99", 443)
    assert f["src_ip"] == PHONE.ip and f["src_port"] == 47000
    assert f["device_mac"] == PHONE.mac
    assert f["bytes_down"] > f["bytes_up"] > 0


def test_opener_is_client_between_two_public_addresses(tmp_path: Path) -> None:
    outside = Host("02:00:00:00:00:99", "198.51.100.200")

    def scenario(cap: Capture) -> None:
        s = TcpSession(cap, outside, "203.0.113.200", 48000, 8443)
        s.open()
        s.send(bytes(500))
        s.close()

    flows, _, _, _ = run_analyze(build(tmp_path / "pub.pcap", scenario))
    f = flow_to(flows, "203.0.113.200", 8443)
    assert f["src_ip"] == "198.51.100.200"
    assert f["bytes_up"] > f["bytes_down"]


def test_lan_networks_from_config(tmp_path: Path) -> None:
    # With 198.51.100.0/24 declared LAN, a flow first seen from 203.0.113.5 points at it.
    dev = Host("02:00:00:00:00:42", "198.51.100.42")

    def scenario(cap: Capture) -> None:
        s = TcpSession(cap, dev, "203.0.113.5", 49000, 443)
        s.send(bytes(1000), up=False)

    path = build(tmp_path / "lan.pcap", scenario)
    cfg = tmp_path / "lan.toml"
    cfg.write_text('[site]\nlan_networks = ["198.51.100.0/24"]\n')
    flows, _, _, _ = run_analyze(path, config=cfg)
    f = flow_to(flows, "203.0.113.5", 443)
    assert f["src_ip"] == "198.51.100.42"


class _Collect:
    def __init__(self) -> None:
        self.flows: list[Flow] = []
        self.devices: list[Device] = []

    def flow(self, flow: Flow) -> None:
        self.flows.append(flow)

    def device(self, device: Device) -> None:
        self.devices.append(device)


def _syn_frame(i: int, ts_mac: bytes = b"\x02\x00\x00\x00\x00\x05") -> bytes:
    tcp = dpkt.tcp.TCP(sport=10000 + i % 50000, dport=443, flags=dpkt.tcp.TH_SYN, seq=i)
    ip = dpkt.ip.IP(
        src=bytes([192, 168, 1, 5]), dst=bytes([203, 0, 113, i % 250 + 1]), p=6, data=tcp
    )
    eth = dpkt.ethernet.Ethernet(src=ts_mac, dst=b"\x02\x00\x00\x00\x00\x01", type=0x0800, data=ip)
    return bytes(eth)


def test_flow_table_cap_bounds_memory_and_counts_evictions() -> None:
    cfg = Config(flows=FlowsConfig(max_flows=100))
    sink = _Collect()
    p = Pipeline(cfg, sink)
    p.run_packets((1_700_000_000 + i * 1e-4, 1, _syn_frame(i)) for i in range(5000))
    assert len(p.flows) <= 100
    assert len(p.flows.tcp) <= 200
    p.finish()
    stats = p.stats()
    assert stats["flows"] == 5000
    assert stats["flows_evicted"] == {"idle": 0, "cap": 4900}
    assert len(sink.flows) == 5000  # evicted flows are reported, not lost
    assert sum(f.packets_up for f in sink.flows) == 5000


def test_idle_flows_are_swept() -> None:
    cfg = Config(flows=FlowsConfig(tcp_idle_timeout=10, udp_idle_timeout=10))
    sink = _Collect()
    p = Pipeline(cfg, sink)
    p.run_packets([(1000.0, 1, _syn_frame(1)), (1001.0, 1, _syn_frame(2))])
    assert len(p.flows) == 2
    # Time moves on (other traffic): both flows go idle and leave the table.
    p.run_packets((1002.0 + k, 1, _syn_frame(3)) for k in range(30))
    assert len(p.flows) == 1
    assert p.flows.evicted_idle == 2
    assert {f.dst_ip for f in sink.flows} == {"203.0.113.2", "203.0.113.3"}


def test_malformed_packets_are_counted_by_reason() -> None:
    good = _syn_frame(1)
    frames = [
        good[:10],  # truncated Ethernet
        good[:20],  # truncated IPv4
        good[:14] + b"\x46" + good[15:],  # IHL 6 but options cut off the TCP header
        good[:12] + b"\x08\x06" + bytes(28),  # ARP
        good[:23] + b"\x01" + good[24:],  # ICMP protocol
        good[:34] + good[34:40],  # truncated TCP header
        b"\x02" * 60,  # LLC-length EtherType
        good,
    ]
    sink = _Collect()
    p = Pipeline(Config(), sink)
    p.run_packets((1.0 + i, 1, f) for i, f in enumerate(frames))
    p.finish()
    stats = p.stats()
    assert stats["packets_read"] == len(frames)
    assert stats["packets_decoded"] == 1
    assert stats["packets_skipped"] == len(frames) - 1
    assert set(stats["skipped"]) >= {"link.truncated", "ip.truncated", "link.arp", "ip.not_tcp_udp"}


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(st.binary(max_size=200), max_size=20), st.sampled_from([1, 101, 113, 276, 0, 999]))
def test_random_frames_never_escape(frames: list[bytes], linktype: int) -> None:
    p = Pipeline(Config(), _Collect())
    p.run_packets((float(i), linktype, f) for i, f in enumerate(frames))
    p.finish()
    stats = p.stats()
    assert stats["packets_read"] == len(frames)
    assert stats["packets_decoded"] + stats["packets_skipped"] == len(frames)


def test_mutated_real_packets_never_escape() -> None:
    buf_frames: list[bytes] = []
    import io

    from sensor.sources.pcap import CaptureFile

    raw = io.BytesIO()
    sample_home(raw)
    path = Path("/tmp") / f"phonehome-mut-{random.randrange(1 << 30)}.pcap"
    try:
        path.write_bytes(raw.getvalue())
        buf_frames = [f for _, _, f in CaptureFile(path)]
    finally:
        path.unlink()
    rng = random.Random(5)
    mutated = []
    for _ in range(3000):
        f = bytearray(rng.choice(buf_frames))
        for _ in range(rng.randrange(1, 6)):
            f[rng.randrange(len(f))] = rng.randrange(256)
        if rng.random() < 0.3:
            del f[rng.randrange(len(f)) :]
        mutated.append(bytes(f))
    p = Pipeline(Config(), _Collect())
    p.run_packets((float(i), 1, f) for i, f in enumerate(mutated))
    p.finish()
    stats = p.stats()
    assert stats["packets_decoded"] + stats["packets_skipped"] == len(mutated)
    assert not any(k.startswith("internal.") for k in stats["weird"]), stats["weird"]


def test_http_body_budget_and_several_requests(tmp_path: Path) -> None:
    def scenario(cap: Capture) -> None:
        s = TcpSession(cap, PHONE, SERVER, 40500, 80)
        s.open()
        s.send(http_request("POST", "up.example.com", "/a?imei=1", REDMI_UA, b"x" * 10_000))
        s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", up=False)
        s.send(http_request("GET", "up.example.com:8080", "/b", REDMI_UA))
        s.close()

    flows, _, _, _ = run_analyze(build(tmp_path / "h.pcap", scenario))
    f = flow_to(flows, SERVER, 80)
    assert f["server_name"] == "up.example.com"
    assert [r["method"] for r in f["http"]] == ["POST", "GET"]
    assert f["http"][0]["body_bytes"] == 4096  # the configured budget
    assert f["http"][0]["content_length"] == 10_000
    # The query string (where identifiers leak) is never written out.
    assert f["http"][0]["path"] == "/a" and f["http"][0]["query_bytes"] == len("imei=1")
    assert "imei" not in str(f)


# --- names: detection sees them set, outputs see them redacted ---------------------------------

LEAK_IMEI = "861234567890127"
IMEI_HEX_NAME = LEAK_IMEI.encode().hex() + ".t.leak.example"
"""A query name carrying the IMEI in hex (the lab's DNS leak)."""


class _Seen(NullObserver):
    """Observer that records what detection is shown, and when."""

    def __init__(self) -> None:
        self.http: list[tuple[str | None, str | None, str | None]] = []
        self.dns: list[str] = []

    def http_request(self, flow: Flow, device: Device | None, req: HttpRequest, ts: float) -> None:
        self.http.append((req.host, flow.server_name, flow.name_source))

    def dns_query(self, flow: Flow, device: Device | None, qname: str, ts: float) -> None:
        self.dns.append(qname)


def _run_observed(path: Path) -> tuple[_Collect, _Seen]:
    sink, seen = _Collect(), _Seen()
    p = Pipeline(Config(), sink, seen)
    p.run(read_captures([CaptureFile(path)]))
    p.finish()
    return sink, seen


def _alerts(path: Path, tmp_path: Path) -> list[dict[str, object]]:
    """The alerts of `analyze --json` with LEAK_IMEI configured."""
    cfg = tmp_path / "leak.toml"
    cfg.write_text(
        f'[paths]\nstate_dir = "{tmp_path}/state"\n[identifiers]\nimei = ["{LEAK_IMEI}"]'
    )
    out, err = io.StringIO(), io.StringIO()
    assert analyze([str(path)], config_path=str(cfg), as_json=True, out=out, err=err) == 0
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    return [r for r in recs if r["type"] == "alert"]


def _two_hosts_one_address(cap: Capture) -> None:
    # No DNS lookup first (a hard-coded address): only the Host header names the server.
    for port, host in ((41000, "a.leak.example"), (41001, "b.leak.example")):
        s = TcpSession(cap, PHONE, SERVER, port, 80)
        s.open()
        s.send(http_request("GET", host, f"/c?imei={LEAK_IMEI}", REDMI_UA))
        s.close()


def test_http_request_is_named_before_detection(tmp_path: Path) -> None:
    _, seen = _run_observed(build(tmp_path / "h.pcap", _two_hosts_one_address))
    assert seen.http == [
        ("a.leak.example", "a.leak.example", "http"),
        ("b.leak.example", "b.leak.example", "http"),
    ]


def test_http_leaks_to_one_address_alert_per_host(tmp_path: Path) -> None:
    """Repeats are suppressed per server name: two hosts behind one address the phone never
    looked up are two destinations, not one."""
    path = build(tmp_path / "h.pcap", _two_hosts_one_address)
    alerts = [a for a in _alerts(path, tmp_path) if a["identifier"] == "imei"]
    assert {a["server_name"] for a in alerts} == {"a.leak.example", "b.leak.example"}, alerts


def _data_names(cap: Capture) -> None:
    # Answered, so the cache would name the next flow to that address after it.
    cap.dns_lookup(PHONE, RESOLVER, IMEI_HEX_NAME, ["198.51.100.7"])
    s = TcpSession(cap, PHONE, "198.51.100.7", 42000, 8883)
    s.open()
    s.send(b"\x10\x20opaque")
    s.close()
    cap.dns_lookup(PHONE, RESOLVER, "time-ios.apple.com", ["198.51.100.10"])
    # The same in an SNI and a Host header.
    s = TcpSession(cap, PHONE, "198.51.100.11", 42001, 443)
    s.open()
    s.send(client_hello(IMEI_HEX_NAME))
    s.close()
    s = TcpSession(cap, PHONE, "198.51.100.12", 42002, 80)
    s.open()
    s.send(http_request("GET", f"{LEAK_IMEI}.h.leak.example", "/", REDMI_UA))
    s.close()


def test_names_with_data_labels_are_kept_redacted(tmp_path: Path) -> None:
    path = build(tmp_path / "n.pcap", _data_names)
    flows, _, _, _ = run_analyze(path)
    names = {(f["dst_ip"], f["dst_port"]): (f["server_name"], f["name_source"]) for f in flows}
    assert names[("198.51.100.7", 8883)] == ("….t.leak.example", "dns")
    assert names[("198.51.100.11", 443)] == ("….t.leak.example", "tls")
    assert names[("198.51.100.12", 80)] == ("….h.leak.example", "http")
    queries = [q for f in flows for q in f.get("dns_queries") or []]
    assert sorted(queries) == sorted(["….t.leak.example", "time-ios.apple.com"])
    text = str(flows)
    assert LEAK_IMEI not in text and LEAK_IMEI.encode().hex() not in text
    # Detection still sees the name as it was sent, and alerts name only its domain.
    _, seen = _run_observed(path)
    assert seen.dns == [IMEI_HEX_NAME, "time-ios.apple.com"]
    dns = [a for a in _alerts(path, tmp_path) if a["location"] == "dns"]
    assert dns and {a["server_name"] for a in dns} == {"….leak.example"}, dns


def test_each_query_name_is_scanned_once_per_flow(tmp_path: Path) -> None:
    """The flow's list holds names cut, so two names with different data read the same there;
    detection must still see both, and a name asked twice (A, then AAAA) once."""
    names = [
        ("fm3deobrgiztinjwg44dsma.p.leak.example", dpkt.dns.DNS_A),
        ("gezdgnbvgy3tqojq.p.leak.example", dpkt.dns.DNS_A),
        ("gezdgnbvgy3tqojq.p.leak.example", dpkt.dns.DNS_AAAA),
    ]

    def scenario(cap: Capture) -> None:
        for i, (name, qtype) in enumerate(names):
            q = dpkt.dns.DNS(id=i, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
            cap.udp(PHONE, RESOLVER, 40053, 53, bytes(q), up=True)

    sink, seen = _run_observed(build(tmp_path / "q.pcap", scenario))
    assert seen.dns == [names[0][0], names[1][0]]
    (flow,) = sink.flows
    assert flow.extra["dns_queries"] == ["….p.leak.example"]
