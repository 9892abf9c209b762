"""The live daemon when its disk lets it down: real conditions, no monkeypatching.

- A full disk: the state directory is a 256 KiB tmpfs, filled to its last page while the
  phone leaks. Detection, the journal, the metrics and the watchdog carry on; the failed writes
  are counted (``phonehome_state_write_errors_total{reason="ENOSPC"}``) and logged once, not
  per alert; the event log never holds a torn line and flows.json is always a whole snapshot
  (the previous one). Once space is freed the event log and flows.json are written again.
- A read-only state directory (a read-only bind mount) at start: the daemon starts anyway,
  says which path and why (log, STATUS), counts it, and detects and exports; when the mount
  turns writable again, so does the daemon.
- A state directory whose file system turns read-only under the running daemon (ext4 on a
  loop device, ``errors=remount-ro``, then an error): the same.
- ``kill -9`` during an alert storm, five times at random moments, restarting on the same
  state directory: the event log holds only whole records and every alert the journal saw.
  The journal is the acknowledgement: the alert stage hands an alert to the journal only after
  the event log's `send` returned, that is after the record was written and fsynced (or its
  failure counted: so the test also checks the event log reported no error).

Mounts are made in the test's mount namespace before the daemon starts: `ip netns exec`
unshares a mount namespace per exec and copies the mounts it finds (nothing propagates later,
the mounts here are private, but files, and superblock-wide changes such as ext4 turning
read-only, are shared). `pytest -s` prints the figures.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sensor.lab import SERVERS as LAB_SERVERS
from sensor.lab import Lab, sensor_config
from sensor.lab.synth import DEMO_IMEI, LEAK_BODY, REDMI_UA
from tests.lab.test_daemon import Daemon
from tests.sinks.samples import parse_native

SERVERS = ",".join(a for srv in LAB_SERVERS for a in (srv.ipv4, srv.ipv6))
"""China, Singapore and home, IPv4 and IPv6: six destinations."""
METRICS_URL = "http://127.0.0.1:14663/metrics"
STORM = (  # every leak a new alert: short windows, no rate bound in the way
    "[alerts]\nsuppress_window = 1.0\nrate_per_second = 1000.0\nrate_burst = 1000\n"
    '[journal]\nsocket_path = "{journal}"\n'
)
WRITE_ERRORS = "phonehome_state_write_errors_total"
RESULTS: dict[str, Any] = {}

# Runs in a device's namespace: POSTs the leak body to the SERVERS in turn, each with a Host of
# its own (PREFIX-N.leak.test), `count` requests at most, for `seconds` at most, at most `rate`
# a second; prints the number answered. Alerts are keyed by (device, rule, destination,
# identifier kind), the destination being the server name (the Host) or else the address, so
# every request raises new alerts (imei, contacts) instead of suppressed repeats.
LEAKER = r"""
import socket, sys, time
servers, prefix, count, seconds, rate, body, ua = sys.argv[1:8]
servers, count, seconds, rate = servers.split(","), int(count), float(seconds), float(rate)
body = body.encode()
end = time.monotonic() + seconds
done = 0
for n in range(count):
    t0 = time.monotonic()
    if t0 > end:
        break
    head = (f"POST /v2/register HTTP/1.1\r\nHost: {prefix}-{n}.leak.test\r\n"
            f"User-Agent: {ua}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        with socket.create_connection((servers[n % len(servers)], 80), timeout=5) as s:
            s.sendall(head + body)
            if s.recv(12).startswith(b"HTTP/1.1 200"):
                done += 1
            while s.recv(65536):
                pass
    except OSError:
        pass
    time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t0)))
print(done, flush=True)
"""


# --- helpers ----------------------------------------------------------------------------------


def alert_key(rec: dict[str, Any]) -> tuple[str, ...]:
    """An alert's identity, the same from an event log record and a journal entry."""
    return tuple(str(rec.get(k)) for k in ("ts", "rule", "identifier", "flow_uid", "server_name"))


