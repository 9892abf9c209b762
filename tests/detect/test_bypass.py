"""DNS bypass: classification (pure), the network's resolvers, and whole captures through
`analyze` with real ClientHellos from Python's ssl module."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import dpkt
import pytest

from sensor.alerts import AlertStage
from sensor.detect.bypass import BypassDetector, DnsBypassConfig, NetworkResolvers, classify
from sensor.enrich.doh import embedded
from sensor.lab.synth import Capture, Host, TcpSession, client_hello
from sensor.model import Alert, Device, DnsBypass, Flow
from tests.pipeline_helpers import build, flow_to, run_analyze

DOH = embedded()
PHONE = Host("64:09:80:12:34:56", "192.168.1.23")
GATEWAY = "192.168.1.1"
HANDED_OUT = "192.0.2.53"
"""What the capture's DHCP server hands out: an ISP resolver outside the LAN."""


def test_classify_by_port_alpn_sni_and_address() -> None:
    assert classify("tcp", "203.0.113.53", 853, None, (), DOH) == DnsBypass(
        "dot", "203.0.113.53", "tcp/853"
    )
    assert classify("tcp", "8.8.8.8", 853, "dns.google", (), DOH) == DnsBypass(
        "dot", "dns.google", "tcp/853,sni=dns.google"
    )
    assert classify("udp", "94.140.14.14", 853, None, ("doq",), DOH) == DnsBypass(
        "doq", "dns.adguard-dns.com", "alpn=doq"
    )
    assert classify("udp", "203.0.113.9", 8853, "x.example", ("doq-i02",), DOH) == DnsBypass(
        "doq", "x.example", "alpn=doq-i02"
    )
    assert classify("udp", "203.0.113.9", 853, None, (), DOH) == DnsBypass(
        "doq", "203.0.113.9", "udp/853"
    )
    assert classify("tcp", "203.0.113.9", 443, "abc.dns.nextdns.io", ("h2",), DOH) == DnsBypass(
        "doh", "dns.nextdns.io", "sni=abc.dns.nextdns.io,alpn=h2"
    )
    # A listed address without a name: DoH; with another name it is that site, not DoH.
    assert classify("tcp", "1.1.1.1", 443, None, ("h2",), DOH) == DnsBypass(
        "doh", "cloudflare-dns.com", "doh-list-address,alpn=h2"
    )
    assert classify("tcp", "1.1.1.1", 443, "www.example.com", ("h2",), DOH) is None
    assert classify("udp", "198.51.100.53", 53, None, (), DOH) == DnsBypass(
        "dns", "198.51.100.53", "udp/53"
    )
    assert classify("tcp", "203.0.113.10", 443, "api.example.com", ("h2",), DOH) is None
    # A name the device looked up counts like an SNI.
    assert classify("tcp", "203.0.113.10", 443, "dns.google", (), DOH, via="dns") == DnsBypass(
        "doh", "dns.google", "dns=dns.google"
    )


def test_network_resolvers() -> None:
    assert not NetworkResolvers([], ["192.168.0.0/16"]).known  # the LAN alone says nothing
    nets = NetworkResolvers(["198.51.100.0/28"], ["192.168.0.0/16"], max_learned=16)
    assert nets.known  # configured
    nets.handed_out(["192.0.2.53", "not an address"], 1.0)
    assert nets.known and nets.contains("192.0.2.53")
    assert nets.contains("198.51.100.5") and nets.contains("192.168.1.1")
    assert nets.contains("fe80::1") and not nets.contains("203.0.113.53")
    nets.handed_out([f"2001:db8::{i:x}" for i in range(40)], 2.0)
    assert len(nets.learned) == 16 and not nets.contains("192.0.2.53")  # bounded, oldest out
    other = NetworkResolvers()
    other.adopt(nets)
    assert other.contains("2001:db8::27")


