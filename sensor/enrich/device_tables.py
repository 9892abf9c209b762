"""The device hint tables of ``sensor/data/devices.toml``, read and checked once.

Four ordered lists of patterns (OUI organisations, Android model strings, User-Agents, DHCP
host names), each naming a company and maybe a kind of device; `sensor.enrich.device` reads
them. Data, not code, so a new brand is a data change. A broken file is a `DeviceTablesError`
naming the file, the entry and the reason.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

DEFAULT_PATH: Final = Path(__file__).resolve().parent.parent / "data" / "devices.toml"
KINDS: Final = frozenset(("phone", "tablet", "computer", "tv", "iot"))
"""Kinds a table may claim (config.DEVICE_KINDS but "unknown", which no hint claims)."""
HostnameRank = Literal["strong", "weak", "none"]
_HOSTNAME_RANKS: Final = ("strong", "weak", "none")

_FLAGS: Final = {"oui": re.IGNORECASE, "model": 0, "user_agent": 0, "hostname": re.IGNORECASE}
"""How each list's patterns are compiled (the file's header says the same)."""
_KEYS: Final = {
    "oui": frozenset(("pattern", "vendor", "kind")),
    "model": frozenset(("pattern", "vendor", "kind")),
    "user_agent": frozenset(("pattern", "vendor", "kind", "label", "os", "model", "model_group")),
    "hostname": frozenset(("pattern", "vendor", "kind", "rank")),
}


class DeviceTablesError(ValueError):
    """The device tables file is broken: names the file, the entry and the reason."""


@dataclass(frozen=True, slots=True)
class BrandPattern:
    """An OUI organisation or Android model pattern: the company, and the kind when the
    company's devices (or this model family) are almost always one kind."""

    pattern: re.Pattern[str]
    vendor: str
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class UaRule:
    """A User-Agent pattern naming the form factor (or just the platform)."""

    pattern: re.Pattern[str]
    vendor: str | None
    kind: str | None
    label: str
    """The evidence text."""
    os: str | None = None
    model_group: int | None = None
    """The group of the match holding the model (0: all of it); else `model`, if any."""
    model: str | None = None


@dataclass(frozen=True, slots=True)
class HostnamePattern:
    """A DHCP host-name pattern. `rank`: "strong" when the name says the form factor, "weak"
    for a guess, "none" when it names the company only."""

    pattern: re.Pattern[str]
    vendor: str | None
    kind: str | None
    rank: HostnameRank


@dataclass(frozen=True, slots=True)
class DeviceTables:
    oui: tuple[BrandPattern, ...]
    model: tuple[BrandPattern, ...]
    user_agent: tuple[UaRule, ...]
    hostname: tuple[HostnamePattern, ...]


def load(path: Path | None = None) -> DeviceTables:
    """Read and check a tables file (default: the shipped one)."""
    p = path or DEFAULT_PATH
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DeviceTablesError(f"{p}: {exc}") from None
    return parse(data, str(p))


@functools.cache
def default_tables() -> DeviceTables:
    """The shipped tables, read on first use and kept."""
    return load()


def parse(data: Mapping[str, Any], source: str) -> DeviceTables:
    if data.get("format") != 1:
        raise DeviceTablesError(f"{source}: format: must be 1")
    unknown = sorted(set(data) - {"format", *_KEYS})
    if unknown:
        raise DeviceTablesError(f"{source}: {unknown[0]}: unknown list")
    lists: dict[str, list[dict[str, Any]]] = {}
    for name in _KEYS:
        entries = data.get(name, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise DeviceTablesError(f"{source}: {name}: must be an array of tables")
        lists[name] = entries
    return DeviceTables(
        oui=tuple(_brand(e, source, "oui", i) for i, e in enumerate(lists["oui"])),
        model=tuple(_brand(e, source, "model", i) for i, e in enumerate(lists["model"])),
        user_agent=tuple(_ua_rule(e, source, i) for i, e in enumerate(lists["user_agent"])),
        hostname=tuple(_hostname(e, source, i) for i, e in enumerate(lists["hostname"])),
    )


class _Entry:
    """Typed reads of one entry, errors naming ``file: list[i]: key: reason``."""

    def __init__(self, entry: Mapping[str, Any], source: str, name: str, index: int) -> None:
        self.entry = entry
        self.where = f"{source}: {name}[{index}]"
        extra = sorted(set(entry) - _KEYS[name])
        if extra:
            raise self.error(extra[0], "unknown key")
        self.pattern = self._pattern(name)
        self.kind = self.text("kind")
        if self.kind is not None and self.kind not in KINDS:
            raise self.error("kind", f"must be one of {', '.join(sorted(KINDS))}")

    def error(self, key: str, reason: str) -> DeviceTablesError:
        return DeviceTablesError(f"{self.where}: {key}: {reason}")

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self.entry.get(key)
        if value is None:
            if required:
                raise self.error(key, "missing")
            return None
        if not isinstance(value, str) or not value:
            raise self.error(key, "must be a non-empty string")
        return value

    def _pattern(self, name: str) -> re.Pattern[str]:
        text = self.text("pattern", required=True)
        assert text is not None
        try:
            return re.compile(text, _FLAGS[name])
        except re.error as exc:
            raise self.error("pattern", f"not a regular expression: {exc}") from None


def _brand(entry: Mapping[str, Any], source: str, name: str, index: int) -> BrandPattern:
    e = _Entry(entry, source, name, index)
    vendor = e.text("vendor", required=True)
    assert vendor is not None
    return BrandPattern(e.pattern, vendor, e.kind)


def _ua_rule(entry: Mapping[str, Any], source: str, index: int) -> UaRule:
    e = _Entry(entry, source, "user_agent", index)
    label = e.text("label", required=True)
    assert label is not None
    group = entry.get("model_group")
    if group is not None:
        if not isinstance(group, int) or isinstance(group, bool):
            raise e.error("model_group", "must be a whole number")
        if not 0 <= group <= e.pattern.groups:
            raise e.error("model_group", f"the pattern has {e.pattern.groups} group(s)")
        if "model" in entry:
            raise e.error("model", "set either model or model_group, not both")
    return UaRule(e.pattern, e.text("vendor"), e.kind, label, e.text("os"), group, e.text("model"))


def _hostname(entry: Mapping[str, Any], source: str, index: int) -> HostnamePattern:
    e = _Entry(entry, source, "hostname", index)
    rank = entry.get("rank")
    if rank not in _HOSTNAME_RANKS:
        raise e.error("rank", f"must be one of {', '.join(_HOSTNAME_RANKS)}")
    return HostnamePattern(e.pattern, e.text("vendor"), e.kind, rank)
