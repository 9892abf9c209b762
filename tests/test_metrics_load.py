"""The metrics endpoint under hostile and crowded scrapers: the packet loop keeps its pace.

As in the daemon, a real pipeline runs in the main thread (synthetic UDP traffic: 64 devices,
4,096 live flows, 8,192 packets a round) and the exporter serves that pipeline's state from its
own thread. The clients run in a subprocess (a GIL of their own, as on a real network):
slowloris connections that dribble a request that never ends and connections that send a whole
request and never read the answer, from one address (127.0.0.2), and a well-behaved scraper
every half second (from 127.0.0.1); or 50 threads scraping back to back. `pytest -s` prints
the figures.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
import pytest

from sensor.metrics import ACCEPT_RATE, MetricsConfig
from sensor.sources.pcap import pack_chunks
from tests.test_metrics import Wired, dropped, home_config, parse, port_of, values

ROOT = Path(__file__).resolve().parent.parent

# Runs in a subprocess: `python -c CLIENTS CONFIG_JSON` (`client_config`); prints a JSON report
# at the end (tests/lab/test_scrapers.py runs it in the lab's namespaces too).
# Single-threaded poll loop for the hostile connections (cheap: the subprocess must not eat the
# CPU the measured process needs), plus one thread for the well-behaved scrapes, or `scrapers`
# threads scraping back to back.
CLIENTS = r"""
import errno, json, select, socket, sys, threading, time

cfg = json.loads(sys.argv[1])
addr = (cfg["host"], cfg["port"])
start = time.monotonic()
end = start + cfg["seconds"]
report = {"opened": {"dribble": 0, "mute": 0}, "closed": {"dribble": 0, "mute": 0},
          "dribble_lifetimes": [], "good": [], "scrapes": {}}
AUTH = b"Authorization: %s\r\n" % cfg["authorization"].encode() if cfg["authorization"] else b""
RDHUP = getattr(select, "POLLRDHUP", 0x2000)
DEAD = RDHUP | select.POLLHUP | select.POLLERR
REQUEST = (b"GET /metrics HTTP/1.1\r\nHost: phonehome\r\n"
           + b"".join(b"X-Slow-%d: %s\r\n" % (i, b"z" * 40) for i in range(100)))
MUTE = b"GET /metrics HTTP/1.1\r\nHost: phonehome\r\nAccept-Encoding: identity\r\n\r\n"