def test_config_rejects_what_is_no_address() -> None:
    DnsBypassConfig(("192.0.2.53", "2001:db8::/64")).validate()
    with pytest.raises(ValueError, match=r"allowed_resolvers\[1\]: not an IP address"):
        DnsBypassConfig(("192.0.2.53", "dns.google")).validate()


class _Sink:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def close(self) -> None:
        pass


def _flow(dst: str, port: int, proto: str = "tcp", **kw: object) -> Flow:
    f = Flow("F1", proto, PHONE.ip, 40000, dst, port, PHONE.mac, 10.0, 10.0)  # type: ignore[arg-type]
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def test_detector_alerts_once_per_device_and_resolver() -> None:
    sink = _Sink()
    alerts = AlertStage(sinks=[sink])
    det = BypassDetector(DnsBypassConfig(), DOH, alerts.observe, None, ["192.168.0.0/16"])
    det.resolvers_offered(("192.0.2.53",), 1.0)
    det.gateway_addresses(["198.51.100.1"])
    dev = Device(PHONE.mac)
    assert det.check(_flow("192.0.2.53", 853), dev, 10.0) is None  # handed out
    assert det.check(_flow("198.51.100.1", 853), dev, 10.0) is None  # the gateway
    assert det.check(_flow(GATEWAY, 853), dev, 10.0) is None  # inside the LAN
    f = _flow("203.0.113.53", 853)
    assert det.check(f, dev, 10.0) == DnsBypass("dot", "203.0.113.53", "tcp/853")
    assert f.dns_bypass is not None
    det.check(f, dev, 11.0)  # the same flow again (its end): not a second observation
    det.check(_flow("203.0.113.53", 853), dev, 12.0)  # a second flow: suppressed
    assert [a.rule for a in sink.alerts] == ["dns_bypass"]
    a = sink.alerts[0]
    assert a.severity == "info" and a.dst.ip == "203.0.113.53"
    assert "DNS over TLS" in a.summary and "tcp/853" in a.summary
    stats = alerts.stats()
    assert stats["dns_bypass_flows"] == [["203.0.113.53", "dot", 2]]
    assert stats["suppressed"] == {"dns_bypass": 1}


def test_severity_and_disabling() -> None:
    from sensor.alerts import AlertsConfig

    sink = _Sink()
    alerts = AlertStage(AlertsConfig(dns_bypass_severity="warning"), sinks=[sink])
    det = BypassDetector(DnsBypassConfig(), DOH, alerts.observe)
    det.check(_flow("203.0.113.53", 853), None, 1.0)
    assert sink.alerts[0].severity == "warning"
    with pytest.raises(ValueError, match="dns_bypass_severity"):
        AlertsConfig(dns_bypass_severity="loud").validate()
    off = AlertStage(AlertsConfig(disabled_rules=("dns_bypass",)), sinks=[sink])
    BypassDetector(DnsBypassConfig(), DOH, off.observe).check(_flow("203.0.113.54", 853), None, 1.0)
    assert len(sink.alerts) == 1 and off.stats()["disabled"] == {"dns_bypass": 1}


def test_plain_dns_counts_only_once_the_network_resolvers_are_known() -> None:
    det = BypassDetector(DnsBypassConfig(), DOH, None)
    assert det.check(_flow("198.51.100.53", 53, "udp"), None, 1.0) is None
    det.gateway_addresses(["192.168.1.1"])
    assert det.check(_flow("198.51.100.53", 53, "udp"), None, 1.0) is not None
    quiet = BypassDetector(DnsBypassConfig(plain_dns=False), DOH, None)
    quiet.gateway_addresses(["192.168.1.1"])
    assert quiet.check(_flow("198.51.100.53", 53, "udp"), None, 1.0) is None


def test_ech_cover_name_is_no_evidence() -> None:
    det = BypassDetector(DnsBypassConfig(), DOH, None)
    f = _flow("203.0.113.10", 443, server_name="dns.google", name_source="tls", ech=True)
    assert det.check(f, None, 1.0) is None


