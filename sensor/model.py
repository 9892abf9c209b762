"""The shared vocabulary: typed records handed from one pipeline stage to the next.

Imports nothing else from the package. Decoders return these records (or a `Weird`), the flow
table holds `Flow` and `Device`, the reporters serialise them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NameSource = Literal["tls", "quic", "http", "dns"]


@dataclass(frozen=True, slots=True)
class Weird:
    """Input a decoder could not make sense of. Counted by `reason`, never raised."""

    reason: str
    """Dotted, stable reason name, e.g. ``"tls.bad_record"``; used as a counter label."""


# --- decoder outputs -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One resource record from the answer (or additional) section."""

    name: str
    """Owner name, lower case, no trailing dot."""
    rtype: int
    """RR type number (1 A, 28 AAAA, 5 CNAME, 64 SVCB, 65 HTTPS)."""
    ttl: int
    value: str
    """Address text for A/AAAA (and SVCB/HTTPS ipv4hint/ipv6hint), target name for CNAME,
    target name for SVCB/HTTPS."""


@dataclass(frozen=True, slots=True)
class DnsMessage:
    id: int
    is_response: bool
    rcode: int
    questions: tuple[tuple[str, int], ...]
    """(name, qtype) pairs, names lower case without trailing dot."""
    answers: tuple[DnsRecord, ...]
    """Answer-section records plus address hints taken from SVCB/HTTPS records."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a TLS (or QUIC) ClientHello says about where the client is going."""

    sni: str | None
    legacy_version: int
    """The ClientHello's legacy_version field (0x0303 for TLS 1.2 and 1.3)."""
    supported_versions: tuple[int, ...] = ()
    alpn: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    version: str
    host: str | None
    user_agent: str | None
    headers: tuple[tuple[str, str], ...]
    """All request headers in order, names lower case."""
    body: bytes
    """The first bytes of the body, at most the budget the caller gave."""
    content_length: int | None


@dataclass(frozen=True, slots=True)
class DhcpMessage:
    version: Literal[4, 6]
    message_type: int | None
    client_mac: str | None
    """aa:bb:cc:dd:ee:ff; from chaddr (v4) or a DUID that carries a link-layer address (v6)."""
    requested_ip: str | None
    hostname: str | None
    """Option 12 (v4) or the client FQDN option (v4 81, v6 39)."""
    vendor_class: str | None
    """Option 60 (v4) or option 16 (v6)."""
    param_list: tuple[int, ...]
    """Option 55 (v4) or the option request option 6 (v6)."""
    client_ip: str | None = None
    your_ip: str | None = None


# --- flows and devices ------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Flow:
    """A bidirectional transport conversation; "up" is from the LAN device to the server."""

    uid: str
    proto: Literal["tcp", "udp"]
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    device_mac: str | None
    first_seen: float
    last_seen: float
    bytes_up: int = 0
    bytes_down: int = 0
    packets_up: int = 0
    packets_down: int = 0
    server_name: str | None = None
    name_source: NameSource | None = None
    http: list[HttpRequest] = field(default_factory=list)
    """HTTP requests seen on the flow (bounded by the caller)."""
    alpn: tuple[str, ...] = ()
    extra: dict[str, object] = field(default_factory=dict)
    """Fields that enrichers add (vendor, country, ...), serialised as-is."""


@dataclass(slots=True, eq=False)
class Device:
    """A LAN device, keyed by MAC."""

    mac: str
    ips: set[str] = field(default_factory=set)
    hostname: str | None = None
    dhcp_vendor_class: str | None = None
    dhcp_params: tuple[int, ...] = ()
    user_agents: list[str] = field(default_factory=list)
    first_seen: float = 0.0
    last_seen: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)