class Journal:
    """A datagram socket standing in for journald's, drained by a thread (the receive queue
    holds only `net.unix.max_dgram_qlen` datagrams)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.entries: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.entries.append(parse_native(data))

    def alerts(self, **want: str) -> list[dict[str, Any]]:
        out = []
        for e in list(self.entries):
            rec = {
                k[len("PHONEHOME_") :].lower(): v
                for k, v in e.items()
                if k.startswith("PHONEHOME_")
            }
            if all(rec.get(k) == v for k, v in want.items()):
                out.append(rec)
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class DiskDaemon(Daemon):
    """`Daemon` on a state directory the test prepared (a mount point), with the journal sink
    on a test socket, that can be killed and started again on the same state."""

    def __init__(
        self, lab: Lab, tmp: Path, state: Path, extra: str = "", start: bool = True
    ) -> None:
        self.lab = lab
        self.state = state
        self.journal = Journal(tmp / "journal.sock")
        self.config = tmp / "phonehome.toml"
        storm = STORM.format(journal=self.journal.path)
        self.config.write_text(sensor_config(lab, state, storm + extra))
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        # Drained by a thread, as systemd would: the queue holds only max_dgram_qlen (10).
        self._notify_thread = threading.Thread(target=self._drain_notify, daemon=True)
        self._notify_thread.start()
        self.log = (tmp / "daemon.log").open("w+")
        self.starts = 0
        if start:
            self.start()

    def start(self) -> None:
        self.messages = []
        self.starts += 1
        self.log.write(f"--- start {self.starts}\n")
        self.log.flush()
        env = dict(os.environ)
        env.update(NOTIFY_SOCKET=str(self.notify_path), WATCHDOG_USEC="1000000")
        env.pop("WATCHDOG_PID", None)
        self.proc = self.lab.gw_popen(
            [sys.executable, "-m", "sensor", "run", "--config", str(self.config)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def _drain_notify(self) -> None:
        while True:
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self.messages.append(data.decode())

    def pump(self, seconds: float) -> None:
        time.sleep(seconds)  # the thread reads the notifications

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)  # `ip netns exec` exec'd python: this is it
        self.proc.wait(10)

    def close(self) -> int:
        """Stops the daemon (if it was started) and closes the test's sockets."""
        try:
            if getattr(self, "proc", None) is None:
                self.notify.close()
                return 0
            return self.stop()
        finally:
            self.journal.close()

    def watchdogs(self) -> int:
        return sum(m == "WATCHDOG=1" for m in self.messages)

    def statuses(self) -> list[str]:
        return [
            line[len("STATUS=") :]
            for m in self.messages
            for line in m.splitlines()
            if line.startswith("STATUS=")
        ]

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The daemon's metrics endpoint, from inside the gateway namespace."""
        out = self.lab.gw_exec(["curl", "-sf", "--max-time", "5", METRICS_URL], timeout=15)
        assert out.returncode == 0, f"the exporter did not answer: {out.stderr}"
        series = {}
        for fam in text_string_to_metric_families(out.stdout):
            for s in fam.samples:
                series[(s.name, frozenset(s.labels.items()))] = s.value
        return series

    def lines(self) -> list[bytes]:
        """The event log's lines; asserts it holds whole records only."""
        data = (self.state / "events.jsonl").read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"torn last line: {data[-200:]!r}"
        lines = data.splitlines()
        for line in lines:
            json.loads(line)
        return lines


def metric(
    series: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and want <= ls)


LEAKS = itertools.count()


def leak(lab: Lab, count: int = 6, seconds: float = 20.0, rate: float = 50.0) -> int:
    """`count` leaking POSTs from the phone, to the six addresses in turn, each to a server
    name not used before; returns how many were answered."""
    prefix = f"leak{next(LEAKS)}"
    argv = [sys.executable, "-c", LEAKER, SERVERS, prefix, str(count), str(seconds), str(rate)]
    done = lab.exec("xiaomi", [*argv, LEAK_BODY, REDMI_UA], timeout=seconds + 30)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def leaker(lab: Lab, device: str, seconds: float, rate: float) -> subprocess.Popen[str]:
    """A device leaking in a loop, in the background."""
    argv = [sys.executable, "-c", LEAKER, SERVERS, device, "1000000", str(seconds), str(rate)]
    return lab.popen(device, [*argv, LEAK_BODY, REDMI_UA], stdout=subprocess.PIPE, text=True)