# --- whole captures through analyze -------------------------------------------------------------


def _dhcp_ack(cap: Capture, resolvers: list[str]) -> None:
    dns = b"".join(ipaddress.ip_address(a).packed for a in resolvers)
    opts = [(dpkt.dhcp.DHCP_OPT_MSGTYPE, bytes([dpkt.dhcp.DHCPACK])), (6, dns)]
    ack = dpkt.dhcp.DHCP(
        op=dpkt.dhcp.DHCP_OP_REPLY,
        chaddr=PHONE.mac_bytes,
        yiaddr=int(ipaddress.ip_address(PHONE.ip)),
        opts=opts,
    )
    cap.udp(PHONE, GATEWAY, 68, 67, bytes(ack), up=False)


def _tls(cap: Capture, dst: str, port: int, sni: str | None, alpn: tuple[str, ...] = ()) -> None:
    s = TcpSession(cap, PHONE, dst, cap.rng.randrange(20000, 60000), port)
    s.open()
    s.send(client_hello(sni, alpn=alpn))
    s.close()


def _home(cap: Capture, dhcp: bool = True) -> None:
    if dhcp:
        _dhcp_ack(cap, [HANDED_OUT])
    cap.dns_lookup(PHONE, HANDED_OUT, "use-application-dns.net", [])
    cap.dns_lookup(PHONE, HANDED_OUT, "mask.icloud.com", [])
    cap.dns_lookup(PHONE, HANDED_OUT, "www.example.com", ["203.0.113.80"])
    _tls(cap, HANDED_OUT, 853, None)  # Android's automatic Private DNS: no bypass
    _tls(cap, "203.0.113.53", 853, "dot.example.net")  # DoT elsewhere
    _tls(cap, "8.8.8.8", 443, "dns.google", ("h2", "http/1.1"))  # DoH
    _tls(cap, "203.0.113.80", 443, "www.example.com", ("h2",))  # an ordinary site
    cap.dns_lookup(PHONE, "198.51.100.53", "www.example.org", ["203.0.113.81"])  # plain


def test_analyze_reports_bypass_flows_canaries_and_alerts(tmp_path: Path) -> None:
    pcap = build(tmp_path / "home.pcap", _home)
    flows, devices, stats, _ = run_analyze(pcap)
    assert stats["dns_bypass"]["flows"] == 3 and stats["dns_bypass"]["canaries"] == 2
    dot = flow_to(flows, "203.0.113.53", 853)
    assert dot["dns_bypass"] == {
        "protocol": "dot",
        "resolver": "dot.example.net",
        "evidence": "tcp/853,sni=dot.example.net",
    }
    doh = flow_to(flows, "8.8.8.8", 443)
    assert doh["dns_bypass"] == {
        "protocol": "doh",
        "resolver": "dns.google",
        "evidence": "sni=dns.google,alpn=h2",
    }
    plain = flow_to(flows, "198.51.100.53", 53)
    assert plain["dns_bypass"]["protocol"] == "dns"
    for quiet in (flow_to(flows, HANDED_OUT, 853), flow_to(flows, "203.0.113.80", 443)):
        assert "dns_bypass" not in quiet
    assert all("dns_bypass" not in f for f in flows if f["dst_ip"] == HANDED_OUT)
    (phone,) = [d for d in devices if d["mac"] == PHONE.mac]
    assert phone["dns_canaries"] == ["mask.icloud.com", "use-application-dns.net"]


def test_analyze_alerts(tmp_path: Path) -> None:
    import io

    from sensor.analyze import analyze

    pcap = build(tmp_path / "home.pcap", _home)
    out = io.StringIO()
    assert analyze([str(pcap)], as_json=True, out=out, err=io.StringIO()) == 0
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    alerts = sorted((r["dst_ip"], r["severity"]) for r in recs if r.get("rule") == "dns_bypass")
    assert alerts == [("198.51.100.53", "info"), ("203.0.113.53", "info"), ("8.8.8.8", "info")]


