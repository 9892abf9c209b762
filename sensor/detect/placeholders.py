"""Placeholder identifiers: values that have the shape of an IMEI, a MAC, an advertising ID...
but identify no one (Android's constant MAC, an opted-out all-zero advertising ID, the
emulator's IMEI). Listed with their sources in ``sensor/data/placeholders.toml``.

A finding of a placeholder is not an identifier leak, and a placeholder MAC is not a device;
both are counted by the entry's ``reason``. Pure lookups; the file is read once.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

from sensor.detect.identifiers import canonicalize, keyed_hash

DEFAULT_PATH: Final = Path(__file__).resolve().parent.parent / "data" / "placeholders.toml"
_KINDS: Final = frozenset(
    ("imei", "imsi", "iccid", "phone", "mac", "email", "serial", "android_id", "ad_id")
)
_MATCHES: Final = {"group_bit": "mac", "domain": "email"}
"""Rules instead of values, and the kind each applies to."""
_REASON_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_KEYS: Final = frozenset(("kind", "value", "match", "domain", "reason", "source", "note"))


class PlaceholderError(ValueError):
    """The placeholders file is broken: names the file, the entry and the reason."""


@dataclass(frozen=True, slots=True)
class Placeholder:
    kind: str
    value: str | None
    """Canonical value (None for a rule)."""
    match: str | None
    domain: str | None
    """For ``match = "domain"``: every address at this domain."""
    reason: str
    source: str


class Placeholders:
    """Lookups over the entries: by canonical value, by keyed hash, by MAC address."""

    def __init__(self, entries: Iterable[Placeholder]) -> None:
        self.entries: Final = tuple(entries)
        self._values: dict[tuple[str, str], str] = {}
        self._group_bit: str | None = None
        self._domains: dict[str, str] = {}
        for e in self.entries:
            if e.value is not None:
                self._values.setdefault((e.kind, e.value), e.reason)
            elif e.match == "group_bit":
                self._group_bit = e.reason
            elif e.match == "domain" and e.domain is not None:
                self._domains.setdefault(e.domain, e.reason)
        self.reasons: Final = tuple(sorted({e.reason for e in self.entries}))
        """Every reason there is: the bounded vocabulary of the metric label."""

    @classmethod
    def load(cls, path: Path | None = None) -> Placeholders:
        p = path or DEFAULT_PATH
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise PlaceholderError(f"{p}: {exc}") from None
        return cls(_parse(data, str(p)))

    def reason(self, kind: str, canonical: str) -> str | None:
        """Why ``canonical`` (a value of `kind` as `canonicalize` spells it) is a
        placeholder, or None if it is not one."""
        hit = self._values.get((kind, canonical))
        if hit is not None:
            return hit
        if kind == "mac" and self._group_bit is not None and _group_bit(canonical):
            return self._group_bit
        if kind == "email":
            return self.email_domain_reason(canonical.rpartition("@")[2])
        return None

    def email_domain_reason(self, domain: str) -> str | None:
        """`reason` for an e-mail address at `domain` (all its addresses are names)."""
        return self._domains.get(domain.lower())

    def mac_reason(self, mac: str) -> str | None:
        """`reason` for a MAC in any common spelling (None if it is not a MAC at all)."""
        canonical = canonicalize("mac", mac)
        return None if canonical is None else self.reason("mac", canonical)

    def by_keyed_hash(self, key: bytes) -> dict[tuple[str, str], str]:
        """(kind, keyed hash) -> reason for every listed value, under an install's key: how
        a finding in any encoding (base64, a digest...) is recognised without its value."""
        return {(k, keyed_hash(key, k, v)): r for (k, v), r in self._values.items()}


def _group_bit(canonical_mac: str) -> bool:
    try:
        return bool(int(canonical_mac[:2], 16) & 1)
    except ValueError:
        return False


def _parse(data: Mapping[str, Any], source: str) -> list[Placeholder]:
    if data.get("format") != 1:
        raise PlaceholderError(f"{source}: format: expected 1")
    unknown = set(data) - {"format", "placeholder"}
    if unknown:
        raise PlaceholderError(f"{source}: {sorted(unknown)[0]}: unknown key")
    rows = data.get("placeholder")
    if not isinstance(rows, list) or not rows:
        raise PlaceholderError(f"{source}: placeholder: expected a list of tables")
    out = []
    for i, row in enumerate(rows):
        where = f"{source}: placeholder[{i}]"
        if not isinstance(row, dict):
            raise PlaceholderError(f"{where}: expected a table")
        extra = set(row) - _KEYS
        if extra:
            raise PlaceholderError(f"{where}.{sorted(extra)[0]}: unknown key")
        for key in ("kind", "reason", "source"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise PlaceholderError(f"{where}.{key}: expected a non-empty string")
        kind, reason = row["kind"], row["reason"]
        if kind not in _KINDS:
            raise PlaceholderError(f"{where}.kind: unknown identifier kind {kind!r}")
        if not _REASON_RE.fullmatch(reason):
            raise PlaceholderError(f"{where}.reason: 1-32 of a-z, 0-9, _ (a metric label)")
        value, match = row.get("value"), row.get("match")
        if (value is None) == (match is None):
            raise PlaceholderError(f"{where}: exactly one of value and match")
        canonical = None
        if value is not None:
            canonical = canonicalize(kind, str(value))  # no home country: +CC numbers only
            if canonical is None:
                raise PlaceholderError(f"{where}.value: not a valid {kind}")
        elif _MATCHES.get(str(match)) != kind:
            raise PlaceholderError(f"{where}.match: unknown rule {match!r} for {kind}")
        domain = row.get("domain")
        if (match == "domain") != isinstance(domain, str) or domain == "":
            raise PlaceholderError(f"{where}.domain: a domain with match = 'domain' (only)")
        out.append(
            Placeholder(
                kind, canonical, match, domain.lower() if domain else None, reason, row["source"]
            )
        )
    return out


@cache
def default() -> Placeholders:
    """The packaged list (read once per process)."""
    return Placeholders.load()
