"""The sections that tune the data path: site, paths, flows, DNS, geo data, updates, the
owner's identifiers, detection, the daemon and per-device settings. Standard library only:
types, ranges and syntax; `sensor.validate` judges what needs a library."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Final

from sensor.config.common import dotted
from sensor.model import VALUE_KINDS

DEFAULT_LAN_NETWORKS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
)

DEVICE_KINDS = ("phone", "tablet", "computer", "tv", "iot", "unknown")

SITE_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""A site name: safe as a label value, a file name and a DNS label alike."""


@dataclass(frozen=True, slots=True)
class SiteConfig:
    lan_networks: tuple[str, ...] = DEFAULT_LAN_NETWORKS
    """Prefixes whose hosts are LAN devices (the client side of a flow)."""
    home_country: str | None = None
    """ISO 3166-1 alpha-2 code of the country the network is in; "abroad" is any other."""
    name: str | None = None
    """This site's name in a fleet (``phonehome_site_info{site}``, the ``site`` label on every
    alert): lower-case letters, digits, '.', '_', '-', at most 63. Unset: the host name
    (`site_name`)."""

    def validate(self) -> None:
        if self.name is not None and not SITE_NAME_RE.fullmatch(self.name):
            raise ValueError(
                "name: 1-63 lower-case letters, digits, '.', '_' or '-', starting with a "
                "letter or digit"
            )
        for net in self.lan_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"lan_networks: {exc}") from None
        # home_country: ISO 3166-1 membership is judged by sensor.validate (a maintained list)


@dataclass(frozen=True, slots=True)
class PathsConfig:
    state_dir: str = "/var/lib/phonehome"
    """Where downloaded data files, learned identifiers and the event log live."""


@dataclass(frozen=True, slots=True)
class FlowsConfig:
    max_flows: int = 200_000
    """Hard cap on the flow table; the oldest flows are evicted (and counted) beyond it."""
    tcp_idle_timeout: float = 300.0
    udp_idle_timeout: float = 60.0
    inspect_packets: int = 6
    """Payload packets per flow direction handed to the decoders; the rest are only counted."""
    inspect_bytes: int = 65536
    """Payload bytes per flow direction handed to the decoders at most."""
    http_body_budget: int = 4096
    """Bytes of each HTTP request body kept for identifier detection."""
    max_http_requests: int = 8
    """HTTP requests remembered per flow."""
    end_grace: float = 0.25
    """Seconds an ended connection (conntrack DESTROY) stays in the table for its late sampled
    packets: NFLOG hands packets over in batches (flush timeout 50 ms), so the end often comes
    before a short connection's last packets, or all of them. Five flush timeouts: room for a
    busy loop's delay too. Its late packets join it (names, identifiers) and its counters stay
    conntrack's final ones, so the connection is one flow, counted once."""

    def validate(self) -> None:
        if not 0 <= self.end_grace <= 10:
            raise ValueError("end_grace: must be between 0 and 10 seconds")
        if self.max_flows < 16:
            raise ValueError("max_flows: must be at least 16")
        if self.tcp_idle_timeout <= 0:
            raise ValueError("tcp_idle_timeout: must be positive")
        if self.udp_idle_timeout <= 0:
            raise ValueError("udp_idle_timeout: must be positive")
        if self.inspect_bytes < 0:
            raise ValueError("inspect_bytes: must not be negative")
        if not 0 <= self.max_http_requests <= 1024:
            raise ValueError("max_http_requests: must be between 0 and 1024")
        if not 0 <= self.inspect_packets <= 64:
            raise ValueError("inspect_packets: must be between 0 and 64")
        if not 0 <= self.http_body_budget <= 1 << 20:
            raise ValueError("http_body_budget: must be between 0 and 1048576")


@dataclass(frozen=True, slots=True)
class DnsConfig:
    max_cache: int = 65_536
    """Entries in the (client, address) -> name cache; least recently used go first."""
    ttl_grace: float = 0.0
    """Seconds an answer stays usable after its TTL ran out."""

    def validate(self) -> None:
        if self.max_cache < 1:
            raise ValueError("max_cache: must be at least 1")
        if self.ttl_grace < 0:
            raise ValueError("ttl_grace: must not be negative")


