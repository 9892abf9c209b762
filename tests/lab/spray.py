"""One LAN host sprays plain HTTP requests, each with another valid IMEI, as fast as it can,
while the Redmi phone leaks its own: the scenario of `test_spray` (liveness) and of
`bench.learn_bench` (figures). Learning stays on, as by default; the sprayer's sampling budget is
raised so that its requests reach the detector rather than being held back by nftables."""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sensor.lab import Lab
from tests.lab.test_daemon import Daemon
from tests.lab.test_floods import ALERTS, leak_raises_alert, metric_series, rss_kb

SERVER = "203.0.113.10"
ALERT_DEADLINE = 10.0
"""Liveness: the phone's leak must alert within this many seconds while the spray runs."""

# Runs in the sprayer's namespace: `python -c SPRAY SERVER SECONDS PARALLEL`. Keeps PARALLEL
# connections to SERVER:80 going; each sends one GET with a fresh Luhn-valid IMEI in its query,
# then is aborted (RST). Prints {"sent": requests, "seconds": elapsed} as JSON.
SPRAY = r"""
import json, random, selectors, socket, struct, sys, time
server, seconds, parallel = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(1414)
LINGER0 = struct.pack("ii", 1, 0)

def imei():
    body = "35" + "".join(rnd.choice("0123456789") for _ in range(12))
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)

sel = selectors.DefaultSelector()
sent = 0
t0 = time.monotonic()
end = t0 + seconds

def open_one():
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((server, 80))
    sel.register(s, selectors.EVENT_WRITE)

for _ in range(parallel):
    open_one()
while time.monotonic() < end:
    for key, _ in sel.select(0.05):
        s = key.fileobj
        sel.unregister(s)
        try:
            s.send(f"GET /sync?imei={imei()}&v=1 HTTP/1.1\r\nHost: spray.example\r\n\r\n".encode())
            sent += 1
        except OSError:
            pass
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        s.close()
        if time.monotonic() < end:
            open_one()
for key in list(sel.get_map().values()):
    key.fileobj.close()
print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}))
"""


@dataclass(frozen=True, slots=True)
class SprayFigures:
    rate: float
    """Requests a second the sprayer reached (each with a new IMEI)."""
    sent: int
    alert_s: float
    """Seconds from the phone's leaking POST (sent mid-spray) to its alert."""
    peak_rss_mb: float
    loop_gap_s: float
    """Longest gap between the packet loop's watchdog pings during the spray (it pings every
    0.5 s when it keeps pace)."""
    learned: float
    shed: dict[str, float]
    compiles: float
    compile_s: float


class _TimedDaemon(Daemon):
    """Notes when each watchdog ping arrives: the loop's pace."""

    pings: list[float]

    def pump(self, seconds: float) -> None:
        if not hasattr(self, "pings"):
            self.pings = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                msg = self.notify.recv(4096).decode()
                self.messages.append(msg)
                if "WATCHDOG=1" in msg:
                    self.pings.append(time.monotonic())


def run_spray(
    lab: Lab, tmp: Path, seconds: float = 6.0, parallel: int = 64, learn: bool = True
) -> SprayFigures:
    """The whole scenario with its own daemon; raises AssertionError when the leak does not
    alert within `ALERT_DEADLINE`. `learn` False: the same without learning (a baseline)."""
    lab.gw_exec(["conntrack", "-F"])
    budget = "[daemon]\nhost_sample_rate = 1000000\nhost_sample_burst = 1000000\n"
    extra = ALERTS + ("" if learn else "[detect]\nlearn = false\n")
    d = _TimedDaemon(lab, tmp, extra=extra, edit=lambda t: t.replace("[daemon]\n", budget))
    try:
        d.wait_notify("READY=1")
        pid = d.proc.pid
        leak_raises_alert(d, lab)  # warm: the alert path works before the spray
        sprayer = lab.device("laptop")
        proc = lab.popen(
            sprayer,
            [sys.executable, "-c", SPRAY, SERVER, str(seconds), str(parallel)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = time.monotonic()
        d.pings = []
        peak = rss_kb(pid)
        while time.monotonic() < started + min(2.0, seconds / 2):  # the spray in full swing
            peak = max(peak, rss_kb(pid))
            d.pump(0.1)
        alert_s = leak_raises_alert(d, lab, timeout=ALERT_DEADLINE)
        while proc.poll() is None:
            assert d.proc.poll() is None, d.output()
            peak = max(peak, rss_kb(pid))
            if time.monotonic() > started + seconds + 20:
                proc.kill()
                raise AssertionError("the spray did not end")
            d.pump(0.1)
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        figures = json.loads(out)
        pings = d.pings
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        series = metric_series(lab)
        shed = {
            k.split('reason="')[1].split('"')[0]: v
            for k, v in series.items()
            if k.startswith("phonehome_identifiers_learned_shed_total{")
        }
        return SprayFigures(
            rate=figures["sent"] / max(figures["seconds"], 1e-6),
            sent=figures["sent"],
            alert_s=alert_s,
            peak_rss_mb=max(peak, rss_kb(pid)) / 1024,
            loop_gap_s=max(gaps, default=float("inf")),
            learned=series.get("phonehome_identifiers_learned_total", 0.0),
            shed=shed,
            compiles=series.get("phonehome_identifiers_learned_compiles_total", 0.0),
            compile_s=series.get("phonehome_identifiers_learned_compile_seconds_total", 0.0),
        )
    finally:
        d.stop()
