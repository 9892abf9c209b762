"""The JSON Lines event log: fields, mode, rotation, fsync, crash safety, errors, resolve
records, and its place first among the sinks.

No sink output may hold an identifier in full: every test alert carries the redacted tail of
FULL_IMEI, and the outputs are checked for the whole value."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.alerts import AlertsConfig, AlertStage
from sensor.model import Alert, Observation
from sensor.sinks import (
    Coverage,
    EventLog,
    EventLogConfig,
    JournalConfig,
    alertmanager_alert,
    make_sinks,
)
from tests.sinks.samples import (
    DST,
    FULL_IMEI,
    HASH,
    REDACTED,
    REPO,
    SG_CLOUD,
    TV,
    make_alert,
    read_lines,
)

EVENT_FIELDS = {
    "type",
    "rule",
    "severity",
    "device_mac",
    "identifier",
    "encoding",
    "location",
    "dst_ip",
    "dst_port",
    "server_name",
    "vendor",
    "country",
    "region",
    "value",
    "ts",
    "device_name",
    "device_vendor",
    "device_kind",
    "keyed_hash",
    "summary",
}


def test_eventlog_fields_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "events.jsonl"
    log = EventLog(path)
    log.send(make_alert())
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (rec,) = read_lines(path)
    assert set(rec) >= EVENT_FIELDS
    assert rec["type"] == "alert" and rec["rule"] == "identifier_abroad"
    assert rec["severity"] == "critical" and rec["device_mac"] == TV.mac
    assert (rec["device_name"], rec["device_vendor"], rec["device_kind"]) == (
        "Living-room TV",
        "TVMaker",
        "tv",
    )
    assert (rec["identifier"], rec["encoding"], rec["location"]) == ("imei", "plain", "url")
    assert (rec["dst_ip"], rec["dst_port"], rec["server_name"]) == (
        "203.0.113.7",
        80,
        DST.server_name,
    )
    assert (rec["vendor"], rec["country"], rec["region"]) == ("ExampleCorp", "CN", "CN-BJ")
    assert rec["value"] == REDACTED and rec["keyed_hash"] == HASH
    assert rec["ts"] == 1_700_000_000.0
    assert FULL_IMEI not in path.read_text()
    assert log.stats()["written"] == 1


def test_eventlog_tightens_existing_mode_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"type":"alert","rule":"old"}\n')
    path.chmod(0o644)
    log = EventLog(path)
    log.send(make_alert())
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [r["rule"] for r in read_lines(path)] == ["old", "identifier_abroad"]


def test_eventlog_from_config_uses_state_dir(tmp_path: Path) -> None:
    log = EventLog.from_config(EventLogConfig(), tmp_path)
    assert log.path == tmp_path / "events.jsonl"
    log.close()
    other = tmp_path / "elsewhere.jsonl"
    log = EventLog.from_config(EventLogConfig(path=str(other), keep=2), tmp_path)
    assert log.path == other and log.keep == 2
    log.close()


def test_eventlog_rotation_keeps_n_files(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=4096, keep=2)
    for i in range(60):
        log.send(make_alert(ts=1_700_000_000.0 + i))
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert log.stats()["rotations"] >= 3
    chunks = [
        read_lines(tmp_path / n) for n in ("events.jsonl.2", "events.jsonl.1", "events.jsonl")
    ]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 4096
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    ts = [r["ts"] for chunk in chunks for r in chunk]
    assert ts == sorted(ts) and ts[-1] == 1_700_000_059.0  # newest last, nothing reordered


def test_eventlog_fsyncs_every_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append(fd)
        real(fd)

    log = EventLog(tmp_path / "events.jsonl")
    monkeypatch.setattr("sensor.sinks.eventlog.os.fsync", spy)
    for _ in range(3):
        log.send(make_alert())
    assert len(calls) == 3
    log.close()
    quiet = EventLog(tmp_path / "quiet.jsonl", fsync=False)
    calls.clear()
    quiet.send(make_alert())
    assert calls == []
    quiet.close()


def test_eventlog_truncates_torn_tail_on_open(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    whole = b'{"type":"alert","n":1}\n{"type":"alert","n":2}\n'
    path.write_bytes(whole + b'{"type":"alert","n":3,"summ')
    log = EventLog(path)
    assert path.read_bytes() == whole
    assert log.stats()["truncated_bytes"] == len(b'{"type":"alert","n":3,"summ')
    log.send(make_alert())
    log.close()
    assert [r.get("n") for r in read_lines(path)] == [1, 2, None]
    # a file that is nothing but a torn line
    path.write_bytes(b'{"type":"al')
    EventLog(path).close()
    assert path.read_bytes() == b""


def test_eventlog_short_write_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.send(make_alert())
    real = os.write

    def short(fd: int, data: bytes) -> int:
        return real(fd, data[: len(data) // 2])

    monkeypatch.setattr("sensor.sinks.eventlog.os.write", short)
    log.send(make_alert())
    monkeypatch.setattr("sensor.sinks.eventlog.os.write", real)
    log.send(make_alert())
    log.close()
    assert len(read_lines(path)) == 2
    s = log.stats()
    assert s["written"] == 2 and s["errors_ENOSPC"] == 1


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` (root only), unmounted afterwards, also on failure."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_up(directory: Path) -> Path:
    """A file taking every free page of `directory`'s file system."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as fh:
        for size in (16384, 4096, 1):
            with contextlib.suppress(OSError):
                while fh.write(b"\0" * size) == size:
                    pass
    assert os.statvfs(directory).f_bavail == 0
    return filler


