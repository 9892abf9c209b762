"""A device's JA4 set survives a restart of the live daemon: a fingerprint the phone showed
before `phonehome run` was stopped raises no new_fingerprint after it starts again on the same
state directory; one it never showed still does.

The phone runs real TLS clients (Python's ssl, three configurations with three JA4s) against
the lab's HTTPS server through the namespace gateway. The learning period is 0, so without
the saved sets the first fingerprint would alert again after the restart. The phone looks the
name up first, as devices do: the live sensor makes a device record (which holds the JA4 set)
from a flow whose first captured packet the device sent, and a TCP flow's may be the server's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sensor.fingerprints import STATE_NAME
from sensor.lab import SERVERS, Lab
from tests.lab.test_daemon import Daemon

HOME = SERVERS[2]
EXTRA = "[alerts]\nnew_fingerprint_learning = 0.0\n"
CLIENT = """
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if sys.argv[2] == "tls12":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
if sys.argv[2] == "h1":
    ctx.set_alpn_protocols(["http/1.1"])
with socket.create_connection((sys.argv[1], 443), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname="www.example.com") as tls:
        print(tls.version())
"""


def _hello(lab: Lab, variant: str) -> None:
    assert lab.resolve("xiaomi", "www.example.com", family=4) == [HOME.ipv4]
    proc = lab.exec(
        "xiaomi", [lab.python, "-c", CLIENT, HOME.ipv4, variant], capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def _new_fingerprints(d: Daemon) -> list[dict[str, Any]]:
    return [e for e in d.events() if e.get("rule") == "new_fingerprint"]


def _device_ja4(d: Daemon, mac: str) -> Callable[[], list[str] | None]:
    def check() -> list[str] | None:
        for rec in d.snapshot()["devices"]:
            if rec["mac"] == mac:
                return list(rec["ja4"])
        return None

    return check


def test_ja4_set_survives_a_daemon_restart(lab_usable: None, tmp_path: Path) -> None:
    with Lab.create(quic=False) as lab:
        mac = lab.devices["xiaomi"].mac
        (tmp_path / "first").mkdir()
        first = Daemon(lab, tmp_path / "first", EXTRA)
        try:
            first.wait_notify("READY=1")
            _hello(lab, "plain")
            (alert,) = first.wait_for("the first fingerprint", lambda: _new_fingerprints(first), 20)
        finally:
            assert first.stop() == 0, first.output()
        saved = json.loads((first.state / STATE_NAME).read_text())["devices"]
        ((fp_a,),) = [r["ja4"] for r in saved if r["mac"] == mac]
        assert fp_a in alert["summary"]

        (tmp_path / "second").mkdir()
        again = str(tmp_path / "second" / "state")
        second = Daemon(
            lab,
            tmp_path / "second",
            EXTRA,
            edit=lambda t: t.replace(again, str(first.state)),
        )
        second.state = first.state  # events.jsonl and the snapshot of the same directory
        try:
            second.wait_notify("READY=1")
            _hello(lab, "plain")  # shown before the restart
            _hello(lab, "tls12")  # new
            second.wait_for("the new fingerprint", lambda: len(_new_fingerprints(second)) >= 2, 20)
            ja4 = second.wait_for(
                "both fingerprints on the device",
                lambda: (got := _device_ja4(second, mac)()) and len(got) >= 2 and got,
                20,
            )
        finally:
            assert second.stop() == 0, second.output()
        alerts = _new_fingerprints(second)
        assert len(alerts) == 2, alerts
        fp_b = ja4[-1]
        assert ja4 == [fp_a, fp_b] and fp_b != fp_a
        assert fp_b in alerts[1]["summary"] and fp_a not in alerts[1]["summary"]
