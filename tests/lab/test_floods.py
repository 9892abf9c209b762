"""The live daemon under hostile LAN traffic: bounded floods from a device namespace.

Each flood runs a few seconds at most (count and time bounded) from the laptop's namespace with
raw sockets, towards the lab's documentation-range servers or the gateway. During and after
each one the daemon must stay up, keep its RSS under 256 MB, and still raise identifier_abroad
for the Redmi phone's leaking POST within a few seconds. `pytest -s` prints the rates reached
and the peak RSS per flood.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor.lab import GW_LAN4, GW_MAC, Lab, post_leak
from tests.lab.test_daemon import Daemon

RSS_LIMIT_KB = 256 * 1024
FLOOD_SECONDS = 3.0
ALERT_TIMEOUT = 10.0
STARTUP_TIMEOUT = 60.0
"""Liveness bound for the daemon's start: loading its data took over 15 s at load 8."""
SERVER = "203.0.113.10"

# Runs inside the flooding device's namespace: `python -c FLOOD MODE COUNT SECONDS`. Prints
# {"sent": packets, "seconds": elapsed} as JSON. Send errors (ENOBUFS, refused) are skipped.
FLOOD = r"""
import json, os, random, select, socket, struct, sys, time

mode, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
src_ip, server, gw_ip, gw_mac = sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
rnd = random.Random(4242)
end = time.monotonic() + seconds
t0 = time.monotonic()
sent = 0

def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

def ipv4(src, dst, proto, payload, ident=0, frag=0):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload

def udp(src, dst, sport, dport, payload):
    length = 8 + len(payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, length)
    h = struct.pack("!HHHH", sport, dport, length, 0)
    c = csum(pseudo + h + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, c) + payload

def send_loop(send):
    global sent
    while sent < count and time.monotonic() < end:
        try:
            send()
        except OSError:
            pass
        sent += 1

def dribble(port, first, piece):
    # `count` connections that send `first`, then a `piece()` each 50 ms until the end.
    global sent
    conns = []
    for _ in range(count):
        if time.monotonic() >= end:
            break
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex((server, port))
        conns.append(c)
    time.sleep(0.2)
    for c in conns:
        try:
            c.send(first)
        except OSError:
            pass
    while time.monotonic() < end:
        for c in conns:
            try:
                c.send(piece())
                sent += 1
            except OSError:
                pass
        time.sleep(0.05)
    for c in conns:
        c.close()
    print(json.dumps({"sent": sent, "connections": len(conns),
                      "seconds": time.monotonic() - t0}))
    sys.exit(0)

if mode == "syn":
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    pseudo = socket.inet_aton(src_ip) + socket.inet_aton(server) + struct.pack("!BBH", 0, 6, 20)
    def send():
        sport = rnd.randrange(1024, 65536)
        h = struct.pack("!HHIIBBHHH", sport, 80, rnd.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
        h = h[:16] + struct.pack("!H", csum(pseudo + h)) + h[18:]
        s.sendto(h, (server, 0))
    send_loop(send)
elif mode == "macs":
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    dst = bytes.fromhex(gw_mac.replace(":", ""))
    def send():
        mac = bytearray(rnd.getrandbits(48).to_bytes(6, "big"))
        mac[0] = (mac[0] & 0xFC) | 0x02  # unicast, locally administered
        src = "192.168.77.%d" % rnd.randrange(100, 250)
        body = udp(src, gw_ip, rnd.randrange(1024, 65536), 9999, b"x" * 32)
        s.send(dst + bytes(mac) + b"\x08\x00" + ipv4(src, gw_ip, 17, body, rnd.getrandbits(16)))
    send_loop(send)
elif mode == "quic":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    def send():
        dcid, scid = os.urandom(rnd.randrange(0, 21)), os.urandom(rnd.randrange(0, 21))
        rest = os.urandom(1200 - 7 - len(dcid) - len(scid) - 3)
        head = bytes([0xC0 | rnd.randrange(4)]) + b"\x00\x00\x00\x01"
        head += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + b"\x00"
        length = 0x4000 | min(len(rest), 0x3FFF) if rnd.random() < 0.5 else 0x7FFF
        s.sendto(head + struct.pack("!H", length) + rest, (server, 443))
    send_loop(send)
elif mode == "fragments":
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    def send():
        first = rnd.random() < 0.3
        off = 0 if first else rnd.randrange(1, 8000)
        flags = 0x2000 if rnd.random() < 0.9 else 0
        payload = udp(src_ip, server, rnd.randrange(1024, 65536), 80, os.urandom(64))[: 8 * 9]
        s.sendto(ipv4(src_ip, server, 17, payload, rnd.getrandbits(16), flags | off), (server, 0))
    send_loop(send)
elif mode == "dns":
    # Forged DNS answers, each naming 60 random hosts (thousands of names a second), from the
    # device's port 53 to a WAN address: every one passes the "all DNS" sampling rule.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src_ip, 53))
    def name():
        labels = [os.urandom(rnd.randrange(3, 9)).hex() for _ in range(3)]
        return b"".join(bytes([len(x)]) + x.encode() for x in labels) + b"\0"
    def send():
        q = name()
        answers = b"".join(
            name() + struct.pack("!HHIH4s", 1, 1, 300, 4, os.urandom(4)) for _ in range(60)
        )
        head = struct.pack("!HHHHHH", rnd.getrandbits(16), 0x8180, 1, 60, 0, 0)
        s.sendto(head + q + b"\0\1\0\1" + answers, (server, rnd.randrange(1024, 65536)))
    send_loop(send)
elif mode == "hellos":
    # Endless partial TLS ClientHellos: each connection announces a 16 KB handshake record
    # and then dribbles a few bytes at a time, never finishing it.
    dribble(443, b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc\x03\x03" + os.urandom(32),
            lambda: os.urandom(rnd.randrange(1, 64)))
elif mode == "headers":
    dribble(80, b"POST /upload HTTP/1.1\r\nHost: api.example.com\r\n",
            lambda: b"X-Pad-%d: %s\r\n" % (rnd.randrange(10**6), b"a" * rnd.randrange(1, 200)))
print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}))
"""

