"""TOML configuration into typed, validated settings.

Every section is a dataclass; the loader walks the TOML tables against those dataclasses, so an
unknown key, a wrong type or a bad value is an error naming the file, the key and the reason.
Defaults are the dataclass defaults: a missing file section means "all defaults".

This module parses with the standard library only (types, ranges, syntax); `sensor.validate`
above it judges what needs a library or a maintained list (country codes, identifiers, source
names) and the files the configuration names (`check_files`). Callers use
`sensor.validate.load_config`. Every error is a `ConfigError`: one line, file, key, reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import math
import os
import re
import socket
import stat
import tomllib
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

# The alert and sink settings live beside the code they tune (their validation needs its rule
# names and label sets); the loader treats them like every other section.
from sensor.alerts import AlertsConfig
from sensor.metrics import MetricsConfig
from sensor.policy import PolicyConfig, PolicyRuleConfig, check_policy
from sensor.sinks import AlertmanagerConfig, EventLogConfig, JournalConfig

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

_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_AT = re.compile(
    r"^(?P<msg>.*?) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$"
)

MAX_CONFIG_BYTES: Final = 1 << 20
"""A configuration file is a few kilobytes; anything beyond this is not one."""


class ConfigError(ValueError):
    """A configuration problem; the message names file, key and reason, on one line.

    `key` is the dotted setting (``flows.max_flows``, ``devices[1].mac``), a position for
    syntax errors (``line 3, column 7``), or empty when the file as a whole is the problem."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        source, key, reason = one_line(source), one_line(key), one_line(reason)
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


def one_line(text: str) -> str:
    """Control characters escaped: a message stays one line and cannot drive a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def dotted(prefix: str, name: str) -> str:
    """`prefix.name`, the name quoted as TOML would when it is not a bare key."""
    if not _BARE_KEY.fullmatch(name):
        name = json.dumps(name, ensure_ascii=False)
    return f"{prefix}.{name}" if prefix else name


_TOML_TYPES: Final[dict[type, str]] = {
    str: "string",
    int: "integer",
    float: "float",
    bool: "boolean",
    list: "array",
    dict: "table",
    dt.datetime: "date-time",
    dt.date: "date",
    dt.time: "time",
}


def _toml_type(value: object) -> str:
    return _TOML_TYPES.get(type(value), type(value).__name__)


def site_name(cfg: Config, hostname: str | None = None) -> str:
    """The site's name: `site.name`, else the older `alertmanager.labels.site`, else the host
    name made into one (lower case, other characters as '-', first label only), else
    "default". Every alert and ``phonehome_site_info`` carry it, so two sensors of a fleet
    must differ here (docs/FLEET.md says to set `site.name`)."""
    if cfg.site.name is not None:
        return cfg.site.name
    old = cfg.alertmanager.labels.get("site")
    if old:
        return old
    host = (hostname if hostname is not None else socket.gethostname()).split(".")[0].lower()
    host = re.sub(r"[^a-z0-9._-]", "-", host).lstrip("._-")[:63]
    return host or "default"


def normalize_mac(text: str) -> str:
    """'AA-BB-CC-DD-EE-FF' / 'aabbccddeeff' -> 'aa:bb:cc:dd:ee:ff'; ValueError if not a MAC."""
    t = text.strip().lower()
    if not _MAC_RE.match(t):
        raise ValueError(f"not a MAC address: {text!r}")
    hexdigits = t.replace(":", "").replace("-", "")
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2))


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


@dataclass(frozen=True, slots=True)
class RelaysConfig:
    vpn_lists: dict[str, str] = field(default_factory=dict)
    """The owner's VPN endpoint lists: name -> file (one address or prefix a line, "#"
    comments; or a JSON array). A flow to an address in one is relay "vpn:<name>"."""
    vpn_protocols: bool = True
    """Mark flows whose first bytes are a WireGuard or OpenVPN client handshake as relay
    "vpn" (weaker evidence than a list: any server can speak them)."""

    def validate(self) -> None:
        for name in self.vpn_lists:
            if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,31}", name):
                raise ValueError(
                    f"{dotted('vpn_lists', name)}: a name is 1-32 of a-z, 0-9, '.', '_', '-' "
                    "(it becomes part of the relay name and a metric label)"
                )


IDENTIFIER_KINDS = (
    "imei",
    "imsi",
    "iccid",
    "phone",
    "mac",
    "serial",
    "email",
    "android_id",
    "ad_id",
)


def _validate_identifiers(table: dict[str, tuple[str, ...]], prefix: str = "") -> None:
    for kind, values in table.items():
        if kind not in IDENTIFIER_KINDS:
            raise ValueError(f"{prefix}{kind}: unknown identifier kind")
        for v in values:
            if not v.strip():
                raise ValueError(f"{prefix}{kind}: empty value")


@dataclass(frozen=True, slots=True)
class IdentifiersConfig:
    """The owner's own identifiers, matched in every encoding (never logged or exported)."""

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
        return {k: getattr(self, k) for k in IDENTIFIER_KINDS if getattr(self, k)}


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


