"""The event log: alerts (and resolve records) as JSON Lines in a 0600 file, fsynced."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

from sensor.files import errno_name
from sensor.model import Alert
from sensor.sinks.base import Coverage, LogLimiter, alert_fields
from sensor.sinks.settings import EventLogConfig

log = logging.getLogger(__name__)

EVENTLOG_NAME: Final = "events.jsonl"


_RESOLVED_FIELDS: Final = (
    "rule",
    "severity",
    "device_mac",
    "device_ip",
    "identifier",
    "keyed_hash",
    "dst_ip",
    "server_name",
    "vendor",
    "provider",
    "country",
    "region",
)


class EventLog:
    """Alerts as JSON Lines, one whole line per alert, in a file (mode 0600) only the sensor's
    user can read.

    Crash safety: each record is written with one ``os.write`` on an ``O_APPEND`` descriptor
    and fsynced before `send` returns, so an alert that was reported written (`stats()`
    ``written``) is on disk, and a killed process leaves at most one torn line at the end (a
    kernel may cut a write short when a fatal signal arrives between pages, and a crashing
    filesystem may too). Opening the log truncates such a torn tail away. A short write (disk
    full) is rolled back with ``ftruncate`` so the file never holds half a record.

    Errors (unwritable directory, full disk, ...) are counted by errno name in
    ``stats()["errors"]`` and logged at most once a minute per kind; opening is retried at most
    every `reopen_interval` seconds. `failing` names the last error while it lasts (None again
    after the next record written), for the daemon's STATUS line. A full disk does not close
    the file: the next record after space is freed is written.

    Acknowledgement: `make_sinks` puts the event log first, and the alert stage calls its sinks
    in order, one after the other. So by the time any other sink (journal, Alertmanager,
    metrics) has an alert, the event log's `send` has returned: the record is written and
    fsynced, or its failure counted. An alert seen in the journal while the event log reports
    no errors is in the file, whatever kills the sensor afterwards."""

    name = "eventlog"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 16 << 20,
        keep: int = 5,
        fsync: bool = True,
        reopen_interval: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.fsync = fsync
        self.reopen_interval = reopen_interval
        self._fd: int | None = None
        self._size = 0
        self._next_open = 0.0
        self._limiter = LogLimiter(log)
        self.written = 0
        self.resolved_written = 0
        self.rotations = 0
        self.truncated_bytes = 0
        self.errors: Counter[str] = Counter()
        self.failing: str | None = None
        """The errno name of the last failed open or write, until a record is written."""
        self._open()

    @classmethod
    def from_config(cls, cfg: EventLogConfig, state_dir: str | os.PathLike[str]) -> EventLog:
        path = Path(cfg.path) if cfg.path is not None else Path(state_dir) / EVENTLOG_NAME
        return cls(path, max_bytes=cfg.max_bytes, keep=cfg.keep, fsync=cfg.fsync)

    # -- AlertSink

    def send(self, alert: Alert) -> None:
        if self._write(alert_fields(alert)):
            self.written += 1

    def resolve(
        self, alert: Alert, ts: float, repeats: int, coverage: Coverage | None = None
    ) -> None:
        """The suppression window of `alert` closed at `ts` after `repeats` suppressed
        repeats: a ``"type": "resolved"`` line with the alert's key fields and, given a
        `coverage`, the encodings and servers the alert and its repeats used."""
        rec = alert_fields(alert)
        rec = {
            "type": "resolved",
            "ts": ts,
            "alert_ts": alert.ts,
            "repeats": repeats,
            **{k: rec[k] for k in _RESOLVED_FIELDS},
        }
        if coverage is not None:
            rec["encodings"] = list(coverage.encodings)
            rec["servers"] = list(coverage.servers)
            rec["covered_left_out"] = coverage.left_out
        if self._write(rec):
            self.resolved_written += 1

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def stats(self) -> dict[str, int]:
        return {
            "written": self.written,
            "resolved_written": self.resolved_written,
            "rotations": self.rotations,
            "truncated_bytes": self.truncated_bytes,
            "bytes": self._size,
            "errors": sum(self.errors.values()),
            **{f"errors_{k}": v for k, v in sorted(self.errors.items())},
        }

    # -- internals

    def _error(self, what: str, exc: OSError) -> None:
        kind = errno_name(exc)
        self.errors[kind] += 1
        self.failing = kind
        self._limiter.warning(
            f"{what}:{kind}", "event log %s: %s %s: %s", self.path, what, kind, exc.strerror
        )

    def _open(self) -> bool:
        self._next_open = time.monotonic() + self.reopen_interval
        try:
            created = not self.path.exists()
            if created:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._error("open", exc)
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
            self._size = self._repair(fd, st.st_size)
            if created:
                self._sync_dir()
        except OSError as exc:
            os.close(fd)
            self._error("open", exc)
            return False
        self._fd = fd
        return True

    def _repair(self, fd: int, size: int) -> int:
        """Cut a torn last line (no trailing newline) off; returns the new size."""
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        end = size
        while end > 0:
            start = max(0, end - 65536)
            chunk = os.pread(fd, end - start, start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            end = start
        else:
            keep = 0
        os.ftruncate(fd, keep)
        os.fsync(fd)
        self.truncated_bytes += size - keep
        log.warning("event log %s: removed a torn last line (%d bytes)", self.path, size - keep)
        return keep

    def _sync_dir(self) -> None:
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _rotate(self) -> None:
        self.close()
        base = str(self.path)
        try:
            for i in range(self.keep - 1, 0, -1):
                src = f"{base}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{base}.{i + 1}")
            os.replace(base, f"{base}.1")
            self._sync_dir()
            self.rotations += 1
        except OSError as exc:
            self._error("rotate", exc)
        self._open()

    def _write(self, record: dict[str, Any]) -> bool:
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        if self._fd is not None and self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
        if self._fd is None:
            if time.monotonic() < self._next_open:
                self.errors["not_open"] += 1  # opening failed recently; not retried yet
                return False
            if not self._open():
                return False
        fd = self._fd
        assert fd is not None
        try:
            n = os.write(fd, data)
        except OSError as exc:
            self._error("write", exc)
            return False
        if n != len(data):
            # a short write (disk full): take the partial record back out (from the real
            # size, in case something else truncated the file behind our back)
            try:
                os.ftruncate(fd, max(0, os.fstat(fd).st_size - n))
            except OSError as exc:
                self._error("truncate", exc)
            self._error("write", OSError(errno.ENOSPC, "short write"))
            return False
        self._size += n
        if self.fsync:
            try:
                os.fsync(fd)
            except OSError as exc:
                self._error("fsync", exc)
                return False
        if self.failing is not None:
            log.info("event log %s: writing again (after %s)", self.path, self.failing)
            self.failing = None
        return True
