"""Settings of the sinks: ``[eventlog]`` `EventLogConfig`, ``[journal]`` `JournalConfig`,
``[alertmanager]`` `AlertmanagerConfig` (registered by config.py)."""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Final

DEFAULT_JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"


@dataclass(frozen=True, slots=True)
class EventLogConfig:
    enabled: bool = True
    path: str | None = None
    """The JSON Lines file; default ``<paths.state_dir>/events.jsonl``."""
    max_bytes: int = 16 << 20
    """Size at which the log is rotated (``events.jsonl`` -> ``events.jsonl.1`` -> ...)."""
    keep: int = 5
    """Rotated files kept besides the current one."""
    fsync: bool = True
    """fsync after every record, so an alert that was reported written survives a power cut.
    Turn off only to spare a flash card on a very chatty network."""

    def validate(self) -> None:
        if self.max_bytes < 4096:
            raise ValueError("max_bytes: must be at least 4096")
        if not 1 <= self.keep <= 100:
            raise ValueError("keep: must be between 1 and 100")
        if self.path is not None and not self.path:
            raise ValueError("path: must not be empty")


@dataclass(frozen=True, slots=True)
class JournalConfig:
    enabled: bool = True
    socket_path: str = DEFAULT_JOURNAL_SOCKET
    """journald's native socket. When it does not exist, alerts go to stderr instead."""
    syslog_identifier: str = "phonehome"

    def validate(self) -> None:
        if not self.socket_path.startswith("/"):
            raise ValueError("socket_path: must be an absolute path")
        if len(os.fsencode(self.socket_path)) > 107:
            raise ValueError("socket_path: longer than a unix socket address allows")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.syslog_identifier):
            raise ValueError("syslog_identifier: 1-64 letters, digits, '_', '.', '-'")


_LABEL_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
AM_BUILTIN_LABELS: Final = frozenset(
    {"alertname", "rule", "severity", "device", "device_name", "identifier", "destination"}
    | {"vendor", "dst_country"}
)


@dataclass(frozen=True, slots=True)
class AlertmanagerConfig:
    url: str | None = None
    """Alertmanager's base URL, e.g. ``http://127.0.0.1:9093``; unset (and no `urls`)
    disables the sink."""
    urls: tuple[str, ...] = ()
    """Every Alertmanager of an HA cluster: each gets every alert (its own queue, retries and
    counters, so a dead one holds nothing back) and the cluster deduplicates. Use either
    `url` or `urls`, not both."""
    timeout: float = 5.0
    """Seconds for one POST (connect and response)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Extra static labels on every alert, e.g. ``{site = "home"}``."""
    generator_url: str | None = None
    """Optional link shown with the alert (a dashboard, the sensor's status page)."""
    queue_size: int = 1000
    """Alerts waiting for the sender thread; beyond it new alerts are dropped and counted."""
    batch_size: int = 64
    """Alerts sent in one POST at most."""
    retries: int = 5
    """Further attempts after a failed POST before the batch is dropped (and counted)."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled each time, up to `backoff_max`."""
    backoff_max: float = 60.0

    @property
    def targets(self) -> tuple[str, ...]:
        """The Alertmanager URLs alerts go to: `urls`, or `url` alone; empty: none."""
        return self.urls or ((self.url,) if self.url is not None else ())

    def validate(self) -> None:
        if self.url is not None:
            if self.urls:
                raise ValueError("urls: set either url or urls, not both")
            _check_am_url("url", self.url)
        for i, url in enumerate(self.urls):
            _check_am_url(f"urls[{i}]", url)
        if len(self.urls) > 16:
            raise ValueError("urls: at most 16 Alertmanagers")
        if len({_am_endpoint(u) for u in self.urls}) != len(self.urls):
            raise ValueError("urls: the same Alertmanager twice")
        if not 0 < self.timeout <= 300:
            raise ValueError("timeout: must be between 0 and 300 seconds")
        for name in self.labels:
            if not _LABEL_RE.fullmatch(name):
                raise ValueError(f"labels: {name!r} is not a valid label name")
            if name in AM_BUILTIN_LABELS:
                raise ValueError(f"labels: {name!r} is set by the sensor itself")
        if not 1 <= self.queue_size <= 1_000_000:
            raise ValueError("queue_size: must be between 1 and 1000000")
        if not 1 <= self.batch_size <= 10_000:
            raise ValueError("batch_size: must be between 1 and 10000")
        if not 0 <= self.retries <= 100:
            raise ValueError("retries: must be between 0 and 100")
        if self.backoff < 0 or self.backoff_max < self.backoff:
            raise ValueError("backoff: must be >= 0 and not above backoff_max")


def _check_am_url(key: str, url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{key}: bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key}: must be an http:// or https:// URL with a host")


def _am_endpoint(url: str) -> str:
    """``host:port/path`` of an Alertmanager URL, without credentials: for logs, metrics and
    telling two URLs apart."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}{parts.path.rstrip('/')}"
