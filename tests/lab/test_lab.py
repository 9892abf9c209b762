"""The namespace gateway lab: real DNS, HTTP, TLS, QUIC and IPv6 through a NAT gateway with
conntrack, and a teardown that leaves nothing behind (also after an exception or a crash)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.lab import (
    DEFAULT_DEVICES,
    GW_WAN4,
    NETNS_ETC,
    NS_PREFIX,
    ConntrackEntry,
    DeviceSpec,
    Lab,
    LabError,
    cleanup_stale,
    list_namespaces,
    parse_conntrack,
)
from sensor.lab.servers import dns_answer

MB5 = 5 * 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def _gone(lab_id: str, run_dir: Path) -> None:
    """Nothing of lab `lab_id` is left: namespaces, /etc/netns files, run dir."""
    assert [ns for ns in list_namespaces() if ns.startswith(lab_id + "-")] == []
    assert not any(p.name.startswith(lab_id) for p in NETNS_ETC.glob("*"))
    assert not run_dir.exists()


def _pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _flow(lab: Lab, src: str, sport: int | None, dport: int, proto: str) -> ConntrackEntry:
    for entry in lab.conntrack():
        o = entry.orig
        if (
            entry.proto == proto
            and o.get("src") == src
            and o.get("dport") == str(dport)
            and (sport is None or o.get("sport") == str(sport))
        ):
            return entry
    raise AssertionError(f"no {proto} flow from {src}:{sport} to port {dport} in conntrack")


# --- pure parts (no root needed) ------------------------------------------------------------------


def test_parse_conntrack_extended() -> None:
    text = (
        "ipv4     2 tcp      6 117 TIME_WAIT src=192.168.77.23 dst=203.0.113.10 sport=40638 "
        "dport=80 packets=6 bytes=549 src=203.0.113.10 dst=198.51.100.1 sport=80 dport=40638 "
        "packets=6 bytes=614 [ASSURED] mark=0 use=1\n"
        "ipv6     10 udp      17 29 src=fd00:77::23 dst=2001:db8:192::53 sport=5353 dport=53 "
        "packets=1 bytes=80 src=2001:db8:192::53 dst=2001:db8:ffff::1 sport=53 dport=5353 "
        "packets=1 bytes=120 mark=0 use=1\n"
    )
    tcp, udp = parse_conntrack(text)
    assert (tcp.family, tcp.proto, tcp.state, tcp.flags) == (
        "ipv4",
        "tcp",
        "TIME_WAIT",
        ("ASSURED",),
    )
    assert tcp.orig["src"] == "192.168.77.23" and tcp.reply["dst"] == "198.51.100.1"
    assert (tcp.orig_bytes, tcp.reply_bytes) == (549, 614)
    assert (udp.family, udp.state, udp.orig["sport"], udp.reply_bytes) == (
        "ipv6",
        None,
        "5353",
        120,
    )


def test_dns_answer_follows_cname_and_says_nxdomain() -> None:
    import dpkt

    zone = {"a.example": [("CNAME", "b.example")], "b.example": [("A", "192.0.2.1")]}
    q = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name="A.example", type=dpkt.dns.DNS_A)])
    r = dpkt.dns.DNS(dns_answer(zone, bytes(q)))
    assert r.id == 7 and r.rcode == 0
    assert [rr.type for rr in r.an] == [dpkt.dns.DNS_CNAME, dpkt.dns.DNS_A]
    q.qd[0].name = "missing.example"
    assert dpkt.dns.DNS(dns_answer(zone, bytes(q))).rcode == dpkt.dns.DNS_RCODE_NXDOMAIN
    assert dns_answer(zone, b"\x00garbage") is None


def test_without_root_the_lab_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.lab.conftest import lab_unusable

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert lab_unusable() == "lab tests need root"
    with pytest.raises(LabError, match="needs root"):
        Lab.create()


# --- the running lab ------------------------------------------------------------------------------


def test_devices_have_their_macs_and_addresses(lab: Lab) -> None:
    assert [d.name for d in lab.devices.values()] == [s.name for s in DEFAULT_DEVICES]
    assert lab.devices["xiaomi"].mac.startswith("64:09:80")
    for dev in lab.devices.values():
        link = lab.exec(dev, ["ip", "-br", "link", "show", "eth0"], check=True).stdout
        assert dev.mac in link
        addrs = lab.exec(dev, ["ip", "-br", "addr", "show", "eth0"], check=True).stdout
        assert dev.ipv4 in addrs and dev.ipv6 in addrs
    ports = lab.gw_exec(["ip", "-br", "link", "show", "master", lab.lan_bridge]).stdout
    assert all(d.port in ports for d in lab.devices.values())


def test_dns_from_the_phone(lab: Lab) -> None:
    # Through the phone's own resolv.conf (getaddrinfo), as an app would.
    assert set(lab.resolve("xiaomi", "api.account.xiaomi.com")) == {
        "203.0.113.10",
        "2001:db8:203::10",
    }
    assert lab.resolve("xiaomi", "www.example.com", family=6) == ["2001:db8:192::80"]
    reply = lab.dns_query("xiaomi", "tracking.intl.miui.com", "A")
    assert reply.rcode == 0
    assert reply.answers == [
        ("CNAME", "tracking.intl.miui.com.cdn.example.net"),
        ("A", "198.51.100.20"),
    ]
    tcp6 = lab.dns_query(
        "samsung", "api.account.xiaomi.com", "AAAA", tcp=True, server=lab.resolver.ipv6
    )
    assert tcp6.answers == [("AAAA", "2001:db8:203::10")]
    assert lab.dns_query("laptop", "not-in-the-zone.example", "A").rcode == 3
    with pytest.raises(LabError):
        lab.resolve("laptop", "not-in-the-zone.example")


def test_http_post_goes_through_nat(lab: Lab) -> None:
    phone = lab.devices["xiaomi"]
    r = lab.http_post(
        phone, "api.account.xiaomi.com", 1234, path="/pass/v2/register", user_agent="Dalvik/2.1.0"
    )
    assert (r.status, r.sent, r.received) == (200, 1234, 1234)
    assert r.local == phone.ipv4 and r.remote == "203.0.113.10"
    # The server sees the gateway's WAN address, not the phone's.
    assert r.server_peer == lab.gw_wan_ipv4
    assert r.server["path"] == "/pass/v2/register" and r.server["user_agent"] == "Dalvik/2.1.0"
    assert any(
        e["proto"] == "http" and e["received"] == 1234 and e["peer"] == lab.gw_wan_ipv4
        for e in lab.server_events()
    )


def test_tls_upload_5mb_with_sni_and_conntrack(lab: Lab) -> None:
    phone = lab.devices["xiaomi"]
    r = lab.tls_upload(phone, "tracking.intl.miui.com", MB5)
    assert r.status == 200 and r.sent == MB5
    assert r.received == MB5
    assert r.server["proto"] == "https" and r.server["sni"] == "tracking.intl.miui.com"
    assert r.server_peer == lab.gw_wan_ipv4 and r.remote == "198.51.100.20"
    assert any(
        e["sni"] == "tracking.intl.miui.com" and e["received"] == MB5 for e in lab.server_events()
    )
    # conntrack in the gateway: the phone's LAN address is the original source, NATed out.
    if shutil.which("conntrack") is None:
        pytest.skip("conntrack (Debian package) not installed")
    flow = _flow(lab, phone.ipv4, r.local_port, 443, "tcp")
    assert flow.orig["dst"] == "198.51.100.20"
    assert flow.reply["dst"] == lab.gw_wan_ipv4
    assert flow.orig_bytes > MB5 and flow.reply_bytes > 0
    assert int(flow.orig["packets"]) > 0 and int(flow.reply["packets"]) > 0


def test_ipv6_end_to_end(lab: Lab) -> None:
    phone = lab.devices["samsung"]
    r = lab.http_post(phone, "www.example.com", 500, family=6)
    assert (r.status, r.received) == (200, 500)
    assert r.local == phone.ipv6 and r.remote == "2001:db8:192::80"
    assert r.server_peer == lab.gw_wan_ipv6  # NAT66 masquerade
    t = lab.tls_upload(phone, "api.account.xiaomi.com", 100_000, family=6)
    assert t.received == 100_000 and t.server["sni"] == "api.account.xiaomi.com"
    if shutil.which("conntrack") is None:
        pytest.skip("conntrack (Debian package) not installed")
    flow = _flow(lab, phone.ipv6, t.local_port, 443, "tcp")
    assert flow.family == "ipv6" and flow.reply["dst"] == lab.gw_wan_ipv6
    assert flow.orig_bytes > 100_000


def test_quic_upload(lab: Lab) -> None:
    pytest.importorskip("aioquic")
    laptop = lab.devices["laptop"]
    r = lab.quic_upload(laptop, "www.example.com", 300_000)
    assert (r.status, r.sent, r.received) == (200, 300_000, 300_000)
    assert r.server["proto"] == "h3" and r.server["sni"] == "www.example.com"
    assert r.server_peer == lab.gw_wan_ipv4
    if shutil.which("conntrack") is not None:
        flow = _flow(lab, laptop.ipv4, None, 443, "udp")
        assert flow.orig_bytes > 300_000


def test_gateway_learns_device_macs(lab: Lab) -> None:
    lab.http_post("laptop", "www.example.com", 10)
    neigh = lab.gw_exec(["ip", "neigh", "show", "dev", lab.lan_bridge], check=True).stdout
    laptop = lab.devices["laptop"]
    assert any(laptop.ipv4 in line and laptop.mac in line for line in neigh.splitlines())


def test_cleanup_stale_spares_live_labs(lab: Lab) -> None:
    assert lab.id not in cleanup_stale()
    assert set(lab.namespaces) <= set(list_namespaces())


# --- lifecycle ------------------------------------------------------------------------------------

SMALL = (DEFAULT_DEVICES[0],)


def test_teardown_leaves_nothing(lab_usable: None) -> None:
    started = time.monotonic()
    with Lab.create(devices=SMALL, quic=False) as small:
        assert set(small.namespaces) <= set(list_namespaces())
        assert (NETNS_ETC / small.devices["xiaomi"].ns / "resolv.conf").exists()
        server = small._server
        assert server is not None and server.poll() is None
        sleeper = small.popen("xiaomi", ["sleep", "60"])
        lab_id, run_dir = small.id, small.run_dir
    assert time.monotonic() - started < 10
    _gone(lab_id, run_dir)
    assert server.poll() is not None and sleeper.poll() is not None


def test_teardown_after_exception_in_body(lab_usable: None) -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab.create(devices=SMALL, quic=False) as small:
        lab_id, run_dir = small.id, small.run_dir
        raise RuntimeError("boom")
    _gone(lab_id, run_dir)


def test_failed_build_is_torn_down(lab_usable: None) -> None:
    mine = f"{NS_PREFIX}-{os.getpid()}-"
    before = {ns for ns in list_namespaces() if ns.startswith(mine)}
    with pytest.raises(LabError, match="not ready"):
        Lab.create(devices=SMALL, quic=False, ready_timeout=0.001)
    assert {ns for ns in list_namespaces() if ns.startswith(mine)} == before
    with pytest.raises(LabError, match="device name"):
        Lab.create(devices=(DeviceSpec("gw", "02:00:00:00:00:02", "192.168.77.2", "fd00:77::2"),))


def test_routed_ipv6_without_nat66(lab_usable: None) -> None:
    with Lab.create(devices=SMALL, quic=False, nat66=False) as routed:
        phone = routed.devices["xiaomi"]
        r = routed.http_post(phone, "www.example.com", 10, family=6)
        assert r.server_peer == phone.ipv6  # routed: the server sees the ULA source
        assert routed.http_post(phone, "www.example.com", 10, family=4).server_peer == GW_WAN4


def test_cleanup_stale_removes_a_crashed_lab(lab_usable: None) -> None:
    # A real crash: a process builds a lab, starts a client in it, and is SIGKILLed.
    child = (
        "import os, signal, subprocess\n"
        "from sensor.lab import Lab, DEFAULT_DEVICES\n"
        "lab = Lab.create(devices=DEFAULT_DEVICES[:1], quic=False)\n"
        "quiet = {'stdout': subprocess.DEVNULL, 'stderr': subprocess.DEVNULL}\n"
        "p = lab.popen('xiaomi', ['sleep', '60'], **quiet)\n"
        "print(lab.id, lab.run_dir, p.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    lab_id, run_dir, sleeper = proc.stdout.split()
    assert any(ns.startswith(lab_id) for ns in list_namespaces())
    assert lab_id in cleanup_stale()
    _gone(lab_id, Path(run_dir))
    deadline = time.monotonic() + 10
    while not _pid_gone(int(sleeper)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pid_gone(int(sleeper))
