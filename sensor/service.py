"""systemd integration: sd_notify (READY, STATUS, WATCHDOG, STOPPING) and journal logging.

sd_notify is spoken natively (one datagram to $NOTIFY_SOCKET): the protocol is that simple,
and the daemon must not lose readiness or watchdog pings over an import. Journal logging uses
systemd-python when it is there, loaded by `sensor.sinks.journal` (the one module importing it).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time


class Notifier:
    """Talks to the service manager, if there is one ($NOTIFY_SOCKET)."""

    def __init__(self) -> None:
        self.socket_path = os.environ.get("NOTIFY_SOCKET") or None
        self.watchdog_interval = _watchdog_interval()
        self._last_ping = 0.0
        self.sent: list[str] = []
        """What was sent (the last few), for status and tests."""
        self.dropped = 0
        self._sock: socket.socket | None = None
        if self.socket_path is not None:
            # Connected now, while we may still be root: the socket file may not be writable
            # by the user we drop to.
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.connect(_address(self.socket_path))
                # Never block the packet loop on a service manager that does not read.
                self._sock.setblocking(False)
            except OSError:
                if self._sock is not None:
                    self._sock.close()
                self._sock = None

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def notify(self, state: str) -> bool:
        if self.socket_path is None:
            return False
        try:
            if self._sock is not None:
                self._sock.send(state.encode())
            else:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                    s.sendto(state.encode(), _address(self.socket_path))
        except OSError:  # includes BlockingIOError: a full queue drops the message
            self.dropped += 1
            return False
        self.sent.append(state)
        del self.sent[:-20]
        return True

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        self.notify(
            f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def watchdog(self, now: float) -> None:
        """Ping at half the interval; called from the packet loop, so a hung loop stops
        pinging and systemd restarts us (never from a timer thread of its own)."""
        if self.watchdog_interval is None:
            return
        if now - self._last_ping >= self.watchdog_interval / 2:
            self._last_ping = now
            self.notify("WATCHDOG=1")


def _address(path: str) -> str:
    return "\0" + path[1:] if path.startswith("@") else path


def _watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


def stderr_is_journal() -> bool:
    """$JOURNAL_STREAM names stderr's device and inode when systemd connected it to the
    journal."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def setup_logging(level: int) -> str:
    """Journal logging when stderr goes to the journal, stderr otherwise; returns which."""
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    if stderr_is_journal():
        from sensor.sinks.journal import import_journal

        journal = import_journal()
        if journal is not None:
            root.addHandler(journal.JournalHandler(SYSLOG_IDENTIFIER="phonehome"))
            return "journal"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("phonehome: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    return "stderr"
