"""Every connection counted once, with conntrack's own bytes, however its sampled packets and
its conntrack end interleave (refused and reset connections end before NFLOG's batch delivers
their packets); the gateway's own connections (the metrics scrapes on loopback) are no LAN
device's traffic."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sensor.lab import Lab, parse_conntrack
from tests.lab.test_daemon import Daemon
from tests.lab.test_floods import metric_series

SERVER = "203.0.113.10"
CLOSED_PORT = 81
"""Nothing listens there: the server's kernel answers each SYN with a RST."""

# Runs in a device namespace: `python -c CONNECT MODE COUNT SERVER PORT`; prints the local
# ports it used, one a line. "refused": connect to a closed port (SYN answered by RST).
# "reset": connect, send a request line, abort with SO_LINGER 0 (the client sends a RST).
CONNECT = r"""
import socket, struct, sys, time
mode, count, server, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
for _ in range(count):
    s = socket.socket()
    s.settimeout(5)
    if mode == "refused":
        try:
            s.connect((server, port))
        except ConnectionRefusedError:
            pass
        print(s.getsockname()[1])
    else:
        s.connect((server, port))
        s.sendall(b"GET /reset-me HTTP/1.1\r\nHost: api.account.xiaomi.com\r\n\r\n")
        time.sleep(0.05)
        print(s.getsockname()[1])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def daemon(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(lab, tmp_path_factory.mktemp("accounting"))
    try:
        d.wait_notify("READY=1")
        yield d
    finally:
        d.stop()


class _Destroys:
    """`conntrack -E -e DESTROY` in the gateway: conntrack's own final counters."""

    def __init__(self, lab: Lab, port: int) -> None:
        self.proc = lab.gw_popen(
            ["conntrack", "-E", "-e", "DESTROY", "-o", "extended", "-p", "tcp",
             "--orig-port-dst", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        time.sleep(0.3)  # subscribed before the first connection

    def entries(self) -> list[dict[str, Any]]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        rows = []
        # Event lines are dump lines with "[DESTROY]" first and no timeout field.
        for line in out.splitlines():
            tokens = line.split()
            if not tokens or tokens[0] != "[DESTROY]":
                continue
            tokens = [*tokens[1:5], "0", *tokens[5:]]
            (e,) = parse_conntrack(" ".join(tokens))
            rows.append(e)
        return [
            {
                "sport": int(e.orig["sport"]),
                "bytes_up": e.orig_bytes,
                "packets_up": int(e.orig["packets"]),
                "bytes_down": e.reply_bytes,
                "packets_down": int(e.reply["packets"]),
            }
            for e in rows
        ]


def _connect(lab: Lab, mode: str, count: int, port: int) -> list[int]:
    proc = lab.exec(
        "xiaomi",
        [sys.executable, "-c", CONNECT, mode, str(count), SERVER, str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [int(x) for x in proc.stdout.split()]


def _records(
    daemon: Daemon, src: str, ports: list[int], ended: bool = False
) -> list[dict[str, Any]]:
    snap = daemon.snapshot()
    records = snap["ended"] if ended else snap["flows"] + snap["ended"]
    return [r for r in records if r["src_ip"] == src and r["src_port"] in ports]


def _flows_total(lab: Lab) -> float:
    return sum(v for k, v in metric_series(lab).items() if k.startswith("phonehome_flows_total{"))


def _upload_total(lab: Lab) -> float:
    """The phone's upload bytes (its label is its MAC, or its name once an alert named it)."""
    labels = (f'device="{lab.device("xiaomi").mac}"', 'device="Redmi phone"')
    return sum(
        v
        for k, v in metric_series(lab).items()
        if k.startswith("phonehome_upload_bytes_total{") and any(x in k for x in labels)
    )


@pytest.mark.parametrize(("mode", "port", "wait"), [("refused", CLOSED_PORT, 3), ("reset", 80, 15)])
def test_short_connections_are_counted_once_with_conntracks_bytes(
    daemon: Daemon, lab: Lab, mode: str, port: int, wait: float
) -> None:
    phone = lab.device("xiaomi")
    flows_before = _flows_total(lab)
    upload_before = _upload_total(lab)
    destroys = _Destroys(lab, port)
    try:
        ports = _connect(lab, mode, 3, port)
        assert len(set(ports)) == 3
        # A reset connection's conntrack entry lingers in CLOSE for 10 s before it ends.
        daemon.wait_for(
            "the flows' ends",
            lambda: len(_records(daemon, phone.ipv4, ports, ended=True)) >= 3 or None,
            timeout=wait + 10,
        )
        daemon.pump(1.0)  # anything that would come late, twice over
    finally:
        truth = {e["sport"]: e for e in destroys.entries() if e["sport"] in ports}
    assert set(truth) == set(ports), truth
    records = _records(daemon, phone.ipv4, ports)
    by_port: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_port.setdefault(r["src_port"], []).append(r)
    assert {p: len(rs) for p, rs in by_port.items()} == dict.fromkeys(ports, 1), records
    for p in ports:
        (r,) = by_port[p]
        got = {k: r[k] for k in ("bytes_up", "packets_up", "bytes_down", "packets_down")}
        want = {k: truth[p][k] for k in got}
        assert got == want, (p, r)
        assert r["device_mac"] == phone.mac
        if mode == "reset":
            assert r["server_name"] == "api.account.xiaomi.com"
    assert _flows_total(lab) - flows_before == 3
    sent = sum(truth[p]["bytes_up"] for p in ports)
    assert _upload_total(lab) - upload_before == sent, [
        k for k in metric_series(lab) if k.startswith("phonehome_upload_bytes_total")
    ]


def test_the_gateways_own_scrapes_are_no_devices_traffic(daemon: Daemon, lab: Lab) -> None:
    for _ in range(5):
        metric_series(lab)  # a TCP connection to 127.0.0.1:14663 from the gateway itself
        time.sleep(0.2)
    daemon.pump(2.5)  # past the conntrack dump interval and the ends' grace
    series = metric_series(lab)
    snap = daemon.snapshot()
    records = snap["flows"] + snap["ended"]
    assert not [r for r in records if r["dst_port"] == 14663 or r["src_ip"] == "127.0.0.1"]
    unknown = [k for k in series if 'device="unknown"' in k]
    assert not unknown, unknown
    assert snap["stats"]["conntrack_not_lan"] >= 5


def test_devices_dns_to_elsewhere_still_counted(daemon: Daemon, lab: Lab) -> None:
    """LAN devices' own traffic is untouched by the gateway filter."""
    assert lab.resolve("samsung", "api.samsungosp.com")
    daemon.wait_for(
        "the DNS flow",
        lambda: [
            r
            for r in daemon.snapshot()["flows"] + daemon.snapshot()["ended"]
            if r["src_ip"] == lab.device("samsung").ipv4 and r["dst_port"] == 53
        ],
        timeout=10,
    )