def test_without_dhcp_plain_dns_is_not_judged(tmp_path: Path) -> None:
    pcap = build(tmp_path / "nodhcp.pcap", lambda c: _home(c, dhcp=False))
    flows, _, _, _ = run_analyze(pcap)
    assert "dns_bypass" not in flow_to(flows, "198.51.100.53", 53)
    # Encrypted DNS to a resolver nobody handed out is still one.
    assert flow_to(flows, HANDED_OUT, 853)["dns_bypass"]["protocol"] == "dot"


# --- the metric -----------------------------------------------------------------------------------


def test_metric_by_resolver_and_protocol_is_bounded() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from sensor.alerts import MAX_BYPASS_SERIES
    from sensor.metrics import COLLECTORS, Exporter, MetricsConfig, SensorView

    alerts = AlertStage()
    det = BypassDetector(DnsBypassConfig(), DOH, alerts.observe)
    det.check(_flow("8.8.8.8", 443, server_name="dns.google", name_source="tls"), None, 1.0)
    for i in range(MAX_BYPASS_SERIES + 10):  # more resolvers than the metric keeps
        det.check(_flow(f"203.0.113.{i}", 853), None, 1.0)
    off = tuple(c for c in COLLECTORS if c != "alerts")
    exporter = Exporter(
        MetricsConfig(port=0, disabled_collectors=off), SensorView(alert_stage=lambda: alerts)
    )
    try:
        text = exporter.render().decode()
    finally:
        exporter.stop()
    (fam,) = [
        f for f in text_string_to_metric_families(text) if f.name == "phonehome_dns_bypass_flows"
    ]
    rows = {(s.labels["resolver"], s.labels["protocol"]): s.value for s in fam.samples}
    assert rows[("dns.google", "doh")] == 1.0
    assert rows[("203.0.113.0", "dot")] == 1.0  # an address is no identifier: kept as is
    assert len(rows) == MAX_BYPASS_SERIES
    assert rows[("other", "dot")] == 12.0  # 1 + 62 named series, the rest folded
    assert sum(rows.values()) == MAX_BYPASS_SERIES + 11


# --- DoQ from a real QUIC client, resolvers from a Router Advertisement ---------------------------

PHONE6 = Host("64:09:80:12:34:56", "fd00:1::23")


def _router_advertisement(cap: Capture, *resolvers: str) -> None:
    body = b"".join(ipaddress.IPv6Address(a).packed for a in resolvers)
    rdnss = bytes([25, 1 + 2 * len(resolvers), 0, 0]) + (600).to_bytes(4, "big") + body
    ra = (64).to_bytes(1, "big") + bytes(3) + bytes(8)  # hop limit, flags, lifetime, timers
    icmp = dpkt.icmp6.ICMP6(type=134, code=0, data=ra + rdnss)
    pkt = dpkt.ip6.IP6(src=ipaddress.IPv6Address("fe80::1").packed, nxt=58, hlim=255)
    pkt.dst = ipaddress.IPv6Address("ff02::1").packed
    pkt.data = icmp
    pkt.plen = len(bytes(icmp))
    cap.emit(bytes(pkt), True, PHONE6, False)


def _doq(cap: Capture, dst: str, port: int = 853) -> None:
    from tests.builders import quic_initial_datagrams

    lport = cap.rng.randrange(20000, 60000)
    for dgram in quic_initial_datagrams("dns.adguard-dns.com", alpn=("doq",)):
        cap.udp(PHONE6, dst, lport, port, dgram, up=True)


