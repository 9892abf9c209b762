"""The ``[metrics]`` settings (`MetricsConfig`) and the collector names they may switch off.

Standard library only: config.py reads this without the exporter behind it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

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


# --- settings ---------------------------------------------------------------------------------


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


class MetricsError(Exception):
    """The endpoint cannot start (address in use, unreadable key or credential file)."""
