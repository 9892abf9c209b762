"""Alerts as structured systemd journal entries (systemd-python, our own native-protocol
sender, or stderr when there is no journal)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
import sys
from typing import Any, Final, TextIO

from sensor.files import errno_name
from sensor.model import Alert
from sensor.sinks.base import LogLimiter, alert_fields
from sensor.sinks.settings import DEFAULT_JOURNAL_SOCKET, JournalConfig

log = logging.getLogger(__name__)


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


def import_journal() -> Any:
    """systemd-python's journal module, or None when it is not installed. The only import of
    systemd-python (`sensor.service` logs through it too)."""
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
            self._journal = import_journal()
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
