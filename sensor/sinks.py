"""Where alerts go: the event log, the systemd journal and Alertmanager.

Every sink has the one-method-and-close shape of `AlertSink`. A sink never raises on delivery
trouble: it counts the failure (`stats()`), logs it at a bounded rate and carries on, so a full
disk or a dead Alertmanager cannot stop the packet loop or the other sinks. (The alert stage
guards against sinks that break this promise anyway.)

Identifiers are our users' secrets. An `Alert` only carries the redacted `value` (e.g.
``"…1234"``) and the `keyed_hash`; sinks write exactly those and nothing else about the
identifier. Alertmanager gets neither in its labels (labels are for grouping and must stay
low-cardinality); the redacted value and hash go into annotations.

Settings sections (in `sensor.config.outputs`): ``[eventlog]`` `EventLogConfig`, ``[journal]``
`JournalConfig`, ``[alertmanager]`` `AlertmanagerConfig`.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import json
import logging
import os
import queue
import random
import socket
import stat
import struct
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol, TextIO, runtime_checkable

from sensor.config.outputs import DEFAULT_JOURNAL_SOCKET, am_endpoint
from sensor.config.outputs import AlertmanagerConfig as AlertmanagerConfig  # settings: config
from sensor.config.outputs import EventLogConfig as EventLogConfig
from sensor.config.outputs import JournalConfig as JournalConfig
from sensor.files import errno_name
from sensor.model import Alert

log = logging.getLogger(__name__)

EVENTLOG_NAME: Final = "events.jsonl"


# --- the sink protocol ------------------------------------------------------------------------


class AlertSink(Protocol):
    """Delivers alerts somewhere. `send` must not block for long and should not raise. (The
    pipeline's flow and device consumer is `sensor.pipeline.FlowSink`.)"""

    def send(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Coverage:
    """What an alert and its suppressed repeats covered, for the resolve record: the
    encodings and the servers (name, else address), each in first-seen order and bounded;
    `left_out` counts those beyond the bound."""

    encodings: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    left_out: int = 0


@runtime_checkable
class ResolvingSink(Protocol):
    """Optional extra a sink may have: told when an alert's suppression window closed, with
    the number of repeats that were suppressed during it and what they covered."""

    def resolve(
        self, alert: Alert, ts: float, repeats: int, coverage: Coverage | None = None
    ) -> None: ...


# --- shared helpers ---------------------------------------------------------------------------


class LogLimiter:
    """Logs one message per key per `interval` seconds and says how many it held back, so a
    failing disk or endpoint shows up in the log without flooding it."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] += 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if len(self._last) > 256:  # keys are a handful of error kinds; stay bounded anyway
            self._last.pop(next(iter(self._last)))
        if held:
            self._log.warning(msg + " (%d similar messages held back)", *args, held)
        else:
            self._log.warning(msg, *args)


def alert_fields(alert: Alert) -> dict[str, Any]:
    """The flat record every sink writes (event log order); None where unknown."""
    dev, dst = alert.device, alert.dst
    return {
        "type": "alert",
        "ts": alert.ts,
        "rule": alert.rule,
        "severity": alert.severity,
        "device_mac": dev.mac,
        "device_ip": dev.ip,
        "device_name": dev.name,
        "device_vendor": dev.vendor,
        "device_kind": dev.kind,
        "identifier": alert.identifier,
        "encoding": alert.encoding,
        "location": alert.location,
        "value": alert.value,
        "keyed_hash": alert.keyed_hash,
        "dst_ip": dst.ip,
        "dst_port": dst.port,
        "server_name": dst.server_name,
        "party": dst.party,
        "vendor": dst.vendor,
        "provider": dst.provider,
        "country": dst.country,
        "region": dst.region,
        "asn": dst.asn,
        "bytes_up": alert.bytes_up,
        "flow_uid": alert.flow_uid,
        "summary": alert.summary,
    }


def destination_label(alert: Alert) -> str:
    """Who the alert is about on the far side: vendor, else server name, else address (the
    same choice the alert stage suppresses repeats by)."""
    return alert.dst.vendor or alert.dst.server_name or alert.dst.ip


# --- event log --------------------------------------------------------------------------------


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
_AM_DESCRIPTION_FIELDS: Final = (
    "device_ip",
    "device_vendor",
    "device_kind",
    "encoding",
    "location",
    "dst_ip",
    "dst_port",
    "server_name",
    "provider",
    "region",
    "asn",
    "flow_uid",
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


# --- systemd journal --------------------------------------------------------------------------

PRIORITY: Final[dict[str, int]] = {"critical": 2, "warning": 4, "info": 6}
"""syslog priorities: crit, warning, info."""

MESSAGE_IDS: Final[dict[str, str]] = {
    "identifier_abroad": "2fd6f7d463bb401786976ca572d2741b",
    "identifier_cleartext": "211ff320f1c3446984dba4122553a7ea",
    "foreign_upload": "2328dffa86654ba6aeeefb8442b8a206",
    "foreign_upload_anomaly": "7b25f2e2ca88408384146f3416679009",
    "new_country": "946a5f1b4e4b4473b7c64b9448bc8c64",
}
"""One fixed journal MESSAGE_ID per rule (``journalctl MESSAGE_ID=...`` finds all of a kind).
Never change one: users' filters depend on them."""
MESSAGE_ID_OTHER: Final = "76f3e515d9f44e038bc2a647a05eb9bf"
"""For a rule not in the table."""


def journal_fields(alert: Alert, syslog_identifier: str = "phonehome") -> dict[str, str]:
    """The journal entry of an alert: MESSAGE, MESSAGE_ID, PRIORITY, SYSLOG_IDENTIFIER and a
    ``PHONEHOME_*`` field for every known alert field (upper-case names, None left out)."""
    out = {
        "MESSAGE": alert.summary,
        "MESSAGE_ID": MESSAGE_IDS.get(alert.rule, MESSAGE_ID_OTHER),
        "PRIORITY": str(PRIORITY.get(alert.severity, 5)),
        "SYSLOG_IDENTIFIER": syslog_identifier,
    }
    for key, value in alert_fields(alert).items():
        if key in ("type", "summary") or value is None:
            continue
        out["PHONEHOME_" + key.upper()] = str(value)
    return out


def encode_native(fields: dict[str, str]) -> bytes:
    """One datagram of journald's native protocol: ``KEY=value\\n`` per field, or, for a
    value containing a newline, ``KEY\\n`` + its length as little-endian u64 + value + ``\\n``."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def _import_journal() -> Any:
    """systemd-python's journal module, or None when it is not installed."""
    try:
        from systemd import journal  # type: ignore[import-not-found,unused-ignore]
    except Exception:  # ImportError, or a broken libsystemd binding
        return None
    return journal


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class JournalSink:
    """Alerts as structured journal entries.

    Backends, chosen once when the sink is made (`backend`):

    * ``"systemd-python"``: ``systemd.journal.send`` when the socket is journald's usual one
      and systemd-python is installed.
    * ``"native"``: our own sender of the native protocol (`encode_native`, one datagram to
      the socket). libsystemd has the socket path built in, so systemd-python cannot be
      pointed at another socket (tests, a journald namespace); this is used there, and also
      when systemd-python is missing but journald is running, because structured fields in
      the journal beat plain stderr lines.
    * ``"stderr"``: one line per alert on stderr (prefixed ``<N>`` with the syslog priority,
      which journald understands when it captures stderr) when there is no journal socket:
      ``journal.send`` silently drops messages when journald is not running, so the socket is
      checked rather than trusted.
    """

    name = "journal"

    def __init__(self, cfg: JournalConfig | None = None, *, stream: TextIO | None = None) -> None:
        self.cfg = cfg or JournalConfig()
        self._stream = stream
        self._journal: Any = None
        self._sock: socket.socket | None = None
        self._limiter = LogLimiter(log)
        self.sent = 0
        self.errors = 0
        self.dropped = 0
        self.backend = self._choose_backend()

    def _choose_backend(self) -> str:
        if not _is_socket(self.cfg.socket_path):
            return "stderr"
        if self.cfg.socket_path == DEFAULT_JOURNAL_SOCKET:
            self._journal = _import_journal()
            if self._journal is not None:
                return "systemd-python"
        return "native"

    def send(self, alert: Alert) -> None:
        fields = journal_fields(alert, self.cfg.syslog_identifier)
        try:
            if self.backend == "systemd-python":
                self._send_library(fields)
            elif self.backend == "native":
                self._send_native(fields)
            else:
                self._send_stderr(alert, fields)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
                self.dropped += 1  # journald is behind; never block the packet loop on it
            else:
                self.errors += 1
            self._limiter.warning(
                errno_name(exc), "journal (%s): %s: %s", self.backend, errno_name(exc), exc
            )
            return
        except Exception as exc:  # a binding error must not escape
            self.errors += 1
            self._limiter.warning("other", "journal (%s): %r", self.backend, exc)
            return
        self.sent += 1

    def _send_library(self, fields: dict[str, str]) -> None:
        rest = {k: v for k, v in fields.items() if k not in ("MESSAGE", "MESSAGE_ID")}
        self._journal.send(fields["MESSAGE"], MESSAGE_ID=fields["MESSAGE_ID"], **rest)

    def _send_native(self, fields: dict[str, str]) -> None:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            self._sock = sock
        self._sock.sendto(encode_native(fields), self.cfg.socket_path)

    def _send_stderr(self, alert: Alert, fields: dict[str, str]) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        details = " ".join(
            f"{k[10:].lower()}={v}"
            for k, v in fields.items()
            if k in ("PHONEHOME_DEVICE_MAC", "PHONEHOME_IDENTIFIER", "PHONEHOME_VALUE")
            or k in ("PHONEHOME_DST_IP", "PHONEHOME_SERVER_NAME", "PHONEHOME_COUNTRY")
        )
        line = f"<{fields['PRIORITY']}>{self.cfg.syslog_identifier}: {alert.severity} "
        line += f"{alert.rule}: {alert.summary.replace(chr(10), ' ')} [{details}]\n"
        stream.write(line)
        stream.flush()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "errors": self.errors, "dropped": self.dropped}


# --- Alertmanager -----------------------------------------------------------------------------


def alertname(rule: str) -> str:
    """``identifier_abroad`` -> ``PhonehomeIdentifierAbroad``: Prometheus' CamelCase naming
    for alerts, prefixed so they stand apart in a shared Alertmanager. The snake-case rule
    name is kept in the ``rule`` label for joins with the event log and journal."""
    return "Phonehome" + "".join(part.capitalize() for part in rule.split("_"))


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def alertmanager_alert(
    alert: Alert,
    resolve_after: float,
    static_labels: dict[str, str] | None = None,
    generator_url: str | None = None,
) -> dict[str, Any]:
    """One element of the ``POST /api/v2/alerts`` body.

    Labels identify and group (low-cardinality only: no values, hashes, addresses of the far
    side or byte counts); annotations carry the rest. Everything in the alert stage's
    suppression key is a label (device, rule, destination, country and cloud region,
    identifier kind), so Alertmanager keeps apart what the stage reported apart.
    ``endsAt`` is ``startsAt + resolve_after`` (the alert stage's suppression window): the
    alert resolves by itself unless the stage sends it again after the window."""
    labels = dict(static_labels or {})
    labels["alertname"] = alertname(alert.rule)
    labels["rule"] = alert.rule
    labels["severity"] = alert.severity
    labels["device"] = alert.device.mac or alert.device.ip
    if alert.device.name:
        labels["device_name"] = alert.device.name
    if alert.identifier:
        labels["identifier"] = alert.identifier
    labels["destination"] = destination_label(alert)
    if alert.dst.vendor or alert.dst.provider:
        labels["vendor"] = alert.dst.vendor or alert.dst.provider or ""
    if alert.dst.country:
        labels["dst_country"] = alert.dst.country
        if alert.dst.provider and alert.dst.region:
            # Part of the alert stage's key (`alerts.jurisdiction`): without it Alertmanager
            # would merge the alerts for two regions of one cloud into one again.
            labels["dst_region"] = alert.dst.region

    rec = alert_fields(alert)
    desc = ", ".join(f"{k}={rec[k]}" for k in _AM_DESCRIPTION_FIELDS if rec[k] is not None)
    annotations = {"summary": alert.summary, "description": desc}
    if alert.value is not None:
        annotations["value"] = alert.value
    if alert.keyed_hash is not None:
        annotations["keyed_hash"] = alert.keyed_hash
    if alert.bytes_up:
        annotations["bytes_up"] = str(alert.bytes_up)
    out: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": _rfc3339(alert.ts),
        "endsAt": _rfc3339(alert.ts + resolve_after),
    }
    if generator_url:
        out["generatorURL"] = generator_url
    return out


