"""Alert sinks: the JSON Lines event log (fields, mode, rotation, fsync, crash safety, errors),
the journal (native protocol on a test socket, systemd-python in a private mount namespace,
stderr fallback) and Alertmanager (a real prometheus-alertmanager on loopback).

No sink output may hold an identifier in full: every test alert carries the redacted tail of
FULL_IMEI, and the outputs are checked for the whole value."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest

from sensor import sinks
from sensor.alerts import AlertsConfig, AlertStage
from sensor.config import ConfigError, _build
from sensor.model import Alert, Destination, DeviceRef, Observation
from sensor.sinks import (
    MESSAGE_IDS,
    AlertmanagerConfig,
    AlertmanagerSink,
    Coverage,
    EventLog,
    EventLogConfig,
    JournalConfig,
    JournalSink,
    alertmanager_alert,
    alertname,
    encode_native,
    make_sinks,
)

FULL_IMEI = "356938035643809"
REDACTED = "…3809"
HASH = "9f2c4e1a0b7d3c55"
REPO = Path(__file__).resolve().parent.parent
AM_BINARY = "/usr/bin/prometheus-alertmanager"

TV = DeviceRef(
    mac="aa:bb:cc:dd:ee:01",
    ip="192.168.1.20",
    name="Living-room TV",
    vendor="TVMaker",
    kind="tv",
)
DST = Destination(
    ip="203.0.113.7",
    port=80,
    server_name="t.example.cn",
    vendor="ExampleCorp",
    country="CN",
    region="CN-BJ",
    abroad=True,
)
SEVERITY: dict[str, Literal["critical", "warning", "info"]] = {
    "identifier_abroad": "critical",
    "identifier_cleartext": "warning",
    "new_party_upload": "warning",
    "foreign_upload": "warning",
    "foreign_upload_anomaly": "warning",
    "new_country": "info",
}


def make_alert(
    rule: str = "identifier_abroad", ts: float = 1_700_000_000.0, summary: str | None = None
) -> Alert:
    ident = rule.startswith("identifier")
    return Alert(
        rule=rule,
        severity=SEVERITY[rule],
        ts=ts,
        device=TV,
        dst=DST,
        summary=summary or f"Living-room TV sent imei {REDACTED} in cleartext to t.example.cn",
        identifier="imei" if ident else None,
        encoding="plain" if ident else None,
        location="url" if ident else None,
        value=REDACTED if ident else None,
        keyed_hash=HASH if ident else None,
        bytes_up=0 if ident else 6_000_000,
        flow_uid="Fabc",
    )


# --- event log --------------------------------------------------------------------------------

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


def read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


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
    monkeypatch.setattr("sensor.sinks.os.fsync", spy)
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

    monkeypatch.setattr("sensor.sinks.os.write", short)
    log.send(make_alert())
    monkeypatch.setattr("sensor.sinks.os.write", real)
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
    sg = Destination(
        ip="198.51.100.20",
        port=80,
        server_name="data.example.com",
        vendor="ExampleCorp",
        provider="aws",
        region="ap-southeast-1",
        country="SG",
        abroad=True,
    )
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


# --- journal ----------------------------------------------------------------------------------


def parse_native(data: bytes) -> dict[str, str]:
    """Decode one datagram of journald's native protocol."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            pos = nl + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            start = nl + 9
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n"
            pos = start + size + 1
        assert key.decode() not in out, "field sent twice"
        out[key.decode()] = value.decode()
    return out


