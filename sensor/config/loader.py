"""The loader: a TOML file into a typed `Config`.

It walks the TOML tables against the section dataclasses, so an unknown key, a wrong type or a
bad value is an error naming the file, the key and the reason. Defaults are the dataclass
defaults: a missing file section means "all defaults". Standard library only; callers use
`sensor.validate.load_config`, which adds the checks that need libraries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import socket
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sensor.config.common import ConfigError, dotted, normalize_mac
from sensor.config.encrypted import DnsBypassConfig, RelaysConfig
from sensor.config.outputs import (
    AlertmanagerConfig,
    AlertsConfig,
    EventLogConfig,
    JournalConfig,
    MetricsConfig,
)
from sensor.config.policy import PolicyConfig, PolicyRuleConfig, check_policy
from sensor.config.sections import (
    DaemonConfig,
    DetectConfig,
    DeviceConfig,
    DnsConfig,
    FlowsConfig,
    GeoConfig,
    IdentifiersConfig,
    PathsConfig,
    SiteConfig,
    UpdateConfig,
)

_TOML_AT = re.compile(
    r"^(?P<msg>.*?) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$"
)

MAX_CONFIG_BYTES: Final = 1 << 20
"""A configuration file is a few kilobytes; anything beyond this is not one."""


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
    dns_bypass: DnsBypassConfig = field(default_factory=DnsBypassConfig)
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
    "dns_bypass": DnsBypassConfig,
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
