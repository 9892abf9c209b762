"""DNS bypass on the lab gateway: real DoT sessions (Python's ssl, port 853) from a device to
the resolvers the gateway's DHCP handed out, and to one it did not."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import dpkt
import pytest

from sensor.lab import Lab
from tests.lab.test_daemon import Daemon

ROGUE = "203.0.113.53"
"""A DoT resolver in the WAN namespace that nobody handed out."""
HANDED_OUT = "203.0.113.153"
"""A WAN resolver the gateway's DHCP ACK names (as an ISP's router may)."""

# A DoT server: TLS on port 853, answers each length-prefixed query with the same message
# flagged as a response (enough for a client to see an answer).
SERVER = """
import socket, ssl, struct, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv = socket.create_server((sys.argv[1], 853), reuse_port=True)
print("ready", flush=True)
def serve(conn):
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            head = tls.recv(2)
            query = tls.recv(struct.unpack("!H", head)[0])
            answer = query[:2] + bytes([query[2] | 0x80]) + query[3:]
            tls.sendall(struct.pack("!H", len(answer)) + answer)
    except (OSError, ssl.SSLError, struct.error):
        pass
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

CLIENT = """
import socket, ssl, struct, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
query = bytes.fromhex(sys.argv[2])
with socket.create_connection((sys.argv[1], 853), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname=sys.argv[3] or None) as tls:
        tls.sendall(struct.pack("!H", len(query)) + query)
        n = struct.unpack("!H", tls.recv(2))[0]
        print(len(tls.recv(n)))
"""


def _query(name: str) -> str:
    q = dpkt.dns.DNS(id=0x4242, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
    return bytes(q).hex()


def _dhcp_ack(lab: Lab, resolvers: list[str]) -> None:
    """A DHCP ACK from the gateway's LAN address to the phone, handing out `resolvers`."""
    dev = lab.devices["xiaomi"]
    dns = b"".join(ipaddress.ip_address(a).packed for a in resolvers)
    ack = dpkt.dhcp.DHCP(
        op=dpkt.dhcp.DHCP_OP_REPLY,
        chaddr=bytes.fromhex(dev.mac.replace(":", "")),
        yiaddr=int(ipaddress.ip_address(dev.ipv4)),
        opts=[(dpkt.dhcp.DHCP_OPT_MSGTYPE, bytes([dpkt.dhcp.DHCPACK])), (6, dns)],
    )
    send = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind((sys.argv[1], 67))\n"
        "s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[2], 68))\n"
    )
    proc = lab.gw_exec(
        [sys.executable, "-c", send, lab.gw_lan_ipv4, dev.ipv4, bytes(ack).hex()], timeout=30
    )
    assert proc.returncode == 0, proc.stderr


def _start_server(lab: Lab, ns: str, address: str) -> None:
    tls = lab.run_dir / "tls"
    proc = lab.ns_popen(
        ns,
        [sys.executable, "-c", SERVER, address, str(tls / "cert.pem"), str(tls / "key.pem")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"


def _dot(lab: Lab, address: str, sni: str = "") -> None:
    proc = lab.exec("xiaomi", [sys.executable, "-c", CLIENT, address, _query("example.com"), sni])
    assert proc.returncode == 0 and int(proc.stdout) > 12, proc.stderr


@pytest.fixture(scope="module")
def daemon(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    for addr in (ROGUE, HANDED_OUT):
        proc = lab.wan_exec(["ip", "addr", "add", f"{addr}/32", "dev", "lo"])
        assert proc.returncode == 0, proc.stderr
    _start_server(lab, lab.wan_ns, "0.0.0.0")
    _start_server(lab, lab.gw_ns, lab.gw_lan_ipv4)
    # Short idle timeouts: the gateway's DoT connection (seen through conntrack only) is
    # judged when its flow ends.
    extra = "[flows]\ntcp_idle_timeout = 3.0\n"
    d = Daemon(lab, tmp_path_factory.mktemp("dnsbypass"), extra)
    try:
        d.wait_notify("READY=1", timeout=60.0)
        yield d
    finally:
        d.stop()


def _bypass_alerts(d: Daemon) -> list[dict[str, Any]]:
    return [e for e in d.events() if e.get("type") == "alert" and e.get("rule") == "dns_bypass"]


def _flows_to(d: Daemon, address: str) -> list[dict[str, Any]]:
    snap = d.snapshot()
    return [f for f in snap["flows"] + snap["ended"] if f["dst_ip"] == address]


def test_dot_to_handed_out_resolvers_is_quiet_and_elsewhere_alerts(
    daemon: Daemon, lab: Lab
) -> None:
    _dhcp_ack(lab, [lab.gw_lan_ipv4, HANDED_OUT])
    # The ACK went through the daemon (its flow is in the snapshot) before any DoT starts.
    daemon.wait_for("the DHCP ACK", lambda: _flows_to(daemon, lab.gw_lan_ipv4), timeout=15.0)
    _dot(lab, lab.gw_lan_ipv4)  # Android's automatic Private DNS: the resolver DHCP gave
    _dot(lab, HANDED_OUT, "dot.isp.example")
    daemon.wait_for("the handed-out DoT flow", lambda: _flows_to(daemon, HANDED_OUT), 15.0)
    _dot(lab, ROGUE, "dot.rogue.example")
    alerts = daemon.wait_for("a dns_bypass alert", lambda: _bypass_alerts(daemon), 15.0)
    assert [(a["dst_ip"], a["device_mac"]) for a in alerts] == [(ROGUE, lab.devices["xiaomi"].mac)]
    assert alerts[0]["severity"] == "info"
    assert "DNS over TLS" in alerts[0]["summary"]
    rogue = daemon.wait_for(
        "the bypass in the flow record",
        lambda: [f for f in _flows_to(daemon, ROGUE) if "dns_bypass" in f],
        15.0,
    )
    assert rogue[0]["dns_bypass"] == {
        "protocol": "dot",
        "resolver": "dot.rogue.example",
        "evidence": "tcp/853,sni=dot.rogue.example",
    }
    assert all("dns_bypass" not in f for f in _flows_to(daemon, HANDED_OUT))
    # A second session to the same resolver is a repeat: suppressed, not a second alert.
    _dot(lab, ROGUE, "dot.rogue.example")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and len(_flows_to(daemon, ROGUE)) < 2:
        daemon.pump(0.2)
    assert len(_bypass_alerts(daemon)) == 1


def test_dot_to_the_gateway_ends_without_an_alert(daemon: Daemon, lab: Lab) -> None:
    """The gateway's own DoT service is reached through input, which the sampling rules do not
    log: conntrack alone shows the connection, and it is judged when its flow ends."""
    before = len(_bypass_alerts(daemon))
    _dot(lab, lab.gw_lan_ipv4, "gateway.lan")

    def ended() -> list[dict[str, Any]]:
        snap = daemon.snapshot()
        return [f for f in snap["ended"] if f["dst_ip"] == lab.gw_lan_ipv4 and f["dst_port"] == 853]

    gone = daemon.wait_for("the gateway DoT flow to end", ended, 30.0)
    assert not any("dns_bypass" in f for f in gone)
    assert len(_bypass_alerts(daemon)) == before