@pytest.fixture
def journal_socket() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for journald's, at a short path (sun_path is small)."""
    d = tempfile.mkdtemp(prefix="phj", dir="/tmp")
    path = os.path.join(d, "socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        yield path, sock
    finally:
        sock.close()
        shutil.rmtree(d, ignore_errors=True)


def test_encode_native() -> None:
    assert encode_native({"A": "1", "B": "x=y"}) == b"A=1\nB=x=y\n"
    assert encode_native({"M": "a\nb"}) == b"M\n" + struct.pack("<Q", 3) + b"a\nb\n"
    assert parse_native(encode_native({"M": "a\nb", "P": "2"})) == {"M": "a\nb", "P": "2"}


def test_journal_native_fields(journal_socket: tuple[str, socket.socket]) -> None:
    path, sock = journal_socket
    sink = JournalSink(JournalConfig(socket_path=path))
    assert sink.backend == "native"
    seen: dict[str, str] = {}
    for rule, prio in (
        ("identifier_abroad", "2"),
        ("identifier_cleartext", "4"),
        ("foreign_upload", "4"),
        ("foreign_upload_anomaly", "4"),
        ("new_country", "6"),
    ):
        alert = make_alert(rule)
        sink.send(alert)
        data = sock.recv(65536)
        assert FULL_IMEI.encode() not in data
        f = parse_native(data)
        assert f["MESSAGE"] == alert.summary
        assert f["PRIORITY"] == prio
        assert f["MESSAGE_ID"] == MESSAGE_IDS[rule]
        assert len(f["MESSAGE_ID"]) == 32 and int(f["MESSAGE_ID"], 16) >= 0
        assert f["SYSLOG_IDENTIFIER"] == "phonehome"
        assert f["PHONEHOME_RULE"] == rule
        assert f["PHONEHOME_SEVERITY"] == alert.severity
        assert f["PHONEHOME_DEVICE_MAC"] == TV.mac
        assert f["PHONEHOME_DEVICE_NAME"] == "Living-room TV"
        assert f["PHONEHOME_DST_IP"] == "203.0.113.7" and f["PHONEHOME_DST_PORT"] == "80"
        assert f["PHONEHOME_COUNTRY"] == "CN" and f["PHONEHOME_VENDOR"] == "ExampleCorp"
        assert all(k == k.upper() for k in f)
        if rule.startswith("identifier"):
            assert f["PHONEHOME_VALUE"] == REDACTED and f["PHONEHOME_KEYED_HASH"] == HASH
            assert f["PHONEHOME_IDENTIFIER"] == "imei"
        else:
            assert "PHONEHOME_VALUE" not in f and "PHONEHOME_IDENTIFIER" not in f
            assert f["PHONEHOME_BYTES_UP"] == "6000000"
        seen[rule] = f["MESSAGE_ID"]
    assert len(set(seen.values())) == 5  # one id per rule
    # a message with a newline goes length-prefixed and arrives whole
    sink.send(make_alert(summary="two\nlines"))
    assert parse_native(sock.recv(65536))["MESSAGE"] == "two\nlines"
    assert sink.stats() == {"sent": 6, "errors": 0, "dropped": 0}
    sink.close()


def test_journal_full_socket_drops_without_blocking(
    journal_socket: tuple[str, socket.socket],
) -> None:
    path, _ = journal_socket
    sink = JournalSink(JournalConfig(socket_path=path))
    start = time.monotonic()
    for _ in range(3000):  # nobody reads: the socket's queue fills up
        sink.send(make_alert(summary="x" * 2000))
    assert time.monotonic() - start < 10
    s = sink.stats()
    assert s["dropped"] > 0 and s["sent"] + s["dropped"] == 3000
    sink.close()


def test_journal_stderr_fallback(tmp_path: Path) -> None:
    out = io.StringIO()
    sink = JournalSink(JournalConfig(socket_path=str(tmp_path / "no-such-socket")), stream=out)
    assert sink.backend == "stderr"
    sink.send(make_alert())
    sink.send(make_alert("new_country", summary="TV talked to CN for the first time"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("<2>phonehome: critical identifier_abroad: Living-room TV sent imei")
    assert "value=…3809" in lines[0] and "device_mac=aa:bb:cc:dd:ee:01" in lines[0]
    assert lines[1].startswith("<6>phonehome: info new_country: TV talked to CN")
    assert FULL_IMEI not in out.getvalue()
    # a path that exists but is no socket is no journal either
    plain = tmp_path / "plain"
    plain.write_text("")
    assert JournalSink(JournalConfig(socket_path=str(plain)), stream=out).backend == "stderr"


def test_journal_without_systemd_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)  # makes the import fail
    assert sinks._import_journal() is None


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


LIBRARY_SENDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from sensor.sinks import JournalConfig, JournalSink
    from tests.test_sinks import make_alert
    sink = JournalSink(JournalConfig())
    print(sink.backend)
    sink.send(make_alert("identifier_abroad"))
    sink.send(make_alert("new_country", summary="multi\\nline"))
    print(sink.stats())
    """
)


def test_journal_systemd_python_in_private_mount_namespace(
    journal_socket: tuple[str, socket.socket],
) -> None:
    """systemd-python's journal.send only knows /run/systemd/journal/socket; a child process
    in its own mount namespace sees our test socket there."""
    pytest.importorskip("systemd.journal")
    if not _can_unshare():
        pytest.skip("needs root and unshare --mount")
    path, sock = journal_socket
    script = (
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && "
        'mount --bind "$1" /run/systemd/journal && exec "$2" -c "$3" "$4"'
    )
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            os.path.dirname(path),
            sys.executable,
            LIBRARY_SENDER,
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "systemd-python"
    first = parse_native(sock.recv(65536))
    assert first["MESSAGE_ID"] == MESSAGE_IDS["identifier_abroad"]
    assert first["PRIORITY"] == "2"
    assert first["PHONEHOME_RULE"] == "identifier_abroad"
    assert first["PHONEHOME_DEVICE_MAC"] == TV.mac
    assert first["PHONEHOME_VALUE"] == REDACTED
    assert first["MESSAGE"].startswith("Living-room TV sent imei")
    second = parse_native(sock.recv(65536))
    assert second["MESSAGE"] == "multi\nline" and second["PRIORITY"] == "6"
    assert second["MESSAGE_ID"] == MESSAGE_IDS["new_country"]


def test_journal_config_validation() -> None:
    JournalConfig().validate()
    with pytest.raises(ValueError, match=r"^socket_path: "):
        JournalConfig(socket_path="relative").validate()
    with pytest.raises(ValueError, match=r"^syslog_identifier: "):
        JournalConfig(syslog_identifier="has space").validate()


# --- Alertmanager -----------------------------------------------------------------------------


def test_alertname_and_payload() -> None:
    assert alertname("identifier_abroad") == "PhonehomeIdentifierAbroad"
    assert alertname("foreign_upload_anomaly") == "PhonehomeForeignUploadAnomaly"
    body = alertmanager_alert(make_alert(), 3600.0, {"site": "lab"}, "http://sensor.invalid/")
    assert body["labels"] == {
        "site": "lab",
        "alertname": "PhonehomeIdentifierAbroad",
        "rule": "identifier_abroad",
        "severity": "critical",
        "device": TV.mac,
        "device_name": "Living-room TV",
        "identifier": "imei",
        "destination": "ExampleCorp",
        "vendor": "ExampleCorp",
        "dst_country": "CN",
    }
    assert body["annotations"]["value"] == REDACTED
    assert body["annotations"]["keyed_hash"] == HASH
    assert "dst_ip=203.0.113.7" in body["annotations"]["description"]
    assert body["startsAt"] == "2023-11-14T22:13:20.000Z"
    assert body["endsAt"] == "2023-11-14T23:13:20.000Z"
    assert body["generatorURL"] == "http://sensor.invalid/"
    labels = json.dumps(body["labels"])
    assert REDACTED not in labels and HASH not in labels and "203.0.113.7" not in labels


def test_alertmanager_config_validation() -> None:
    AlertmanagerConfig().validate()
    AlertmanagerConfig(url="http://127.0.0.1:9093", labels={"site": "x"}).validate()
    with pytest.raises(ValueError, match=r"^url: "):
        AlertmanagerConfig(url="ftp://x").validate()
    with pytest.raises(ValueError, match=r"^labels: "):
        AlertmanagerConfig(labels={"severity": "x"}).validate()
    with pytest.raises(ValueError, match=r"^labels: "):
        AlertmanagerConfig(labels={"bad-name": "x"}).validate()
    cfg = _build(
        AlertmanagerConfig,
        {"url": "http://127.0.0.1:9093", "labels": {"site": "home"}, "timeout": 2},
        "x.toml",
        "alertmanager",
    )
    assert cfg.labels == {"site": "home"} and cfg.timeout == 2.0
    with pytest.raises(ConfigError, match=r"alertmanager\.retries"):
        _build(AlertmanagerConfig, {"retries": -1}, "x.toml", "alertmanager")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on 127.0.0.1, storage in tmp_path, clustering off."""
    if not os.access(AM_BINARY, os.X_OK):
        pytest.skip(f"{AM_BINARY} not installed (Debian package prometheus-alertmanager)")
    conf = tmp_path / "alertmanager.yml"
    conf.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = free_port()
    logf = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            AM_BINARY,
            f"--config.file={conf}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail("alertmanager exited: " + (tmp_path / "alertmanager.log").read_text())
            with contextlib.suppress(OSError):
                if http_get(port, "/-/ready")[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("alertmanager did not become ready")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        logf.close()


def _rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_alertmanager_push_and_read_back(alertmanager: str) -> None:
    port = int(alertmanager.rsplit(":", 1)[1])
    sink = AlertmanagerSink(
        AlertmanagerConfig(url=alertmanager, labels={"site": "lab"}), resolve_after=3600.0
    )
    now = time.time()
    sink.send(make_alert(ts=now))
    sink.send(make_alert("foreign_upload", ts=now))
    assert sink.flush(15)
    sink.close()
    assert sink.stats()["sent"] == 2 and sink.stats()["failed"] == 0
    status, body = http_get(port, "/api/v2/alerts")
    assert status == 200
    assert FULL_IMEI.encode() not in body
    got = {a["labels"]["alertname"]: a for a in json.loads(body)}
    assert set(got) == {"PhonehomeIdentifierAbroad", "PhonehomeForeignUpload"}
    a = got["PhonehomeIdentifierAbroad"]
    assert a["labels"] == {
        "site": "lab",
        "alertname": "PhonehomeIdentifierAbroad",
        "rule": "identifier_abroad",
        "severity": "critical",
        "device": TV.mac,
        "device_name": "Living-room TV",
        "identifier": "imei",
        "destination": "ExampleCorp",
        "vendor": "ExampleCorp",
        "dst_country": "CN",
    }
    assert a["annotations"]["value"] == REDACTED
    assert a["annotations"]["keyed_hash"] == HASH
    assert a["annotations"]["summary"].startswith("Living-room TV sent imei")
    assert a["status"]["state"] == "active"
    assert abs(_rfc3339(a["endsAt"]) - _rfc3339(a["startsAt"]) - 3600.0) < 0.01
    upload = got["PhonehomeForeignUpload"]
    assert upload["labels"]["severity"] == "warning"
    assert upload["annotations"]["bytes_up"] == "6000000"
    assert "identifier" not in upload["labels"] and "value" not in upload["annotations"]


def test_alert_stage_delivers_to_all_sinks(
    alertmanager: str, tmp_path: Path, journal_socket: tuple[str, socket.socket]
) -> None:
    port = int(alertmanager.rsplit(":", 1)[1])
    jpath, jsock = journal_socket
    cfg = AlertsConfig(suppress_window=600.0)
    out = make_sinks(
        tmp_path,
        EventLogConfig(),
        JournalConfig(socket_path=jpath),
        AlertmanagerConfig(url=alertmanager),
        resolve_after=cfg.suppress_window,
    )
    stage = AlertStage(cfg, out)
    now = time.time()
    obs = Observation(
        what="identifier",
        ts=now,
        device=TV,
        dst=DST,
        identifier="email",
        encoding="base64",
        location="body",
        value="…@example.org",
        keyed_hash=HASH,
    )
    assert stage.observe(obs) is not None
    assert stage.observe(obs) is None  # suppressed
    am = out[2]
    assert isinstance(am, AlertmanagerSink) and am.flush(15)
    stage.tick(now + 600)
    stage.close()
    records = read_lines(tmp_path / "events.jsonl")
    assert [r["type"] for r in records] == ["alert", "resolved"]
    assert records[0]["value"] == "…@example.org" and records[1]["repeats"] == 1
    assert parse_native(jsock.recv(65536))["PHONEHOME_IDENTIFIER"] == "email"
    (a,) = json.loads(http_get(port, "/api/v2/alerts")[1])
    assert a["labels"]["identifier"] == "email"
    assert abs(_rfc3339(a["endsAt"]) - _rfc3339(a["startsAt"]) - 600.0) < 0.01
    s = stage.stats()
    assert s["sink_errors"] == {} and s["sinks"]["alertmanager"]["sent"] == 1
    assert s["sinks"]["eventlog"]["written"] == 1 and s["sinks"]["journal"]["sent"] == 1


def test_alertmanager_dead_url_neither_blocks_nor_raises() -> None:
    port = free_port()  # nothing listens there: connections are refused
    sink = AlertmanagerSink(
        AlertmanagerConfig(url=f"http://127.0.0.1:{port}", timeout=1.0, retries=2, backoff=0.05)
    )
    start = time.monotonic()
    for i in range(5):
        sink.send(make_alert(ts=1_700_000_000.0 + i))
    assert time.monotonic() - start < 10  # liveness: send() queues, it never waits for a POST
    assert sink.flush(10)
    s = sink.stats()
    assert s["sent"] == 0 and s["failed"] == 5 and s["retries"] >= 2
    start = time.monotonic()
    sink.close()
    assert time.monotonic() - start < 10  # liveness: close() ends the thread
    sink.send(make_alert())  # after close: counted, not raised
    assert sink.stats()["dropped_closed"] == 1


def test_alertmanager_queue_full_drops_and_counts() -> None:
    # a listener that never answers: the sender thread hangs in its first POST until timeout
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        sink = AlertmanagerSink(
            AlertmanagerConfig(
                url=f"http://127.0.0.1:{port}", timeout=0.5, retries=0, queue_size=2, batch_size=1
            )
        )
        start = time.monotonic()
        for i in range(10):
            sink.send(make_alert(ts=1_700_000_000.0 + i))
            time.sleep(0.01)
        # send() never waited for the hanging POST: the queue filled and the rest was dropped.
        s = sink.stats()
        assert 7 <= s["dropped_queue_full"] <= 8
        assert s["queued"] + s["dropped_queue_full"] == 10
        start = time.monotonic()
        sink.close()
        assert time.monotonic() - start < 10  # liveness: close() ends the thread
        s = sink.stats()
        assert s["sent"] == 0
        assert s["failed"] + s["unsent_at_close"] == s["queued"]


# --- building the set -------------------------------------------------------------------------


def test_make_sinks(tmp_path: Path) -> None:
    no_journal = JournalConfig(socket_path=str(tmp_path / "none"))
    out = make_sinks(tmp_path, EventLogConfig(), no_journal, AlertmanagerConfig())
    assert [type(s) for s in out] == [EventLog, JournalSink]
    for s in out:
        s.close()
    out = make_sinks(
        tmp_path,
        EventLogConfig(enabled=False),
        JournalConfig(enabled=False),
        AlertmanagerConfig(url=f"http://127.0.0.1:{free_port()}"),
    )
    assert [type(s) for s in out] == [AlertmanagerSink]
    for s in out:
        s.close()


def test_every_alertmanager_gets_every_alert_and_a_dead_one_holds_none_back(
    alertmanager: str, tmp_path: Path
) -> None:
    """An HA pair where one member is down: the live one has each alert (with the site
    label) while the dead one's own queue retries; each has its own counters."""
    port = int(alertmanager.rsplit(":", 1)[1])
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = AlertmanagerConfig(urls=(dead, alertmanager), timeout=1.0, retries=50, backoff=0.2)
    out = make_sinks(
        tmp_path, EventLogConfig(enabled=False), JournalConfig(enabled=False), cfg, site="home-1"
    )
    names = [getattr(s, "name", "") for s in out]
    assert names == [
        f"alertmanager@127.0.0.1:{dead.rsplit(':', 1)[1]}",
        f"alertmanager@127.0.0.1:{port}",
    ]
    stage = AlertStage(AlertsConfig(), out)
    now = time.time()
    for i, kind in enumerate(("imei", "email")):
        obs = Observation(
            what="identifier",
            ts=now + i,
            device=TV,
            dst=DST,
            identifier=kind,
            encoding="plain",
            location="body",
            value="…1234",
            keyed_hash=HASH,
        )
        assert stage.observe(obs) is not None
    live, down = out[1], out[0]
    assert isinstance(live, AlertmanagerSink) and isinstance(down, AlertmanagerSink)
    assert live.flush(15)  # not held back by the dead member's retries
    got = json.loads(http_get(port, "/api/v2/alerts")[1])
    assert sorted(a["labels"]["identifier"] for a in got) == ["email", "imei"]
    assert {a["labels"]["site"] for a in got} == {"home-1"}
    s = stage.stats()["sinks"]
    assert s[live.name]["sent"] == 2 and s[live.name]["failed"] == 0
    assert s[down.name]["sent"] == 0 and s[down.name]["queued"] == 2
    stage.close()


def test_site_label_from_site_name_unless_labels_set_it() -> None:
    cfg = AlertmanagerConfig(url="http://127.0.0.1:9")
    sink = AlertmanagerSink(cfg, site="cabin")
    try:
        assert sink._labels == {"site": "cabin"}
    finally:
        sink.close()
    # the older `labels.site` (config validation keeps it equal to site.name) wins
    sink = AlertmanagerSink(
        AlertmanagerConfig(url="http://127.0.0.1:9", labels={"site": "Old Home"}), site="x"
    )
    try:
        assert sink._labels == {"site": "Old Home"}
    finally:
        sink.close()


def test_alertmanager_urls_validation() -> None:
    AlertmanagerConfig(urls=("http://a:9093", "https://b:9093/am")).validate()
    assert AlertmanagerConfig(url="http://a:9093").targets == ("http://a:9093",)
    assert AlertmanagerConfig(urls=("http://a", "http://b")).targets == ("http://a", "http://b")
    assert AlertmanagerConfig().targets == ()
    with pytest.raises(ValueError, match=r"^urls: set either url or urls"):
        AlertmanagerConfig(url="http://a:9093", urls=("http://b:9093",)).validate()
    with pytest.raises(ValueError, match=r"^urls\[1\]: must be an http"):
        AlertmanagerConfig(urls=("http://a:9093", "a:9093")).validate()
    with pytest.raises(ValueError, match=r"^urls: the same Alertmanager twice"):
        AlertmanagerConfig(urls=("http://a:80", "http://user:pw@a/")).validate()
    with pytest.raises(ValueError, match=r"^url: bad port"):
        AlertmanagerConfig(url="http://a:99999").validate()