def since(alerts: list[dict[str, Any]], wall: float) -> list[dict[str, Any]]:
    """Alerts (event log records or journal entries) of traffic after `wall` (Unix time)."""
    return [a for a in alerts if float(a.get("ts", 0)) > wall]


def run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{argv}: {done.stderr}"


@contextlib.contextmanager
def mounted(argv: list[str], target: Path) -> Iterator[Path]:
    """`mount ARGV... TARGET`, unmounted afterwards (lazily if still busy), also on failure."""
    run(["mount", *argv, str(target)])
    try:
        yield target
    finally:
        gone = subprocess.run(["umount", str(target)], capture_output=True)
        if gone.returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill(directory: Path) -> tuple[Path, int]:
    """A filler file taking every free page of the file system; (path, bytes written)."""
    filler = directory / "filler"
    written = 0
    with filler.open("wb", buffering=0) as fh:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    n = fh.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
                written += n or 0
                if not n or n < size:
                    break
    st = os.statvfs(directory)
    assert st.f_bavail == 0, "the file system still has free blocks"
    return filler, written


def in_log(daemon: DiskDaemon, *words: str) -> list[str]:
    return [ln for ln in daemon.output().splitlines() if all(w in ln for w in words)]


@pytest.fixture(scope="module")
def disk_lab(lab_usable: None) -> Iterator[Lab]:
    with Lab.create(quic=False) as built:
        yield built


def teardown_module() -> None:
    for name, figures in RESULTS.items():
        print(f"\n{name}: {json.dumps(figures)}")


# --- a full disk ------------------------------------------------------------------------------