def test_doq_and_resolvers_from_router_advertisements(tmp_path: Path) -> None:
    def scenario(cap: Capture) -> None:
        _router_advertisement(cap, "2001:db8::53")
        _doq(cap, "2001:db8::53")  # the resolver the RA handed out
        _doq(cap, "2a10:50c0::ad1:ff")  # AdGuard's
        _doq(cap, "2001:db8:ffff::9", 8853)  # ALPN alone says DoQ

    flows, _, stats, _ = run_analyze(build(tmp_path / "ra.pcap", scenario))
    assert "dns_bypass" not in flow_to(flows, "2001:db8::53", 853)
    assert flow_to(flows, "2a10:50c0::ad1:ff", 853)["dns_bypass"] == {
        "protocol": "doq",
        "resolver": "dns.adguard-dns.com",
        "evidence": "alpn=doq",
    }
    assert flow_to(flows, "2001:db8:ffff::9", 8853)["dns_bypass"]["protocol"] == "doq"
    assert stats["skipped"].get("ip.not_tcp_udp") == 1  # the RA: read, then skipped as before


def test_malformed_router_advertisement_is_counted(tmp_path: Path) -> None:
    def scenario(cap: Capture) -> None:
        icmp = dpkt.icmp6.ICMP6(type=134, code=0, data=bytes(12) + b"\x19\x00" + bytes(6))
        pkt = dpkt.ip6.IP6(src=ipaddress.IPv6Address("fe80::1").packed, nxt=58, hlim=255)
        pkt.dst = ipaddress.IPv6Address("ff02::1").packed
        pkt.data = icmp
        pkt.plen = len(bytes(icmp))
        cap.emit(bytes(pkt), True, PHONE6, False)

    _, _, stats, _ = run_analyze(build(tmp_path / "bad.pcap", scenario))
    assert stats["weird"] == {"ndp.zero_length_option": 1}


# --- configuration --------------------------------------------------------------------------------


def test_configuration_keys(tmp_path: Path) -> None:
    from sensor.config import ConfigError
    from sensor.validate import load_config

    path = tmp_path / "phonehome.toml"
    path.write_text(
        '[dns_bypass]\nallowed_resolvers = ["192.0.2.53", "2001:db8::/48"]\nplain_dns = false\n'
        '[alerts]\ndns_bypass_severity = "warning"\n'
    )
    cfg = load_config(path)
    assert cfg.dns_bypass == DnsBypassConfig(("192.0.2.53", "2001:db8::/48"), plain_dns=False)
    assert cfg.alerts.dns_bypass_severity == "warning"
    for text, key, reason in (
        ('[dns_bypass]\nallowed_resolvers = ["dns.google"]\n', "allowed_resolvers[0]", "not an"),
        ('[dns_bypass]\nallowed_resolvers = ["0.0.0.0/0"]\n', "allowed_resolvers[0]", "wider"),
        ("[dns_bypass]\nplain = true\n", "dns_bypass.plain", "unknown key"),
        ('[alerts]\ndns_bypass_severity = "loud"\n', "dns_bypass_severity", "must be"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert key in err.value.key and reason in err.value.reason, str(err.value)


def test_a_failing_alert_stage_loses_nothing() -> None:
    class Broken:
        def observe(self, obs: object) -> None:
            raise RuntimeError("boom")

    det = BypassDetector(DnsBypassConfig(), DOH, Broken().observe)
    f = _flow("203.0.113.53", 853)
    assert det.check(f, None, 1.0) == DnsBypass("dot", "203.0.113.53", "tcp/853")
    assert f.dns_bypass is not None and det.stats()["errors"] == 1


def test_text_summary_names_the_bypass_and_canaries(tmp_path: Path) -> None:
    import io

    from sensor.analyze import analyze

    out = io.StringIO()
    assert analyze([str(build(tmp_path / "home.pcap", _home))], out=out, err=io.StringIO()) == 0
    text = out.getvalue()
    assert (
        "  DNS bypass: dns to 198.51.100.53 (1 flow), doh to dns.google (1 flow), "
        "dot to dot.example.net (1 flow)\n" in text
    )
    assert "  DNS canaries asked: mask.icloud.com, use-application-dns.net\n" in text
