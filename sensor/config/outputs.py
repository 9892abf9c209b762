"""The output sections: alert rules (``[alerts]``), the sinks (``[eventlog]``, ``[journal]``,
``[alertmanager]``) and the metrics endpoint (``[metrics]``). Standard library only; the code
they tune imports them from here."""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Final

from sensor.model import RULES

# --- alerts -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    suppress_window: float = 3600.0
    """Seconds during which repeats of an alert (same device, rule, destination, identifier
    kind) are counted instead of delivered; also how long an Alertmanager alert lasts."""
    rate_per_second: float = 10.0
    """Alerts per second reaching the sinks, on average (token bucket refill)."""
    rate_burst: int = 100
    """Alerts that may reach the sinks at once (token bucket size)."""
    foreign_upload_bytes: int | None = None
    """foreign_upload fires when more than this many bytes go to one party abroad within one
    upload_window; unset (the default), the rule is off."""
    new_party_bytes: int = 1_000_000
    """new_party_upload: bytes within one upload_window to a party not uploaded to before."""
    new_party_unseen: float = 7 * 86400.0
    """new_party_upload: a party the device sent nothing to for this long is new again."""
    new_party_learning: float = 86400.0
    """Seconds after a device is first seen during which its upload parties are learned
    without new_party_upload alerts."""
    upload_window: float = 3600.0
    """Length of the sliding upload window and of the anomaly baseline's periods (seconds)."""
    anomaly_k: float = 4.0
    """foreign_upload_anomaly: standard deviations above the mean."""
    anomaly_alpha: float = 0.05
    """Weight of the newest period in the exponentially weighted baseline (0.05 remembers
    roughly the last 20 periods)."""
    anomaly_min_ratio: float = 2.0
    """foreign_upload_anomaly: the period's total must also be this many times the mean."""
    anomaly_floor_bytes: int = 1_000_000
    """foreign_upload_anomaly: and above this many bytes."""
    anomaly_peak_ratio: float = 3.0
    """foreign_upload_anomaly: and above this many times the device's decaying peak period
    (0: no peak condition)."""
    anomaly_peak_halflife: float = 7 * 86400.0
    """Half-life of the peak period total (seconds)."""
    anomaly_min_periods: int = 24
    """Completed periods of a device's history before foreign_upload_anomaly may fire."""
    new_country_learning: float = 3600.0
    """Seconds after a device is first seen during which its countries are learned without
    new_country alerts."""
    new_fingerprint_learning: float = 86400.0
    """Seconds after a device is first seen during which its JA4 fingerprints are learned
    without new_fingerprint alerts."""
    disabled_rules: tuple[str, ...] = ()
    """Rules that never fire (counted as disabled)."""
    dns_bypass_severity: str = "info"
    """Severity of dns_bypass alerts: "info", "warning" or "critical"."""
    max_devices: int = 4096
    """Devices with learning and baseline state; the least recently seen go first."""
    max_contacts: int = 65536
    """Remembered (device, country) pairs; the least recently used go first."""
    max_suppressions: int = 65536
    """Open suppression windows; the oldest close early beyond it."""
    max_upload_counters: int = 16384
    """(device, party, jurisdiction) upload counters; the least recently used go first."""
    max_upload_parties: int = 65536
    """Remembered (device, party, jurisdiction) uploads for new_party_upload; the least
    recently used go first (one pushed out may alert again)."""

    def validate(self) -> None:
        if not 1.0 <= self.suppress_window <= 7 * 86400:
            raise ValueError("suppress_window: must be between 1 second and 7 days")
        if not self.rate_per_second > 0:
            raise ValueError("rate_per_second: must be positive")
        if self.rate_burst < 1:
            raise ValueError("rate_burst: must be at least 1")
        if self.foreign_upload_bytes is not None and self.foreign_upload_bytes < 1:
            raise ValueError("foreign_upload_bytes: must be positive")
        if self.new_party_bytes < 1:
            raise ValueError("new_party_bytes: must be positive")
        if not 3600.0 <= self.new_party_unseen <= 365 * 86400:
            raise ValueError("new_party_unseen: must be between 1 hour and 365 days")
        if self.new_party_learning < 0:
            raise ValueError("new_party_learning: must not be negative")
        if not 60.0 <= self.upload_window <= 7 * 86400:
            raise ValueError("upload_window: must be between 60 seconds and 7 days")
        if not self.anomaly_k >= 0:
            raise ValueError("anomaly_k: must not be negative")
        if not 0 < self.anomaly_alpha <= 1:
            raise ValueError("anomaly_alpha: must be in (0, 1]")
        if not self.anomaly_min_ratio >= 0:
            raise ValueError("anomaly_min_ratio: must not be negative")
        if not self.anomaly_peak_ratio >= 0:
            raise ValueError("anomaly_peak_ratio: must not be negative")
        if not self.upload_window <= self.anomaly_peak_halflife <= 365 * 86400:
            raise ValueError("anomaly_peak_halflife: must be between upload_window and 365 days")
        if self.anomaly_floor_bytes < 0:
            raise ValueError("anomaly_floor_bytes: must not be negative")
        if self.anomaly_min_periods < 1:
            raise ValueError("anomaly_min_periods: must be at least 1")
        if self.new_country_learning < 0:
            raise ValueError("new_country_learning: must not be negative")
        if not 0 <= self.new_fingerprint_learning <= 365 * 86400:
            raise ValueError("new_fingerprint_learning: must be between 0 and 365 days")
        if self.dns_bypass_severity not in ("critical", "warning", "info"):
            raise ValueError('dns_bypass_severity: must be "info", "warning" or "critical"')
        for name in self.disabled_rules:
            if name not in RULES:
                raise ValueError(f"disabled_rules: unknown rule {name!r}")
        for key in (
            "max_devices",
            "max_contacts",
            "max_suppressions",
            "max_upload_counters",
            "max_upload_parties",
        ):
            if getattr(self, key) < 16:
                raise ValueError(f"{key}: must be at least 16")