def test_full_disk_is_counted_and_detection_carries_on(disk_lab: Lab, tmp_path: Path) -> None:
    lab = disk_lab
    state = tmp_path / "state"
    state.mkdir()
    with mounted(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"], state):
        d = DiskDaemon(lab, tmp_path, state)
        try:
            d.wait_notify("READY=1")
            assert leak(lab) == 6
            d.wait_for("the first alerts", lambda: d.journal.alerts(rule="identifier_abroad"), 5)
            d.wait_for("their events", lambda: d.lines(), 5)
            d.wait_for("a snapshot", lambda: json.loads((state / "flows.json").read_text()), 5)
            before = d.scrape()

            filler, filled = fill(state)
            t_full, wall_full = time.monotonic(), time.time()
            dogs = d.watchdogs()
            lines_before = len(d.lines())
            snapshots: list[float] = []
            for _ in range(4):  # new alerts (new server names) while the disk is full
                assert leak(lab, 12, rate=20.0) == 12
                snapshots.append(json.loads((state / "flows.json").read_text())["ts"])
                assert d.proc.poll() is None, d.output()

            def enospc() -> Any:
                m = d.scrape()
                ev = metric(m, WRITE_ERRORS, file="events.jsonl", reason="ENOSPC")
                fl = metric(m, WRITE_ERRORS, file="flows.json", reason="ENOSPC")
                return m if ev > 0 and fl > 0 else None

            d.wait_for("ENOSPC counted", enospc, 5)
            d.pump(max(0.0, t_full + 3.0 - time.monotonic()))
            assert d.watchdogs() >= dogs + 3, d.messages  # every 0.5-1 s, disk full or not
            new = since(d.journal.alerts(rule="identifier_abroad"), wall_full)
            during = d.scrape()  # the exporter still answers, and counted them all
            alerts = "phonehome_alerts_total"
            delivered = metric(during, alerts, rule="identifier_abroad") - metric(
                before, alerts, rule="identifier_abroad"
            )
            assert len(new) >= 8 and delivered >= len(new)
            exposures = "phonehome_identifier_exposures_total"
            assert metric(during, exposures, identifier="imei") > metric(
                before, exposures, identifier="imei"
            )
            enospc_events = metric(during, WRITE_ERRORS, file="events.jsonl", reason="ENOSPC")
            enospc_flows = metric(during, WRITE_ERRORS, file="flows.json", reason="ENOSPC")
            # Logged once a minute per kind, not per alert or per snapshot.
            eventlog_warnings = in_log(d, "event log", "ENOSPC")
            snapshot_warnings = in_log(d, "cannot write", "flows.json", "ENOSPC")
            assert 1 <= len(eventlog_warnings) <= 2 and 1 <= len(snapshot_warnings) <= 2
            assert enospc_events >= 5 and enospc_flows >= 3
            assert any("cannot write" in s and "ENOSPC" in s for s in d.statuses())
            # Whole records only: what still fitted in the log's last page, nothing torn.
            lines_full = d.lines()
            written_full = len(lines_full) - lines_before
            assert written_full + enospc_events >= len(new)
            # flows.json was a whole snapshot at every read above (the failed writes never
            # reached the rename) and no temporary file is left taking space (one exists only
            # while a write is under way).
            d.wait_for("no temporary file", lambda: not (state / ".flows.json.tmp").exists(), 2)

            filler.unlink()
            t_free, wall_free = time.monotonic(), time.time()
            snapshot = d.wait_for(  # the first snapshot made after the space came back
                "a new snapshot",
                lambda: (lambda s: s if s["ts"] > wall_free else None)(
                    json.loads((state / "flows.json").read_text())
                ),
                5,
            )
            t_snapshot = snapshot["ts"] - wall_free
            journal_free = len(d.journal.alerts())
            assert leak(lab, 12, rate=20.0) == 12
            d.wait_for(
                "alerts in the event log again",
                lambda: since([json.loads(x) for x in d.lines()], wall_free),
                5,
            )
            journal_after = d.journal.alerts()[journal_free:]
            back = {alert_key(json.loads(x)) for x in d.lines()}
            # The very first alert after the free is in the file: no retry delay.
            assert journal_after and {alert_key(a) for a in journal_after} <= back
            d.wait_for(
                "STATUS without trouble",
                lambda: d.statuses() and "cannot write" not in d.statuses()[-1],
                12,
            )
            assert in_log(d, "event log", "writing again")
            assert in_log(d, "flows.json written again")
            RESULTS["full disk"] = {
                "tmpfs": "256k",
                "filler_bytes": filled,
                "full_for_s": round(t_free - t_full, 1),
                "journal_alerts_while_full": len(new),
                "eventlog_lines_while_full": written_full,
                "eventlog_enospc_counted": enospc_events,
                "flows_json_enospc_counted": enospc_flows,
                "warnings_logged": len(eventlog_warnings) + len(snapshot_warnings),
                "distinct_snapshots_while_full": len(set(snapshots)),
                "alerts_after_free_all_in_eventlog": len(journal_after),
                "flows_json_back_s": round(t_snapshot, 2),
            }
        finally:
            rc = d.close()
        assert rc == 0, d.output()
        assert not (state / ".flows.json.tmp").exists()
        d.lines()
        json.loads((state / "flows.json").read_text())


# --- a read-only state directory ----------------------------------------------------------------


def test_read_only_state_dir_at_start_runs_and_says_so(disk_lab: Lab, tmp_path: Path) -> None:
    lab = disk_lab
    state = tmp_path / "state"
    state.mkdir()
    # The configuration (and the lab's data files under the state dir) first, then read-only.
    d = DiskDaemon(lab, tmp_path, state, start=False)
    run(["mount", "--bind", str(state), str(state)])
    try:
        run(["mount", "-o", "remount,ro,bind", str(state)])
        d.start()
        d.wait_notify("READY=1")
        ready = next(m for m in d.messages if "READY=1" in m)
        assert f"cannot write {state}: EROFS" in ready, ready
        assert in_log(d, "state directory", str(state), "not writable", "Read-only file system")
        assert leak(lab) == 6
        d.wait_for("journal alerts", lambda: d.journal.alerts(rule="identifier_abroad"), 5)

        def counted() -> Any:
            m = d.scrape()
            ok = metric(m, "phonehome_alerts_total", rule="identifier_abroad") > 0
            ev = metric(m, WRITE_ERRORS, file="events.jsonl", reason="EROFS")
            fl = metric(m, WRITE_ERRORS, file="flows.json", reason="EROFS")
            return m if ok and ev and fl else None

        got = d.wait_for("alerts and EROFS in the metrics", counted, 5)
        dogs = d.watchdogs()
        d.pump(2.5)  # pings come every 0.5-1 s (the loop wakes at least every 0.5 s)
        assert d.watchdogs() >= dogs + 2
        assert not (state / "events.jsonl").exists() and not (state / "flows.json").exists()

        # Writable again (in the daemon's own copy of the mount): it writes again by itself.
        t0 = time.monotonic()
        nsenter = ["nsenter", "-t", str(d.proc.pid), "-m"]
        run([*nsenter, "mount", "-o", "remount,rw,bind", str(state)])
        d.wait_for("flows.json", lambda: json.loads((state / "flows.json").read_text()), 5)
        t_snapshot = time.monotonic() - t0
        # The event log tries to open again at the first alert after reopen_interval (5 s).
        deadline = time.monotonic() + 10
        while not (state / "events.jsonl").exists() or not d.lines():
            assert time.monotonic() < deadline, d.output()
            assert leak(lab, 12, rate=20.0) == 12
        t_events = time.monotonic() - t0
        assert all(json.loads(x)["type"] in ("alert", "resolved") for x in d.lines())
        d.wait_for(
            "STATUS without trouble",
            lambda: d.statuses() and "cannot write" not in d.statuses()[-1],
            12,
        )
        RESULTS["read-only at start"] = {
            "eventlog_erofs_counted": metric(got, WRITE_ERRORS, file="events.jsonl"),
            "flows_json_erofs_counted": metric(got, WRITE_ERRORS, file="flows.json"),
            "flows_json_back_s": round(t_snapshot, 2),
            "eventlog_back_s": round(t_events, 2),
        }
    finally:
        rc = d.close()
        gone = subprocess.run(["umount", str(state)], capture_output=True)
        if gone.returncode != 0:
            subprocess.run(["umount", "-l", str(state)], capture_output=True)
    assert rc == 0, d.output()


def test_state_fs_turning_read_only_under_the_daemon(disk_lab: Lab, tmp_path: Path) -> None:
    """ext4 with errors=remount-ro, as on many routers' root file systems; `abort` makes it
    hit an error (what a failing SD card does)."""
    if shutil.which("mkfs.ext4") is None or not Path("/dev/loop-control").exists():
        pytest.skip("needs mkfs.ext4 and loop devices")
    lab = disk_lab
    image = tmp_path / "state.img"
    with image.open("wb") as fh:
        fh.truncate(16 << 20)
    run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image)])
    state = tmp_path / "state"
    state.mkdir()
    with mounted(["-o", "loop,errors=remount-ro", str(image)], state):
        d = DiskDaemon(lab, tmp_path, state)
        try:
            d.wait_notify("READY=1")
            assert leak(lab) == 6
            d.wait_for("an alert written", lambda: d.lines(), 5)
            d.wait_for("a snapshot", lambda: json.loads((state / "flows.json").read_text()), 5)
            run(["mount", "-o", "remount,abort", str(state)])
            wall = time.time()
            lines = d.lines()  # what the file system still holds: nothing is written later
            assert leak(lab, 12, rate=20.0) == 12
            d.wait_for("journal alerts after the error", lambda: since(d.journal.alerts(), wall), 5)

            def counted() -> Any:
                m = d.scrape()
                ev = metric(m, WRITE_ERRORS, file="events.jsonl")
                fl = metric(m, WRITE_ERRORS, file="flows.json")
                return m if ev and fl else None

            got = d.wait_for("write errors in the metrics", counted, 5)
            reasons = {dict(ls)["reason"] for (n, ls), v in got.items() if n == WRITE_ERRORS and v}
            dogs = d.watchdogs()
            d.pump(2.5)  # pings come every 0.5-1 s (the loop wakes at least every 0.5 s)
            assert d.watchdogs() >= dogs + 2 and d.proc.poll() is None
            assert any("cannot write" in s for s in d.statuses())
            assert d.lines() == lines  # nothing torn, nothing half-written
            assert (state / "flows.json").exists(), (os.listdir(state), d.output())
            json.loads((state / "flows.json").read_text())
            RESULTS["ext4 turned read-only"] = {
                "reasons": sorted(reasons),
                "journal_alerts_after": len(since(d.journal.alerts(), wall)),
                "write_errors": metric(got, WRITE_ERRORS),
            }
        finally:
            rc = d.close()
        assert rc == 0, d.output()