class _Stop:
    pass


class AlertmanagerSink:
    """Pushes alerts to Alertmanager's v2 API from a background thread.

    `send` only puts the alert on a bounded queue (dropped and counted when full), so the
    packet loop never waits for the network. The sender thread posts batches, retries failed
    ones (connection errors, HTTP 5xx, 429) with exponential backoff and jitter, and drops a
    batch after `retries` further attempts; 4xx answers are not retried (``rejected``).
    `close` gives the queue one last attempt within about `timeout` seconds, then gives up
    (``unsent``) rather than hang the shutdown."""

    name = "alertmanager"

    def __init__(
        self,
        cfg: AlertmanagerConfig,
        resolve_after: float = 3600.0,
        *,
        url: str | None = None,
        site: str | None = None,
        name: str | None = None,
    ) -> None:
        """One Alertmanager: `url` (default: the configured one, when there is only one).
        `site` becomes the ``site`` label of every alert unless ``labels.site`` is set (which
        config validation keeps equal to `site.name`). `name` keys its stats."""
        if url is None:
            if len(cfg.targets) != 1:
                raise ValueError("url: Alertmanager sink needs one URL")
            url = cfg.targets[0]
        self.cfg = cfg
        self.resolve_after = resolve_after
        self.endpoint = am_endpoint(url)
        """``host:port/path``, no credentials."""
        if name is not None:
            self.name = name
        self._labels = dict(cfg.labels)
        if site:
            self._labels.setdefault("site", site)
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path.rstrip("/") + "/api/v2/alerts"
        self._headers = {"Content-Type": "application/json", "User-Agent": "phonehome"}
        if parts.username is not None:
            cred = f"{urllib.parse.unquote(parts.username)}:"
            cred += urllib.parse.unquote(parts.password or "")
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        self._queue: queue.Queue[dict[str, Any] | _Stop] = queue.Queue(cfg.queue_size)
        self._stop = threading.Event()
        self._rng = random.Random()
        self._limiter = LogLimiter(log)
        self.queued = 0
        self.sent = 0
        self.dropped_full = 0
        self.dropped_closed = 0
        self.failed = 0
        self.rejected = 0
        self.retried = 0
        self.unsent = 0
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"phonehome-am-{self.endpoint}"[:60], daemon=True
        )
        self._thread.start()

    # -- AlertSink

    def send(self, alert: Alert) -> None:
        if self._closed:
            self.dropped_closed += 1
            return
        item = alertmanager_alert(alert, self.resolve_after, self._labels, self.cfg.generator_url)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped_full += 1
            self._limiter.warning(
                "full", "alertmanager %s: queue full, alert dropped", self.endpoint
            )
            return
        self.queued += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_Stop())
        self._thread.join(timeout=2 * self.cfg.timeout + 1.0)
        # whatever the thread could not send in time
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, _Stop):
                self.unsent += 1

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is empty and nothing is in flight (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def stats(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "sent": self.sent,
            "dropped_queue_full": self.dropped_full,
            "dropped_closed": self.dropped_closed,
            "failed": self.failed,
            "rejected": self.rejected,
            "retries": self.retried,
            "unsent_at_close": self.unsent,
            "queue_length": self._queue.qsize(),
        }

    # -- the sender thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = self._take_batch(first)
            if batch:
                self._send_batch(batch, retry=True)
        self._final_flush()

    def _take_batch(self, first: dict[str, Any] | _Stop | None) -> list[dict[str, Any]]:
        """`first` (if any) and what else is queued, up to batch_size; the stop marker only
        wakes the thread and is dropped here."""
        batch: list[dict[str, Any]] = []
        item = first
        while True:
            if isinstance(item, _Stop):
                self._queue.task_done()
            elif item is not None:
                batch.append(item)
            if len(batch) >= self.cfg.batch_size:
                return batch
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch

    def _send_batch(self, batch: list[dict[str, Any]], retry: bool) -> str:
        try:
            outcome = self._deliver(batch, retry)
            if outcome == "ok":
                self.sent += len(batch)
            elif outcome == "rejected":
                self.rejected += len(batch)
            elif outcome == "failed" and retry:
                self.failed += len(batch)
            else:
                self.unsent += len(batch)
            return outcome
        finally:
            for _ in batch:
                self._queue.task_done()

    def _final_flush(self) -> None:
        """One attempt for what is still queued, within about one timeout."""
        deadline = time.monotonic() + self.cfg.timeout
        while time.monotonic() < deadline:
            batch = self._take_batch(None)
            if not batch:
                return
            if self._send_batch(batch, retry=False) != "ok":
                return

    def _deliver(self, batch: list[dict[str, Any]], retry: bool) -> str:
        """POST the batch, with retries and backoff when `retry`: "ok", "rejected", "failed"
        or "stopped" (closing interrupted the backoff)."""
        body = json.dumps(batch, ensure_ascii=False).encode()
        attempts = 1 + (self.cfg.retries if retry else 0)
        for attempt in range(attempts):
            if attempt:
                delay = min(self.cfg.backoff_max, self.cfg.backoff * (2 ** (attempt - 1)))
                if self._stop.wait(delay * self._rng.uniform(0.5, 1.0)):
                    return "stopped"  # closing: give up on this batch, unsent
                self.retried += 1
            outcome = self._post(body)
            if outcome != "retry":
                return outcome
        return "failed"

    def _post(self, body: bytes) -> str:
        """One POST: "ok", "rejected" (4xx but 429: retrying cannot help) or "retry"."""
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.cfg.timeout)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.cfg.timeout)
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            resp = conn.getresponse()
            detail = resp.read(512)
        except (OSError, http.client.HTTPException) as exc:
            self._limiter.warning(
                "post", "alertmanager %s:%s: %s", self._host, self._port, exc or type(exc)
            )
            return "retry"
        finally:
            conn.close()
        if 200 <= resp.status < 300:
            return "ok"
        self._limiter.warning(
            f"http{resp.status}",
            "alertmanager %s:%s: HTTP %d %r",
            self._host,
            self._port,
            resp.status,
            detail[:200],
        )
        if 400 <= resp.status < 500 and resp.status != 429:
            return "rejected"
        return "retry"