# mode: (count bound, unit). 60,000 random MACs also passed, but with little margin (peak RSS
# 227-230 MB, alert after 3.2-3.3 s on the 2-core machine): 40,000 keeps this test reliable.
FLOODS: dict[str, tuple[int, str]] = {
    "syn": (60_000, "SYN/s"),
    "macs": (40_000, "frames/s"),
    "dns": (20_000, "answers/s (60 names each)"),
    "headers": (300, "header lines/s"),
    "hellos": (300, "ClientHello pieces/s"),
    "quic": (30_000, "datagrams/s"),
    "fragments": (60_000, "fragments/s"),
}
RESULTS: dict[str, dict[str, Any]] = {}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def flood_lab(lab_usable: None) -> Iterator[Lab]:
    with Lab.create(quic=False) as built:
        yield built


SYN_BUDGET = (1000, 1000)
"""The SYN flood's host sampling budget (rate a second, burst). The default (5,000/s, burst
20,000) is more than a loaded 2-core machine floods: at 4,000 SYNs/s for 3 s (about 36,000
packets chosen with the SYN-ACKs and RSTs) it let nearly every one through, and the test
could not tell a budget that held from one never reached. The slowest flooder seen here
(3,500 SYNs/s) sends ten times what this budget lets through."""


@pytest.fixture
def daemon(flood_lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A fresh daemon per flood, on a gateway without the last flood's conntrack entries: each
    flood's memory and lag are its own."""
    flood_lab.gw_exec(["conntrack", "-F"])
    edit = None
    if request.node.callspec.params.get("mode") == "syn":
        rate, burst = SYN_BUDGET
        budget = f"[daemon]\nhost_sample_rate = {rate}\nhost_sample_burst = {burst}\n"
        edit = lambda text: text.replace("[daemon]\n", budget)  # noqa: E731
    d = Daemon(flood_lab, tmp_path, extra=ALERTS, edit=edit)
    try:
        d.wait_notify("READY=1", timeout=STARTUP_TIMEOUT)
        yield d
    finally:
        d.stop()


def teardown_module() -> None:
    if RESULTS:
        print(
            "\nflood      rate achieved          RSS before  peak RSS  caught up  alert after  "
            "series"
        )
        for mode, r in RESULTS.items():
            print(
                f"{mode:<10} {r['rate']:>10.0f} {FLOODS[mode][1]:<18} "
                f"{r['rss_before_mb']:>7.1f} MB {r['peak_rss_mb']:>7.1f} MB  "
                + (f"{r['drain_s']:>7.1f} s  " if "drain_s" in r else "        -  ")
                + (f"{r['alert_s']:.2f} s" if r["alert_s"] < 1e9 else f"> {ALERT_TIMEOUT:.0f} s")
                + f"  {r.get('series', '-')}, over budget {r.get('over_budget', '-')}"
            )


ALERTS = "[alerts]\nsuppress_window = 1.0\n"
SUPPRESS = 1.0
"""Repeats of an alert within this many seconds are counted, not delivered."""


def leak_raises_alert(daemon: Daemon, lab: Lab, timeout: float = ALERT_TIMEOUT) -> float:
    """Seconds from the leaking POST until its identifier_abroad event."""
    t0, wall = time.monotonic(), time.time()
    r = post_leak(lab)
    assert r.status == 200
    try:
        _wait_alert(daemon, wall, timeout)
    except AssertionError:
        raise AssertionError(f"no alert for the leak:\n{_why(daemon, lab, wall)}") from None
    return time.monotonic() - t0


def _why(daemon: Daemon, lab: Lab, wall: float) -> str:
    """What a missing alert leaves to look at: the events (relative to the POST), the
    daemon's live counters (flows.json may be 5 s old), the phone's conntrack entries and the
    daemon's log."""
    events = [
        (e.get("type"), e.get("rule"), e.get("identifier"), round(e["ts"] - wall, 3))
        for e in daemon.events()
    ]
    try:
        counters = "\n".join(
            f"{k} {v:g}"
            for k, v in metric_series(lab).items()
            if v
            and k.startswith("phonehome_")
            and not k.startswith(("phonehome_scrape_", "phonehome_metrics_", "phonehome_data_"))
            and "_bucket" not in k
        )
    except (OSError, subprocess.SubprocessError) as e:
        counters = f"(scrape failed: {e})"
    phone = lab.device("xiaomi").ipv4
    conntrack = lab.gw_exec(["conntrack", "-L", "-s", phone]).stdout
    log = daemon.output()[-3000:]
    return f"events: {events}\ncounters:\n{counters}\nconntrack:\n{conntrack}\nlog:\n{log}"


def _wait_alert(daemon: Daemon, wall: float, timeout: float) -> None:
    daemon.wait_for(
        "identifier_abroad",
        lambda: [
            e
            for e in daemon.events()
            # A firing alert for this POST: not the "resolved" line of an earlier one, and
            # stamped with this POST's packets (the lab's clocks are one clock).
            if e.get("type") == "alert"
            and e.get("rule") == "identifier_abroad"
            and e.get("identifier") == "imei"
            and e["ts"] >= wall - 0.01
        ],
        timeout=timeout,
    )


MAX_SERIES = 3000
"""Metric series after any flood: the exporter bounds its label sets (top-k per device)."""


def metric_series(lab: Lab) -> dict[str, float]:
    """The daemon's /metrics (the default 127.0.0.1:14663 in the gateway namespace), as
    series text → value."""
    fetch = "import urllib.request as u; print(u.urlopen(sys.argv[1], timeout=10).read().decode())"
    out = lab.gw_exec(
        [sys.executable, "-c", "import sys; " + fetch, "http://127.0.0.1:14663/metrics"],
        check=True,
    ).stdout
    series = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


DRAIN_TIMEOUT = 120.0
"""Liveness bound for the daemon to work off a flood's backlog: what its NFLOG and conntrack
sockets hold (8 MB each at most). 3 s here when the machine is quiet, 15-30 s at load 8."""


def caught_up(lab: Lab) -> bool:
    """Whether the daemon has taken in everything the kernel queued for it: nothing waits in
    its NFLOG socket, the kernel's NFLOG batch or its conntrack event socket, and every packet
    it read went through the pipeline."""
    m = metric_series(lab)

    def gauges(prefix: str) -> list[float]:
        return [v for k, v in m.items() if k.startswith(prefix)]

    backlogs = gauges("phonehome_capture_backlog_bytes{")
    waiting = gauges("phonehome_conntrack_backlog_bytes") + gauges("phonehome_capture_queue_length")
    read = m.get("phonehome_packets_read_total")
    delivered = sum(gauges("phonehome_capture_delivered_packets_total"))
    received = sum(gauges("phonehome_capture_received_packets_total"))
    return bool(backlogs) and not any(backlogs + waiting) and read == delivered == received


def wait_caught_up(daemon: Daemon, lab: Lab, watch: Callable[[], object]) -> float:
    """Seconds until the daemon has worked off a flood's backlog (`caught_up` twice in a row,
    a second apart); `watch()` at each look. A leak posted behind a backlog waits for all of
    it: how long that takes on a loaded machine is a figure, not something the 10 s alert
    deadline should include."""
    t0 = time.monotonic()
    streak = [False]

    def done() -> bool:
        watch()
        ok = caught_up(lab)
        was, streak[0] = streak[0], ok
        if not (ok and was):
            daemon.pump(1.0)
        return ok and was

    daemon.wait_for("the flood's backlog worked off", done, timeout=DRAIN_TIMEOUT)
    return time.monotonic() - t0


@pytest.mark.parametrize("mode", list(FLOODS))
def test_flood(mode: str, daemon: Daemon, flood_lab: Lab) -> None:
    lab = flood_lab
    pid = daemon.proc.pid
    assert b"sensor" in Path(f"/proc/{pid}/cmdline").read_bytes()  # `ip netns exec` execs it
    leak_raises_alert(daemon, lab)  # the pipeline is warm, the alert path works
    warm = time.monotonic()
    rss_before = rss_kb(pid)
    dev = lab.device("laptop")
    count, _unit = FLOODS[mode]
    argv = [sys.executable, "-c", FLOOD, mode, str(count), str(FLOOD_SECONDS)]
    argv += [dev.ipv4, SERVER, GW_LAN4, GW_MAC]
    proc = lab.popen(dev, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = rss_kb(pid)
    deadline = time.monotonic() + FLOOD_SECONDS + 10
    while proc.poll() is None:
        assert daemon.proc.poll() is None, daemon.output()
        peak = max(peak, rss_kb(pid))
        assert peak < RSS_LIMIT_KB
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{mode} flood did not end")
        daemon.pump(0.1)  # also drains the notify socket, as systemd would
    out, err = proc.communicate()
    flood_end = time.monotonic()
    assert proc.returncode == 0, err
    figures = json.loads(out)
    assert figures["sent"] > 0, figures
    result = RESULTS[mode] = {
        "rate": figures["sent"] / max(figures["seconds"], 1e-6),
        "sent": figures["sent"],
        "peak_rss_mb": peak / 1024,
        "rss_before_mb": rss_before / 1024,
        "alert_s": float("inf"),
    }
    print(f"\n{mode}: {figures}, peak RSS {peak / 1024:.1f} MB")
    # A flood shorter than the suppression window would make the next leak a repeat.
    daemon.pump(max(0.0, warm + SUPPRESS + 0.1 - time.monotonic()))

    def watch() -> None:
        nonlocal peak
        peak = max(peak, rss_kb(pid))

    result["drain_s"] = wait_caught_up(daemon, lab, watch)
    result["alert_s"] = leak_raises_alert(daemon, lab)
    assert daemon.proc.poll() is None, daemon.output()
    peak = max(peak, rss_kb(pid))
    result["peak_rss_mb"] = peak / 1024
    assert peak < RSS_LIMIT_KB
    # The over-budget counter is read from the kernel at most once a second: a reading from
    # after the flood.
    daemon.pump(max(0.0, flood_end + 1.1 - time.monotonic()))
    series = metric_series(lab)
    result["series"] = len(series)
    result["over_budget"] = sum(
        v for k, v in series.items() if "phonehome_capture_errors" in k and "over_budget" in k
    )
    assert len(series) < MAX_SERIES
    if mode == "syn":  # the flooding host's budget held its SYNs (and the RSTs) back
        assert result["over_budget"] > figures["sent"] / 2, SYN_BUDGET
    print(f"{mode}: alert after {result['alert_s']:.2f} s, {len(series)} series, {result}")


MEMORY_FLOOD_SYNS = 30_000
"""The memory-bound test's flood, bounded by count (its 30 s is a liveness bound): a loaded
machine sends it more slowly, a quiet one no bigger, so the memory it costs the daemon is the
same on both."""


def test_memory_bound_sheds_flows_and_keeps_alerting(flood_lab: Lab, tmp_path: Path) -> None:
    """A low memory bound and a budget big enough to let a SYN flood through: the daemon ends
    its oldest flows to stay under the bound, says so, and still catches the leak."""
    lab = flood_lab
    lab.gw_exec(["conntrack", "-F"])
    limit_mb = 128
    settings = (
        f"[daemon]\nmemory_limit_mb = {limit_mb}\n"
        "host_sample_rate = 1000000\nhost_sample_burst = 1000000\n"
    )
    d = Daemon(lab, tmp_path, extra=ALERTS, edit=lambda text: text.replace("[daemon]\n", settings))
    try:
        d.wait_notify("READY=1", timeout=STARTUP_TIMEOUT)
        pid = d.proc.pid
        leak_raises_alert(d, lab)
        before = rss_kb(pid)
        dev = lab.device("laptop")
        argv = [sys.executable, "-c", FLOOD, "syn", str(MEMORY_FLOOD_SYNS), "30"]
        argv += [dev.ipv4, SERVER, GW_LAN4]
        proc = lab.popen(dev, [*argv, GW_MAC], stdout=subprocess.PIPE, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, rss_kb(pid))
            d.pump(0.05)
        figures = json.loads(proc.communicate()[0])
        # The flood's backlog (NFLOG batches, conntrack events) can take the loop longer than
        # the flood on a loaded machine (15-30 s after a 6 s flood here): post the leak once the
        # daemon says its sockets are empty, not after a fixed pause nor when its counts stop
        # moving for a second (one batch of a backlog took longer than that at load 8, and
        # the leak then waited behind the rest of it past its deadline, seen only through
        # conntrack's dump). Not "events == SYNs sent" either: the flooder counts sends that
        # failed, and netlink may drop events, counted as lost.

        def watch() -> None:
            nonlocal peak
            peak = max(peak, rss_kb(pid))

        drain_s = wait_caught_up(d, lab, watch)
        assert metric_series(lab).get("phonehome_conntrack_events_total", 0.0) > 0
        peak = max(peak, rss_kb(pid))
        alert_s = leak_raises_alert(d, lab)
        memory = d.snapshot()["stats"]["memory"]
        print(
            f"\nmemory bound {limit_mb} MB: RSS before {before / 1024:.1f} MB, peak "
            f"{peak / 1024:.1f} MB, {memory}, flood {figures}, backlog drained in "
            f"{drain_s:.1f} s, alert after {alert_s:.2f} s"
        )
        assert memory["sheds"] >= 1 and memory["flows_shed"] > 0, memory
        assert memory["flow_cap"] < 200_000
        assert peak < limit_mb * 1024, peak
        assert "memory:" in d.output() and "oldest flows" in d.output()
    finally:
        d.stop()
