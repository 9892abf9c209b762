"""A connection whose flow leaves the flow table while conntrack still holds it (pushed out at
the size cap by other devices' flows) stays one flow: conntrack's later dumps of it add only
what came since. Its own module: it runs its own daemon (with a small table), and one gateway
namespace takes one daemon at a time (NFLOG group)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from sensor.lab import Lab, parse_conntrack, post_leak
from tests.lab.test_daemon import Daemon

SERVER = "203.0.113.10"

# Runs in a device namespace: `python -c DATAGRAMS SERVER FIRST_PORT COUNT`: one datagram to
# each of COUNT ports, each a flow the sensor keeps (conntrack holds them 30 s, unreplied).
DATAGRAMS = r"""
import socket, sys
server, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(first, first + count):
    s.sendto(b"x" * 20, (server, port))
"""


def test_an_open_connection_pushed_out_of_a_full_table_is_counted_once(
    lab: Lab, tmp_path: Path
) -> None:
    """The phone's closed connection waits in TIME_WAIT (120 s), so every conntrack dump (each
    second here) reports it again; pushed out of a full flow table by other flows, it is still
    one flow: later dumps with nothing new make no record, where each used to start a new flow
    with all its bytes again."""
    phone = lab.device("xiaomi").ipv4
    d = Daemon(lab, tmp_path, extra="[flows]\nmax_flows = 16\n")
    try:
        d.wait_notify("READY=1", timeout=60)
        since = time.time()
        assert post_leak(lab).status == 200

        def records(live: bool = False) -> dict[int, list[dict[str, Any]]]:
            snap = d.snapshot()
            by_port: dict[int, list[dict[str, Any]]] = {}
            for r in snap["flows"] if live else snap["flows"] + snap["ended"]:
                if r["src_ip"] == phone and r["dst_port"] == 80 and r["first_seen"] >= since - 0.01:
                    by_port.setdefault(r["src_port"], []).append(r)
            return by_port

        def accounted() -> dict[int, list[dict[str, Any]]] | None:
            """The leak's flow once it holds conntrack's counters (a dump reached it; its
            sampled packets alone may count fewer, and a dump read before them no longer
            makes them count twice)."""
            listed = lab.gw_exec(
                ["conntrack", "-L", "-o", "extended", "-p", "tcp", "-s", phone, "--dport", "80"]
            ).stdout
            truth = {
                int(e.orig["sport"]): (e.orig_bytes, e.reply_bytes) for e in parse_conntrack(listed)
            }
            by_port = records(live=True)
            if len(by_port) != 1:
                return None
            ((port, (r,)),) = by_port.items()
            want = truth.get(port)
            if want is None or r["bytes_up"] < want[0] or r["bytes_down"] < want[1]:
                return None
            return by_port

        ((port, (first,)),) = d.wait_for("the leak's flow, accounted", accounted, 30).items()
        proc = lab.exec(
            "laptop",
            [sys.executable, "-c", DATAGRAMS, SERVER, "20000", "64"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        d.wait_for("the leak's flow pushed out", lambda: port not in records(live=True), 30)
        gone = d.wait_for("its record", lambda: records().get(port), 30)

        def dumps() -> int:
            return int(d.snapshot()["stats"]["conntrack_dumps"]["dumps"])

        # Three more dumps of its TIME_WAIT entry, which has nothing new.
        after = dumps() + 3
        d.wait_for("three more conntrack dumps", lambda: dumps() >= after, 30)
        assert records()[port] == gone, records()[port]
        ((r,),) = [gone]
        assert r["uid"] == first["uid"] and "continued_from" not in r
    finally:
        d.stop()