@dataclass(frozen=True, slots=True)
class GeoConfig:
    country_db: str | None = None
    """A MaxMind-format country (or city) database (GeoLite2, DB-IP lite); replaces the
    embedded default when set."""
    asn_db: str | None = None
    """A MaxMind-format ASN database."""
    overrides: str | None = None
    """A TOML file of `[[prefix]] net, country, asn, asn_org` entries that win over every
    database (the lab maps the documentation ranges to countries with one)."""


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    urls: dict[str, str] = field(default_factory=dict)
    """Per-source download URL overrides for `phonehome update-data` (source name -> URL)."""
    timeout: float = 60.0
    max_bytes: int = 64 << 20
    """A download larger than this is rejected."""

    def validate(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout: must be positive")
        if self.max_bytes < 1024:
            raise ValueError("max_bytes: must be at least 1024")
        for name, url in self.urls.items():  # the source names: sensor.validate
            try:
                parts = urllib.parse.urlsplit(url)
                host = parts.hostname
            except ValueError:
                host = None
            if host is None or parts.scheme.lower() not in ("http", "https"):
                raise ValueError(
                    f"{dotted('urls', name)}: must be an http:// or https:// URL with a host"
                )


def _validate_identifiers(table: dict[str, tuple[str, ...]], prefix: str = "") -> None:
    for kind, values in table.items():
        if kind not in VALUE_KINDS:
            raise ValueError(f"{prefix}{kind}: unknown identifier kind")
        for v in values:
            if not v.strip():
                raise ValueError(f"{prefix}{kind}: empty value")


@dataclass(frozen=True, slots=True)
class IdentifiersConfig:
    """The owner's own identifiers, matched in every encoding (never logged or exported). One
    field per `sensor.model.VALUE_KINDS` (tests/test_vocabulary.py holds them together)."""

    imei: tuple[str, ...] = ()
    imsi: tuple[str, ...] = ()
    iccid: tuple[str, ...] = ()
    phone: tuple[str, ...] = ()
    mac: tuple[str, ...] = ()
    serial: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    android_id: tuple[str, ...] = ()
    ad_id: tuple[str, ...] = ()

    def as_mapping(self) -> dict[str, tuple[str, ...]]:
        return {k: getattr(self, k) for k in VALUE_KINDS if getattr(self, k)}


@dataclass(frozen=True, slots=True)
class DetectConfig:
    learn: bool = True
    """Remember identifiers seen in plaintext, so their later encoded or hashed forms are
    caught too (values in memory only; their keyed hashes on disk)."""
    max_learned: int = 512
    learn_rate: float = 2.0
    """New identifiers a device may teach per second, sustained (`learn_burst` at once): a
    phone has a handful; a host sending a new one with every request is flooding, and what is
    over its rate is dropped and counted (phonehome_identifiers_learned_shed_total{reason=
    "rate"}), its findings still reported."""
    learn_burst: int = 64
    contacts_min: int = 3
    """Distinct valid phone numbers in one message that make it a contact-book upload."""
    key_file: str | None = None
    """The per-install HMAC key for keyed hashes; default `<state_dir>/identity.key`."""

    def validate(self) -> None:
        if not 0 <= self.max_learned <= 100_000:
            raise ValueError("max_learned: must be between 0 and 100000")
        if not 0 < self.learn_rate <= 100_000:
            raise ValueError("learn_rate: must be above 0 and at most 100000")
        if not 1 <= self.learn_burst <= 100_000:
            raise ValueError("learn_burst: must be between 1 and 100000")
        if not 2 <= self.contacts_min <= 100:
            raise ValueError("contacts_min: must be between 2 and 100")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    interfaces: tuple[str, ...] = ()
    """LAN interfaces to watch; default: the interfaces that hold the LAN prefixes."""
    capture: str = "auto"
    """"nflog" (nftables hands each connection's first packets over nfnetlink_log; needs a
    gateway with conntrack), "packet" (AF_PACKET with a BPF filter), or "auto" (nflog when
    the accounting is conntrack, packet otherwise)."""
    accounting: str = "auto"
    """"conntrack" (the kernel counts every forwarded flow's bytes), "capture" (count the
    captured packets: bridges and mirror ports; the filter is widened to everything), or
    "auto" (conntrack when available)."""
    nflog_group: int = 7
    first_packets: int = 10
    """Packets of each connection (both directions together) handed to the decoders."""
    snaplen: int = 2048
    host_sample_rate: int = 5000
    """nflog capture: packets a second one LAN host may have sampled, on average (its DNS and
    its connections' first packets); a flooding host's excess is counted, not decoded, so the
    other devices' packets still get through (see docs/RELIABILITY.md)."""
    host_sample_burst: int = 20000
    """nflog capture: packets one LAN host may have sampled at once, above that rate."""
    memory_limit_mb: int = 256
    """The daemon's resident memory bound: above 85% of it, the oldest flows are ended (and
    reported) and the flow table's cap is lowered to what fits. 0: no bound."""
    conntrack_interval: float = 5.0
    """Seconds between conntrack counter dumps (events are lossy under load)."""
    snapshot_interval: float = 5.0
    """Seconds between writes of `<state_dir>/flows.json` (live flows, newest first)."""
    user: str | None = "phonehome"
    """Drop to this user (keeping CAP_NET_RAW and CAP_NET_ADMIN) when started as root."""
    allow_root: bool = False
    """Keep running as root when the user does not exist (the lab, containers)."""

    def validate(self) -> None:
        if self.capture not in ("auto", "nflog", "packet"):
            raise ValueError("capture: must be auto, nflog or packet")
        if self.accounting not in ("auto", "conntrack", "capture"):
            raise ValueError("accounting: must be auto, conntrack or capture")
        if not 0 <= self.nflog_group <= 65535:
            raise ValueError("nflog_group: must be between 0 and 65535")
        if not 2 <= self.first_packets <= 64:
            raise ValueError("first_packets: must be between 2 and 64")
        if not 128 <= self.snaplen <= 65535:
            raise ValueError("snaplen: must be between 128 and 65535")
        if not 1 <= self.host_sample_rate <= 10_000_000:
            raise ValueError("host_sample_rate: must be between 1 and 10000000")
        if not 1 <= self.host_sample_burst <= 10_000_000:
            raise ValueError("host_sample_burst: must be between 1 and 10000000")
        if self.memory_limit_mb != 0 and not 64 <= self.memory_limit_mb <= 1 << 20:
            raise ValueError("memory_limit_mb: must be 0 (no bound) or at least 64")
        if self.conntrack_interval <= 0:
            raise ValueError("conntrack_interval: must be positive")
        if self.snapshot_interval <= 0:
            raise ValueError("snapshot_interval: must be positive")


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    mac: str
    name: str | None = None
    kind: str | None = None
    identifiers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """This device's own identifiers (`{ imei = ["..."], phone = ["..."] }`)."""

    def validate(self) -> None:
        if self.kind is not None and self.kind not in DEVICE_KINDS:
            raise ValueError(f"kind: must be one of {', '.join(DEVICE_KINDS)}")
        _validate_identifiers(self.identifiers, "identifiers.")