# --- kill -9 during an alert storm ------------------------------------------------------------

KILLS = 5
EVENTLOG_ERROR = re.compile(r"event log .*: (open|write|fsync|truncate|rotate) [A-Z]")


def more_alerts(d: DiskDaemon, than: int, timeout: float = 10.0) -> None:
    d.wait_for(f"more than {than} alerts", lambda: len(d.journal.alerts()) > than, timeout)


def test_kill_9_keeps_whole_records_and_every_acknowledged_alert(
    disk_lab: Lab, tmp_path: Path
) -> None:
    lab = disk_lab
    state = tmp_path / "state"
    state.mkdir()
    seed = int(os.environ.get("PHONEHOME_KILL_SEED", time.time()))
    rng = random.Random(seed)
    d = DiskDaemon(lab, tmp_path, state)
    storms = [leaker(lab, dev, seconds=80, rate=40) for dev in ("xiaomi", "samsung")]
    torn_seen = 0
    restarts: list[float] = []
    acked_at_kill: list[int] = []
    try:
        for _ in range(KILLS):
            d.wait_notify("READY=1")
            more_alerts(d, len(d.journal.alerts()) + 5)  # it is alerting again
            time.sleep(rng.uniform(0.2, 1.5))
            d.kill()
            acked_at_kill.append(len(d.journal.alerts()))
            data = (state / "events.jsonl").read_bytes()
            torn_seen += not data.endswith(b"\n")
            t0 = time.monotonic()
            d.start()
            d.wait_notify("READY=1")
            restarts.append(time.monotonic() - t0)
        more_alerts(d, acked_at_kill[-1] + 5)
    finally:
        for storm in storms:
            storm.terminate()
            storm.communicate(timeout=10)
        rc = d.close()
    assert rc == 0, d.output()
    assert d.starts == KILLS + 1

    records = [json.loads(x) for x in d.lines()]  # whole records only
    assert all(r["type"] in ("alert", "resolved") for r in records)
    in_file = {alert_key(r) for r in records if r["type"] == "alert"}
    acked = [alert_key(a) for a in d.journal.alerts()]
    missing = [k for k in acked if k not in in_file]
    assert not missing, missing[:5]
    assert len(acked) >= 10 * KILLS
    assert DEMO_IMEI not in (state / "events.jsonl").read_text()
    assert not [ln for ln in d.output().splitlines() if EVENTLOG_ERROR.search(ln)]
    repaired = in_log(d, "removed a torn last line")
    assert len(repaired) == torn_seen
    RESULTS["kill -9"] = {
        "seed": seed,
        "kills": KILLS,
        "acknowledged_alerts": len(acked),
        "acknowledged_at_each_kill": acked_at_kill,
        "alerts_in_file": len(in_file),
        "missing": len(missing),
        "torn_tails_repaired": torn_seen,
        "restart_to_ready_s": [round(x, 2) for x in restarts],
    }