# --- building the configured set --------------------------------------------------------------


def make_sinks(
    state_dir: str | os.PathLike[str],
    eventlog: EventLogConfig | None = None,
    journal: JournalConfig | None = None,
    alertmanager: AlertmanagerConfig | None = None,
    resolve_after: float = 3600.0,
    site: str | None = None,
) -> list[AlertSink]:
    """The sinks the settings switch on, in delivery order: the event log first, so that
    every other sink (and anything appended after these) only sees an alert once its record
    is on disk (see `EventLog`). `resolve_after` should be the alert stage's suppression
    window; `site` the site's name, labelled on every alert to Alertmanager.

    One `AlertmanagerSink` per Alertmanager URL (an HA cluster wants every alert at every
    member and deduplicates itself): each has its own queue, so a dead member only fills its
    own. Named ``alertmanager`` when there is one, ``alertmanager@host:port`` when several."""
    eventlog = eventlog or EventLogConfig()
    journal = journal or JournalConfig()
    alertmanager = alertmanager or AlertmanagerConfig()
    sinks: list[AlertSink] = []
    if eventlog.enabled:
        sinks.append(EventLog.from_config(eventlog, state_dir))
    if journal.enabled:
        sinks.append(JournalSink(journal))
    targets = alertmanager.targets
    for url in targets:
        name = "alertmanager" if len(targets) == 1 else f"alertmanager@{am_endpoint(url)}"
        sinks.append(AlertmanagerSink(alertmanager, resolve_after, url=url, site=site, name=name))
    return sinks