def test_eventlog_full_disk_counted_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real full disk: a 64 KiB tmpfs filled to its last page. Records still fit in the
    log's last page until it is full; the one that straddles into a page that cannot be had
    comes back as a short write and is taken out again; the rest fail with ENOSPC. Counted,
    logged once, never raised, never half a record; with space freed the next one goes in."""
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        path = disk / "events.jsonl"
        log = EventLog(path)
        log.send(make_alert(ts=1_700_000_000.0))
        filler = fill_up(disk)
        for i in range(1, 51):
            log.send(make_alert(ts=1_700_000_000.0 + i))
        s = log.stats()
        assert s["written"] + s["errors_ENOSPC"] == 51 and s["errors_ENOSPC"] >= 40
        assert s["errors"] == s["errors_ENOSPC"] and log.failing == "ENOSPC"
        records = read_lines(path)  # whole lines only: the straddling record was rolled back
        assert len(records) == s["written"] and path.stat().st_size == s["bytes"]
        assert [r["ts"] for r in records] == [1_700_000_000.0 + i for i in range(len(records))]
        # logged, but not 50 times
        assert 1 <= sum("ENOSPC" in r.getMessage() for r in caplog.records) <= 2
        filler.unlink()
        log.send(make_alert(ts=1_700_000_100.0))
        assert log.stats()["written"] == s["written"] + 1 and log.failing is None
        assert read_lines(path)[-1]["ts"] == 1_700_000_100.0
        assert FULL_IMEI not in path.read_text()
        log.close()


def test_eventlog_unwritable_directory_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    log = EventLog(blocker / "state" / "events.jsonl", reopen_interval=3600)
    log.send(make_alert())
    log.send(make_alert())
    s = log.stats()
    assert s["written"] == 0 and s["errors"] == 3  # the failed open, then two skipped records
    log.close()


def test_eventlog_resolved_record(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.resolve(make_alert(), 1_700_003_600.0, 7)
    log.close()
    (rec,) = read_lines(path)
    assert rec["type"] == "resolved" and rec["repeats"] == 7
    assert rec["alert_ts"] == 1_700_000_000.0 and rec["ts"] == 1_700_003_600.0
    assert rec["rule"] == "identifier_abroad" and rec["keyed_hash"] == HASH
    assert "encodings" not in rec  # no coverage given: the old record, unchanged


def test_eventlog_resolved_record_says_what_repeats_covered(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    cov = Coverage(("plain", "base64"), ("t.example.cn", "203.0.113.8"), 3)
    log.resolve(make_alert(), 1_700_003_600.0, 7, cov)
    log.close()
    (rec,) = read_lines(path)
    assert rec["encodings"] == ["plain", "base64"]
    assert rec["servers"] == ["t.example.cn", "203.0.113.8"]
    assert rec["covered_left_out"] == 3 and rec["country"] == "CN"


def test_alertmanager_labels_carry_the_cloud_region() -> None:
    """Two regions of one cloud are two alerts in the stage; Alertmanager must see two."""
    sg = SG_CLOUD
    a = alertmanager_alert(dataclasses.replace(make_alert(), dst=sg), 3600.0)
    b = alertmanager_alert(
        dataclasses.replace(make_alert(), dst=dataclasses.replace(sg, region="ap-southeast-3")),
        3600.0,
    )
    assert a["labels"]["dst_region"] == "ap-southeast-1" and a["labels"] != b["labels"]
    assert "dst_region" not in alertmanager_alert(make_alert(), 3600.0)["labels"]  # no cloud


CRASH_WRITER = textwrap.dedent(
    """
    import sys, time
    from sensor.model import Alert, DeviceRef, Destination
    from sensor.sinks import EventLog

    log = EventLog(sys.argv[1], max_bytes=1 << 30)
    dev = DeviceRef(mac="aa:bb:cc:dd:ee:01", ip="192.168.1.20", name="TV")
    dst = Destination(ip="203.0.113.7", port=80, server_name="t.example.cn", country="CN")
    deadline = time.monotonic() + 60
    for i in range(200_000):
        if time.monotonic() > deadline:
            break
        alert = Alert(
            rule="identifier_abroad", severity="critical", ts=1.7e9 + i, device=dev, dst=dst,
            summary="alert %d %s" % (i, "x" * (i * 37 % 3000)), identifier="imei",
            value="\u20263809", keyed_hash="9f2c4e1a0b7d3c55", flow_uid="F%d" % i,
        )
        before = log.written
        log.send(alert)
        if log.written > before:
            print(i, flush=True)
    """
)


def test_eventlog_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    reported: set[int] = set()
    try:
        for line in proc.stdout:
            reported.add(int(line))
            if len(reported) >= 300:
                os.kill(proc.pid, signal.SIGKILL)  # mid-stream: it is still writing
                break
        reported.update(int(line) for line in proc.stdout)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) >= 300

    data = path.read_bytes()
    *whole, tail = data.split(b"\n")
    written = [json.loads(line) for line in whole]  # every complete line is a whole record
    uids = {int(r["flow_uid"][1:]) for r in written}
    assert reported <= uids  # every alert reported as written is there
    assert sorted(uids) == list(range(len(uids)))  # in order, none lost in between
    if tail:  # a torn last record can only be one that was never reported
        assert max(reported) < len(uids)
    assert FULL_IMEI not in data.decode()
    EventLog(path).close()  # reopening repairs a torn tail, if the kernel left one
    assert path.read_bytes() == b"".join(line + b"\n" for line in whole)


def test_sinks_after_the_event_log_only_see_alerts_already_in_it(tmp_path: Path) -> None:
    """The order the lab's kill -9 test relies on: an alert a later sink (journal,
    Alertmanager, metrics) has seen is already written and fsynced in the event log."""
    seen: list[tuple[float, list[float]]] = []

    class Probe:
        name = "probe"

        def send(self, alert: Alert) -> None:
            seen.append((alert.ts, [r["ts"] for r in read_lines(tmp_path / "events.jsonl")]))

        def close(self) -> None:
            pass

    out = make_sinks(tmp_path, EventLogConfig(), JournalConfig(enabled=False))
    assert isinstance(out[0], EventLog)
    stage = AlertStage(AlertsConfig(), [*out, Probe()])
    for i, kind in enumerate(("imei", "email", "phone")):
        obs = Observation(
            what="identifier",
            ts=1_700_000_000.0 + i,
            device=TV,
            dst=DST,
            identifier=kind,
            encoding="plain",
            location="body",
            value=REDACTED,
            keyed_hash=HASH,
        )
        assert stage.observe(obs) is not None
    stage.close()
    assert len(seen) == 3 and all(ts in in_file for ts, in_file in seen)


def test_eventlog_config_validation() -> None:
    EventLogConfig().validate()
    with pytest.raises(ValueError, match=r"^max_bytes: "):
        EventLogConfig(max_bytes=100).validate()
    with pytest.raises(ValueError, match=r"^keep: "):
        EventLogConfig(keep=0).validate()
