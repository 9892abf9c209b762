"""The ``[policy]`` section and its ``[[policy.rules]]``: parsed and checked here, compiled to
nftables by `sensor.policy`. Standard library only."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sensor.config.sections import DeviceConfig

ACTIONS: Final = ("alert", "block", "allow", "quarantine")
FAIL_MODES: Final = ("open", "closed")
MAX_RULES: Final = 4096
EVERY: Final = "*"

_COUNTRY = re.compile(r"[A-Z]{2}")
_CLOUD = re.compile(r"[a-z0-9][a-z0-9-]{0,31}(:[A-Za-z0-9][A-Za-z0-9_-]{0,63})?")
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")


@dataclass(frozen=True, slots=True)
class PolicyRuleConfig:
    """One `[[policy.rules]]` entry."""

    name: str
    """Shown in `phonehome policy list`, metrics (`rule` label) and events."""
    action: str = "alert"
    """alert (dry run, the default), block, allow or quarantine."""
    devices: tuple[str, ...] = (EVERY,)
    """MACs, configured device names, kinds ("phone", "tv", ...), or "*" (every device)."""
    countries: tuple[str, ...] = ()
    """ISO 3166-1 alpha-2 codes (upper case): where the geo data (and cloud regions) put it."""
    clouds: tuple[str, ...] = ()
    """"provider" or "provider:region" ("aws:ap-southeast-1"), from the cloud range files."""
    asns: tuple[int, ...] = ()
    """AS numbers (geo overrides and MaxMind ASN data know them; the embedded data does not)."""
    parties: tuple[str, ...] = ()
    """Companies behind server names, as vendors.toml spells them ("Xiaomi"): their domains."""
    domains: tuple[str, ...] = ()
    """Registrable domains (and every name below them), learned from DNS answers."""
    identifier_abroad: bool = False
    """The destination of an identifier_abroad alert, for the alerting device only."""
    expires: str | None = None
    """ISO 8601 time ("2027-01-31T00:00:00Z") after which the rule no longer applies."""

    def validate(self) -> None:
        if not _RULE_NAME.fullmatch(self.name):
            raise ValueError("name: 1-64 letters, digits, space, '_', '.', '-'")
        if self.action not in ACTIONS:
            raise ValueError(f"action: must be one of {', '.join(ACTIONS)}")
        if not self.devices:
            raise ValueError('devices: at least one (a MAC, a name, a kind, or "*")')
        for c in self.countries:
            if not _COUNTRY.fullmatch(c):
                raise ValueError(f"countries: {c!r} is not a two-letter upper-case code")
        for c in self.clouds:
            if not _CLOUD.fullmatch(c):
                raise ValueError(f'clouds: {c!r} is not "provider" or "provider:region"')
        for a in self.asns:
            if not 1 <= a <= 0xFFFFFFFF:
                raise ValueError(f"asns: {a} is not an AS number")
        for p in self.parties:
            if not p.strip():
                raise ValueError("parties: empty name")
        for d in self.domains:
            if not _DOMAIN.fullmatch(d):
                raise ValueError(f"domains: {d!r} is not a lower-case domain name")
        if self.expires is not None:
            parse_time(self.expires, "expires")
        has_dest = bool(
            self.countries
            or self.clouds
            or self.asns
            or self.parties
            or self.domains
            or self.identifier_abroad
        )
        if self.action == "quarantine":
            if has_dest:
                raise ValueError("action: quarantine takes no destinations (it allows only LAN)")
            if EVERY in self.devices:
                raise ValueError(
                    'devices: quarantine of "*" would cut every device off; name devices'
                )
        elif not has_dest:
            raise ValueError(
                "needs a destination: countries, clouds, asns, parties, domains or "
                "identifier_abroad"
            )

    def expiry(self) -> float | None:
        return parse_time(self.expires, "expires") if self.expires is not None else None

    @property
    def classes(self) -> list[tuple[str, str]]:
        """(kind, value) of the shared destination classes this rule names."""
        return (
            [("country", c) for c in self.countries]
            + [("cloud", c) for c in self.clouds]
            + [("asn", str(a)) for a in self.asns]
        )


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The `[policy]` section."""

    enabled: bool = True
    """false: the rules are checked but nothing is loaded into the kernel."""
    fail: str = "open"
    """"open": the rules are removed when the daemon stops or crashes (the unit's ExecStopPost);
    "closed": they stay (block rules keep blocking while the sensor is down)."""
    abroad_expiry: float = 86400.0
    """Seconds an identifier_abroad block (device . server pair) lasts."""
    abroad_max: int = 64
    """identifier_abroad blocks at once, per rule: one false alert must not cut the house off
    a shared CDN, and a flood of alerts must not grow the set without bound."""
    resolvers: tuple[str, ...] = ()
    """Addresses whose DNS answers fill the domain sets; default: the gateway's own addresses
    on the LAN interfaces (a device using another resolver cannot steer the sets)."""
    rules: tuple[PolicyRuleConfig, ...] = ()

    def validate(self) -> None:
        if self.fail not in FAIL_MODES:
            raise ValueError("fail: must be open or closed")
        if not 60 <= self.abroad_expiry <= 90 * 86400:
            raise ValueError("abroad_expiry: must be between 60 and 7776000 seconds")
        if not 1 <= self.abroad_max <= 65536:
            raise ValueError("abroad_max: must be between 1 and 65536")
        for r in self.resolvers:
            try:
                ipaddress.ip_address(r)
            except ValueError:
                raise ValueError(f"resolvers: {r!r} is not an address") from None
        if len(self.rules) > MAX_RULES:
            raise ValueError(f"rules: at most {MAX_RULES}")


def parse_time(text: str, key: str) -> float:
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{key}: {text!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise ValueError(f"{key}: {text!r} needs a time zone (e.g. Z)")
    return t.timestamp()


# --- devices ------------------------------------------------------------------------------------


def resolve_devices(
    entries: Sequence[str], devices: Sequence[DeviceConfig]
) -> tuple[str, ...] | None:
    """The MACs a rule's `devices` names, in configuration order; None for every device.
    ValueError names an entry that is no MAC, configured name or kind of a configured device."""
    if EVERY in entries:
        return None
    macs: list[str] = []
    for entry in entries:
        found = _macs_for(entry, devices)
        if not found:
            raise ValueError(
                f"devices: {entry!r} is not a MAC, a configured device name or the kind of one"
            )
        macs += [m for m in found if m not in macs]
    return tuple(macs)


def _macs_for(entry: str, devices: Sequence[DeviceConfig]) -> list[str]:
    mac = _mac(entry)
    if mac is not None:
        return [mac]
    low = entry.strip().lower()
    by_name = [d.mac for d in devices if d.name is not None and d.name.lower() == low]
    if by_name:
        return by_name
    return [d.mac for d in devices if d.kind is not None and d.kind == low]


def _mac(text: str) -> str | None:
    t = text.strip().lower().replace("-", ":")
    if re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", t):
        return t
    return None


def check_policy(policy: PolicyConfig, devices: Sequence[DeviceConfig]) -> None:
    """What needs the whole configuration: device references, unique names. ValueError says
    `rules[i].key: reason`."""
    seen: set[str] = set()
    for i, rule in enumerate(policy.rules):
        if rule.name in seen:
            raise ValueError(f"rules[{i}].name: {rule.name!r} is used by an earlier rule")
        seen.add(rule.name)
        try:
            resolve_devices(rule.devices, devices)
        except ValueError as exc:
            raise ValueError(f"rules[{i}].{exc}") from None