def get(path=b"/metrics"):
    # A whole scrape: (status, seconds, bytes, seconds to connect); status 0: it failed.
    t0 = time.monotonic()
    connected = None
    try:
        with socket.create_connection(addr, timeout=10) as s:
            connected = time.monotonic() - t0
            s.sendall(b"GET " + path + b" HTTP/1.0\r\nHost: phonehome\r\n" + AUTH + b"\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
        return status, time.monotonic() - t0, len(data), connected
    except OSError:
        return 0, time.monotonic() - t0, 0, connected

def good():
    time.sleep(cfg["good_after"])
    # Until the attack ends, and at least 3 scrapes however slowly they go (a count, not a
    # pace: on a loaded machine each may take seconds).
    while time.monotonic() < end - 0.5 or len(report["good"]) < 3:
        t = time.monotonic()
        status, took, size, connected = get()
        report["good"].append(
            [round(t - start, 3), status, round(took, 3), size, connected and round(connected, 3)]
        )
        time.sleep(max(0.0, t + cfg["good_every"] - time.monotonic()))

lock = threading.Lock()

def scraper():
    counts = report["scrapes"]
    while time.monotonic() < end:
        status = get()[0]
        with lock:
            counts[status] = counts.get(status, 0) + 1

threads = [threading.Thread(target=scraper) for _ in range(cfg["scrapers"])]
if cfg["good_every"]:
    threads.append(threading.Thread(target=good))
for t in threads:
    t.start()

poll = select.poll()
conns = {}  # fd -> [socket, kind, opened, next byte due, bytes sent, connected]
due = [(start, "dribble")] * cfg["dribblers"] + [(start, "mute")] * cfg["mute"]

def open_one(kind, now):
    s = socket.socket()
    if cfg["source"]:
        s.bind((cfg["source"], 0))  # another host of the LAN, as far as the server can tell
    s.setblocking(False)
    if kind == "mute":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # never read: keep it full
    err = s.connect_ex(addr)
    if err not in (0, errno.EINPROGRESS):
        s.close()
        due.append((now + cfg["reconnect"], kind))
        return
    conns[s.fileno()] = [s, kind, now, now, 0, False]
    report["opened"][kind] += 1
    poll.register(s, select.POLLOUT | DEAD)

def close_one(fd, now, by_server):
    s, kind, opened = conns.pop(fd)[:3]
    poll.unregister(fd)
    s.close()
    if by_server:
        report["closed"][kind] += 1
        if kind == "dribble":
            report["dribble_lifetimes"].append(round(now - opened, 3))
    if now < end:
        due.append((now + cfg["reconnect"], kind))

while True:
    now = time.monotonic()
    if now >= end:
        break
    ready = [d for d in due if d[0] <= now]
    due = [d for d in due if d[0] > now]
    for _, kind in ready:
        open_one(kind, now)
    for fd, ev in poll.poll(20):
        c = conns.get(fd)
        if c is None:
            continue
        if ev & DEAD:
            close_one(fd, time.monotonic(), True)
        elif ev & select.POLLOUT and not c[5]:
            c[5] = True
            poll.modify(fd, DEAD)
            if c[1] == "mute":
                try:
                    c[0].send(MUTE)
                except OSError:
                    close_one(fd, time.monotonic(), True)
    now = time.monotonic()
    for fd, c in list(conns.items()):
        s, kind, opened, nxt, sent, connected = c
        if kind == "mute" and now - opened > cfg["mute_hold"]:
            close_one(fd, now, False)  # its answer is stuck in the server's buffers: start over
        elif kind == "dribble" and connected and nxt <= now:
            try:
                s.send(REQUEST[sent % len(REQUEST) : sent % len(REQUEST) + 1])
                c[3] = nxt + cfg["gap"]
                c[4] = sent + 1
            except OSError:
                close_one(fd, now, True)

now = time.monotonic()
report["still_open_dribble_ages"] = sorted(
    round(now - c[2], 3) for c in conns.values() if c[1] == "dribble" and c[5]
)
for t in threads:
    t.join()
print(json.dumps(report))
"""

LIVENESS = 10.0
"""Seconds a good scrape may take before the test calls it stuck (a deadline, not a goal)."""
N_DEVICES = 64
N_REMOTES = 64


def synthetic_frames() -> list[bytes]:
    """One UDP packet each way for every (device, remote) pair: Ethernet frames."""
    gw = bytes.fromhex("020000000001")
    frames = []
    for d in range(N_DEVICES):
        mac = bytes.fromhex(f"02aa000001{d:02x}")
        lan = ipaddress.ip_address(f"192.168.1.{10 + d}").packed
        for r in range(N_REMOTES):
            remote = ipaddress.ip_address(f"198.51.100.{1 + r}" if r % 2 else f"203.0.113.{1 + r}")
            for up in (True, False):
                src, dst = (lan, remote.packed) if up else (remote.packed, lan)
                ports = (40000 + r, 5000) if up else (5000, 40000 + r)
                udp = dpkt.udp.UDP(sport=ports[0], dport=ports[1], data=b"x" * 64)
                udp.ulen = 8 + 64
                ip = dpkt.ip.IP(src=src, dst=dst, p=17, ttl=64, data=udp)
                eth = gw + mac if up else mac + gw
                frames.append(eth + b"\x08\x00" + bytes(ip))
    return frames


class PacketLoop:
    """The daemon's shape: a real pipeline fed in the main thread, its exporter serving it."""

    def __init__(self, state: Path, mcfg: MetricsConfig) -> None:
        state.mkdir()
        self.wired = Wired(home_config(state), mcfg)
        self.exporter = self.wired.exporter
        self.frames = synthetic_frames()
        self.round = 0
        self.max_threads = 0
        self.max_open = 0
        """The most connections the endpoint held at once."""
        self.oldest = 0.0
        """The longest any connection was seen sending its request or reading its answer."""

    def step(self) -> int:
        """One round of packets, a second later than the last; how many."""
        t0 = 1_700_000_000.0 + self.round
        self.round += 1
        self.wired.pipeline.run(
            pack_chunks((t0 + i * 1e-5, 1, f) for i, f in enumerate(self.frames))
        )
        self.max_threads = max(self.max_threads, threading.active_count())
        server = self.exporter._server
        if server is not None:
            now = time.monotonic()
            conns = list(server._conns.values())  # copied in C: the server thread changes it
            self.max_open = max(self.max_open, len(conns))
            for c in conns:
                self.oldest = max(self.oldest, now - c.since)
        return len(self.frames)

    def rate(self, seconds: float) -> float:
        """Packets per second over `seconds`."""
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += self.step()
        return n / (time.perf_counter() - t0)

    def run_for(self, seconds: float) -> None:
        self.rate(seconds)

    def collections(self) -> tuple[int, float]:
        """Collections so far, and when."""
        return self.exporter._endpoint.counts.get("collections", 0), time.monotonic()

    def close(self) -> None:
        self.wired.close()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[PacketLoop]:
    mcfg = MetricsConfig(port=0, connection_timeout=2.0)  # max_connections 64, min_interval 0.5
    pl = PacketLoop(tmp_path / "state", mcfg)
    pl.exporter.start()
    pl.run_for(0.5)  # warm up (numpy's first import, the flow table filled)
    yield pl
    pl.close()


def client_config(**kw: Any) -> str:
    """CLIENTS' argument: who connects where, how many of each kind, how fast."""
    cfg = {
        "host": "127.0.0.1",
        "port": 0,
        "source": "127.0.0.2",  # the hostile connections' address ("": any)
        "seconds": 6.0,
        "dribblers": 0,  # connections dribbling a request that never ends, a byte per `gap`
        "gap": 0.2,
        "mute": 0,  # connections sending a whole request and never reading
        "mute_hold": 3.0,  # seconds before a mute connection starts over
        "reconnect": 0.25,  # seconds before a closed connection is opened again
        "scrapers": 0,  # threads scraping back to back
        "good_every": 0.0,  # seconds between well-behaved scrapes (0: none)
        "good_after": 1.0,
        "authorization": "",  # the well-behaved scrapes' Authorization header value
    }
    cfg.update(kw)
    return json.dumps(cfg)


def clients(loop: PacketLoop, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLIENTS, client_config(port=port_of(loop.exporter.url), **kw)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    report: dict[str, Any] = json.loads(out)
    return report


def endpoint_series(loop: PacketLoop) -> dict[str, float]:
    got = parse(loop.exporter.render())
    return {**dropped(got), "open": values(got, "phonehome_metrics_connections_open")[0]}


def test_slowloris_and_unread_answers_do_not_stall_the_packet_loop(loop: PacketLoop) -> None:
    cfg = loop.exporter.cfg
    threads_before = threading.active_count()
    before = loop.rate(2.0)
    proc = clients(loop, seconds=8.0, dribblers=150, mute=100, good_every=0.5, good_after=1.0)
    c0, t0 = loop.collections()
    loop.run_for(1.0)  # the attack ramps up
    loop.oldest = 0.0
    during = [loop.rate(2.0) for _ in range(3)]
    report = finish(proc)
    c1, t1 = loop.collections()
    peak_threads, oldest, max_open = loop.max_threads, loop.oldest, loop.max_open
    drops = endpoint_series(loop)
    loop.run_for(0.5)
    after = loop.rate(2.0)
    baseline = (before + after) / 2
    typical = sorted(during)[1]
    good = report["good"]
    print(
        f"\npacket loop: {before:,.0f} pkt/s before, during the attack "
        f"{', '.join(f'{d:,.0f}' for d in during)} (median {typical / baseline:.0%}), "
        f"{after:,.0f} after; connections opened {report['opened']}, closed by the server "
        f"{report['closed']}; server drops {drops}; {c1 - c0} collections in {t1 - t0:.1f} s; "
        f"threads {threads_before} -> peak {peak_threads}; connections open at most {max_open}, "
        f"oldest {oldest:.2f} s; "
        f"well-behaved scrapes (t, status, seconds, bytes, seconds to connect) {good}"
    )
    # The packet loop keeps running through the attack (its pace is a figure, printed above
    # and in `make bench`, not asserted: shared machines are noisy).
    assert all(d > 0 for d in during), during
    # Every well-behaved scrape succeeds (milliseconds mostly; seconds when it queues behind a
    # burst of connections with a whole request each). The deadline is for liveness only.
    assert len(good) >= 3
    assert all(status == 200 for _, status, _, _, _ in good), good  # each within its timeout
    # Bounded: threads (the endpoint's one, from before), connections, collections.
    assert peak_threads == threads_before
    assert max_open <= cfg.max_connections
    assert c1 - c0 <= (t1 - t0) / cfg.min_interval + 1
    # The attack was real: hundreds of connections, both kinds, closed by the server (how
    # long the oldest one lived is printed above; it depends on the machine's load).
    assert report["opened"]["dribble"] >= 150 and report["opened"]["mute"] >= 100
    assert report["closed"]["dribble"] >= 150
    assert drops["evicted"] + drops["timeout"] >= 200


def test_slow_connections_fewer_than_the_limit_are_cut_off_at_the_timeout(
    loop: PacketLoop,
) -> None:
    # No newcomers to push them out: only the timeout closes these.
    cfg = loop.exporter.cfg
    proc = clients(loop, seconds=4.5, dribblers=10, reconnect=10.0)
    loop.run_for(0.5)
    held = endpoint_series(loop)["open"]
    loop.run_for(4.5)
    report = finish(proc)
    lifetimes = report["dribble_lifetimes"]
    print(f"\n10 dribblers: {held:.0f} connections held; closed after {lifetimes} s")
    assert held == 10
    assert report["still_open_dribble_ages"] == []
    assert len(lifetimes) == 10
    timeout = cfg.connection_timeout
    # Never before the timeout; all of them by the end (still_open above), however late the
    # busy endpoint's thread gets round to it.
    assert all(timeout - 0.1 <= t for t in lifetimes), lifetimes
    assert endpoint_series(loop)["timeout"] == 10


def test_fifty_scrapers_share_collections(loop: PacketLoop) -> None:
    cfg = loop.exporter.cfg
    threads_before = threading.active_count()
    before = loop.rate(2.0)
    proc = clients(loop, seconds=5.5, scrapers=50)
    c0, t0 = loop.collections()
    loop.run_for(0.5)
    during = [loop.rate(1.5) for _ in range(3)]
    report = finish(proc)
    c1, t1 = loop.collections()
    collections = c1 - c0
    loop.run_for(0.5)
    after = loop.rate(2.0)
    baseline = (before + after) / 2
    typical = sorted(during)[1]
    scrapes = report["scrapes"]
    answered = scrapes.get("200", 0)
    drops = endpoint_series(loop)
    print(
        f"\n50 scrapers: {answered} scrapes answered, {collections} collections in "
        f"{t1 - t0:.1f} s; statuses {scrapes}; server drops {drops}; packet loop {before:,.0f} "
        f"before, {', '.join(f'{d:,.0f}' for d in during)} during (median "
        f"{typical / baseline:.0%}), {after:,.0f} after; threads peak {loop.max_threads} "
        f"(from {threads_before})"
    )
    assert scrapes == {"200": answered}  # every one answered (50 < max_connections)
    assert answered >= 10 * max(1, collections)  # shared: many answers per collection
    # New connections: ACCEPT_RATE a second at most, plus the backlog (up to 64) and the one
    # connection each scraper may still have queued in the kernel when the clients stop.
    assert answered <= ACCEPT_RATE * 5.5 + 64 + 50
    assert collections <= (t1 - t0) / cfg.min_interval + 1  # shared: about 2 a second
    assert loop.max_threads == threads_before
    assert all(d > 0 for d in during), during  # the loop kept running; its pace is printed