# --- sinks ------------------------------------------------------------------------------------

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
        if len({am_endpoint(u) for u in self.urls}) != len(self.urls):
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


def am_endpoint(url: str) -> str:
    """``host:port/path`` of an Alertmanager URL, without credentials: for logs, metrics and
    telling two URLs apart."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}{parts.path.rstrip('/')}"


# --- metrics ----------------------------------------------------------------------------------

DEFAULT_PORT: Final = 14663
"""Above the Prometheus wiki's exporter range (9100-9999, full since 2023) and clear of the
ports common agents take above 10000 (kubelet 10250/10255, kube-proxy 10249/10256, ingress-nginx
10254, Zabbix 10050/10051, netdata 19999, Grafana Agent/Alloy 12345, Istio 15020/15090, ...);
"1-HOME" on a phone keypad."""

COLLECTORS: Final = (
    "info",
    "traffic",
    "exposures",
    "alerts",
    "devices",
    "pipeline",
    "capture",
    "conntrack",
    "data",
    "state",
    "endpoint",
    "process",
    "policy",
)
"""Collector names (the ``collector`` label; `MetricsConfig.disabled_collectors`)."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    """Serve the metrics endpoint."""
    address: str = "127.0.0.1"
    """IP address to listen on (an address literal; "::" or "0.0.0.0" for every interface)."""
    port: int = DEFAULT_PORT
    """TCP port (0 picks a free one: tests)."""
    max_devices: int = 64
    """Devices with series of their own per family; the rest are device="other"."""
    top_vendors: int = 10
    """Parties (the `party` label: the company behind the server name) with series of their
    own per device, by bytes (resp. exposures); the rest, the long tail of bare registrable
    domains among them, are "other". (The key keeps its old name.)"""
    top_countries: int = 10
    """Destination countries with series of their own per device."""
    max_series_per_device: int = 50
    """Label sets per device and family; beyond it a device's new label sets count under
    all-"other" labels."""
    disabled_collectors: tuple[str, ...] = ()
    """Collectors not run (see `COLLECTORS`)."""
    tls_cert_file: str | None = None
    """PEM certificate (chain) for HTTPS; with `tls_key_file`."""
    tls_key_file: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_sha256: str | None = None
    """Hex SHA-256 of the basic-auth password (`printf %s 'pw' | sha256sum`)."""
    basic_auth_password_file: str | None = None
    """Or a file holding the password itself (mode 0600 or stricter)."""
    bearer_token_file: str | None = None
    """A file holding a bearer token (mode 0600 or stricter); `Authorization: Bearer ...`."""
    allow_unauthenticated: bool = False
    """Allow listening on a non-loopback address without basic auth or a bearer token (the
    metrics say which device talks to whom, and where)."""
    scrape_timeout: float = 10.0
    """Seconds a scrape waits for a collection under way elsewhere (`Exporter.render`) before
    answering 503."""
    min_interval: float = 0.5
    """Seconds a collection is reused: a scrape less than this long (or than the collection
    took) after the last one finished is answered from it, so concurrent scrapers cost one
    collection (0: a collection for every scrape, unless one is slow)."""
    max_connections: int = 64
    """Connections open at once (one thread serves them all). At the limit a new one takes
    the place of one from the client address that holds the most: the oldest still sending
    its request, or else the answer gone longest without progress."""
    connection_timeout: float = 5.0
    """Seconds a client has to send its request (TLS handshake included), and again to read
    the answer; then the connection is closed."""

    def validate(self) -> None:
        try:
            addr = ipaddress.ip_address(self.address)
        except ValueError:
            raise ValueError("address: must be an IP address literal") from None
        if not 0 <= self.port <= 65535:
            raise ValueError("port: must be between 0 and 65535")
        if not 1 <= self.max_devices <= 4096:
            raise ValueError("max_devices: must be between 1 and 4096")
        for key in ("top_vendors", "top_countries"):
            if not 1 <= getattr(self, key) <= 1000:
                raise ValueError(f"{key}: must be between 1 and 1000")
        if not 1 <= self.max_series_per_device <= 100_000:
            raise ValueError("max_series_per_device: must be between 1 and 100000")
        for name in self.disabled_collectors:
            if name not in COLLECTORS:
                raise ValueError(f"disabled_collectors: unknown collector {name!r}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file: tls_cert_file and tls_key_file go together")
        pw = (self.basic_auth_password_sha256, self.basic_auth_password_file)
        if self.basic_auth_user is not None:
            if not self.basic_auth_user or ":" in self.basic_auth_user:
                raise ValueError("basic_auth_user: must be non-empty and without ':'")
            if sum(p is not None for p in pw) != 1:
                raise ValueError(
                    "basic_auth_user: needs exactly one of basic_auth_password_sha256 and "
                    "basic_auth_password_file"
                )
        elif any(p is not None for p in pw):
            raise ValueError("basic_auth_user: a basic-auth password needs a user")
        h = self.basic_auth_password_sha256
        if h is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", h):
            raise ValueError("basic_auth_password_sha256: must be 64 hex digits")
        if not 0.1 <= self.scrape_timeout <= 300:
            raise ValueError("scrape_timeout: must be between 0.1 and 300 seconds")
        if not 0 <= self.min_interval <= 60:
            raise ValueError("min_interval: must be between 0 and 60 seconds")
        if not 1 <= self.max_connections <= 1024:
            raise ValueError("max_connections: must be between 1 and 1024")
        if not 0.1 <= self.connection_timeout <= 300:
            raise ValueError("connection_timeout: must be between 0.1 and 300 seconds")
        authenticated = self.basic_auth_user is not None or self.bearer_token_file is not None
        if (
            self.enabled
            and not addr.is_loopback
            and not authenticated
            and not self.allow_unauthenticated
        ):
            raise ValueError(
                "address: a non-loopback address needs basic_auth_user or bearer_token_file "
                "(or allow_unauthenticated = true)"
            )