@dataclass(frozen=True, slots=True)
class Config:
    site: SiteConfig = field(default_factory=SiteConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    geo: GeoConfig = field(default_factory=GeoConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    eventlog: EventLogConfig = field(default_factory=EventLogConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    alertmanager: AlertmanagerConfig = field(default_factory=AlertmanagerConfig)
    identifiers: IdentifiersConfig = field(default_factory=IdentifiersConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    devices: tuple[DeviceConfig, ...] = ()
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    relays: RelaysConfig = field(default_factory=RelaysConfig)
    source: str = "<defaults>"


_SECTIONS: dict[str, type[Any]] = {
    "site": SiteConfig,
    "paths": PathsConfig,
    "flows": FlowsConfig,
    "dns": DnsConfig,
    "geo": GeoConfig,
    "update": UpdateConfig,
    "alerts": AlertsConfig,
    "eventlog": EventLogConfig,
    "journal": JournalConfig,
    "alertmanager": AlertmanagerConfig,
    "identifiers": IdentifiersConfig,
    "detect": DetectConfig,
    "daemon": DaemonConfig,
    "metrics": MetricsConfig,
    "relays": RelaysConfig,
}


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """Check `value` against a type hint of the simple kinds settings use."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, source, key)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise ConfigError(source, key, "; ".join(errors))
    got = _toml_type(value)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(source, key, f"expected a list, got {got}")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_coerce(v, item, source, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a table, got {got}")
        _, vtype = typing.get_args(hint)
        return {str(k): _coerce(v, vtype, source, dotted(key, k)) for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(source, key, f"expected a number, got {got}")
        if not math.isfinite(value):  # TOML has inf and nan: no timeout or bound means them
            raise ConfigError(source, key, f"expected a finite number, got {value}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"expected an integer, got {got}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true or false, got {got}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"expected a string, got {got}")
        return value
    raise ConfigError(source, key, f"unsupported setting type {hint!r}")


def _build(cls: type[Any], table: Any, source: str, prefix: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(source, prefix, f"expected a table, got {_toml_type(table)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        name = dotted(prefix, key)
        if key not in names:
            raise ConfigError(source, name, "unknown key")
        kwargs[key] = _coerce(value, hints[key], source, name)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(source, prefix, f"missing required key ({exc})") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            # validate() says "key: reason"; lift the key into the dotted name
            name, sep, reason = str(exc).partition(": ")
            if sep and name.split(".")[0].split("[")[0] in names:
                raise ConfigError(source, f"{prefix}.{name}", reason) from None
            raise ConfigError(source, prefix, str(exc)) from None
    return obj


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a parsed TOML document into a Config."""
    sections: dict[str, Any] = {}
    devices: list[DeviceConfig] = []
    for key, value in data.items():
        if key == "devices":
            if not isinstance(value, list):
                raise ConfigError(
                    source,
                    "devices",
                    f"expected an array of tables [[devices]], got {_toml_type(value)}",
                )
            for i, entry in enumerate(value):
                dev = _build(DeviceConfig, entry, source, f"devices[{i}]")
                try:
                    dev = dataclasses.replace(dev, mac=normalize_mac(dev.mac))
                except ValueError as exc:
                    raise ConfigError(source, f"devices[{i}].mac", str(exc)) from None
                devices.append(dev)
        elif key == "policy":
            sections[key] = _parse_policy(value, source)
        elif key in _SECTIONS:
            sections[key] = _build(_SECTIONS[key], value, source, key)
        else:
            raise ConfigError(source, dotted("", key), "unknown section")
    if "policy" in sections:
        # Rules name devices: checked once the whole file (its [[devices]] too) is read.
        try:
            check_policy(sections["policy"], devices)
        except ValueError as exc:
            name, _, reason = str(exc).partition(": ")
            raise ConfigError(source, f"policy.{name}", reason) from None
    cfg = Config(**sections, devices=tuple(devices), source=source)
    _check_site_label(cfg)
    return cfg


def _check_site_label(cfg: Config) -> None:
    """`alertmanager.labels.site` predates `site.name` and is still accepted (it names the
    site when `site.name` is unset), but the two must not disagree: alerts would carry one,
    series the other."""
    old = cfg.alertmanager.labels.get("site")
    if old is not None and cfg.site.name is not None and old != cfg.site.name:
        raise ConfigError(
            cfg.source, "alertmanager.labels.site", "differs from site.name; set site.name only"
        )


def _parse_policy(table: Any, source: str) -> PolicyConfig:
    """`[policy]` with its `[[policy.rules]]`: the rules are tables of their own."""
    if not isinstance(table, dict):
        raise ConfigError(source, "policy", f"expected a table, got {_toml_type(table)}")
    rest = {k: v for k, v in table.items() if k != "rules"}
    rules_raw = table.get("rules", [])
    if not isinstance(rules_raw, list):
        raise ConfigError(
            source,
            "policy.rules",
            f"expected an array of tables [[policy.rules]], got {_toml_type(rules_raw)}",
        )
    rules = tuple(
        _build(PolicyRuleConfig, entry, source, f"policy.rules[{i}]")
        for i, entry in enumerate(rules_raw)
    )
    base = _build(PolicyConfig, rest, source, "policy")
    policy: PolicyConfig = dataclasses.replace(base, rules=rules)
    try:
        policy.validate()
    except ValueError as exc:
        name, _, reason = str(exc).partition(": ")
        raise ConfigError(source, f"policy.{name}", reason) from None
    return policy


def load_config(path: str | Path | None) -> Config:
    """Read and parse a TOML file; None gives the embedded defaults. Only the file itself
    is read. `sensor.validate.load_config` is this plus the checks that need libraries."""
    if path is None:
        return Config()
    source = str(path)
    raw = _read_config(source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        column = len(raw[start : exc.start].decode("utf-8", "replace")) + 1
        raise ConfigError(
            source, f"line {line}, column {column}", f"not UTF-8: byte 0x{raw[exc.start]:02x}"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_AT.match(str(exc))
        if m is None:
            raise ConfigError(source, "", f"invalid TOML: {exc}") from None
        if m["line"]:
            where = f"line {m['line']}, column {m['col']}"
        else:
            where = f"line {max(len(text.splitlines()), 1)}, end of file"
        raise ConfigError(source, where, f"invalid TOML: {m['msg']}") from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(source, "", "invalid TOML: nested too deeply") from None
    return parse_config(data, source)


def _read_config(source: str) -> bytes:
    """The file's bytes; ConfigError unless it is a readable regular file of sane size.
    O_NONBLOCK: opening a FIFO must not hang `check` or the daemon's reload."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(source, "", "cannot read: is a directory")
        if not stat.S_ISREG(mode):
            raise ConfigError(source, "", "cannot read: not a regular file")
        chunks: list[bytes] = []
        got = 0
        while got <= MAX_CONFIG_BYTES and (chunk := os.read(fd, MAX_CONFIG_BYTES + 1 - got)):
            chunks.append(chunk)
            got += len(chunk)
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(source, "", f"larger than {MAX_CONFIG_BYTES} bytes: not a configuration")
    return raw
