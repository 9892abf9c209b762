"""Per-device policy: rules from the configuration, compiled to an nftables table, explained.

Pure: no I/O. `sensor.enforce` loads what `compile_policy` writes and keeps its dynamic sets
(device addresses, domain answers, identifier_abroad pairs) current.

A rule says who (devices: a MAC, a configured name, a kind such as "phone", or "*"), where
(countries, clouds "provider" or "provider:region", ASNs, parties, registrable domains, or the
destination of an identifier_abroad alert) and what:

- ``alert`` (the default): a dry run. Matching packets are counted ("would block") and pass;
  later rules still apply.
- ``block``: every packet of a matching connection, both directions, new or established: TCP
  from the device gets a reset, everything else is dropped.
- ``allow``: an exception; matching packets leave the policy table (later rules do not apply).
  It cannot override a drop elsewhere in the owner's ruleset.
- ``quarantine``: the device keeps the LAN and the gateway's own services (DNS, DHCP, NTP, SSH,
  the metrics port: all on the input hook, which the policy never touches) and nothing else.

Rules apply in order. A rule's destinations are alternatives (any of them matches).

Kernel layout (`table inet phonehome_policy`, a table of its own: it is replaced atomically on
each reload of the policy, its dynamic sets are filled while it lives, and it is removed or kept
on stop according to `policy.fail` - none of which the capture table's life should depend on):

- one interval set per destination class and family (``country_CN_4``, ``cloud_aws_ap_
  southeast_1_6``, ``asn_64500_4``), shared by every rule that names the class;
- per rule with domains or parties, a set per family of addresses DNS answers gave for those
  names, each element timing out with the answer's TTL;
- per rule with identifier_abroad, a set per family of (device address . server address) pairs
  with a default timeout and a size cap;
- per device named by a rule, a chain per family and direction holding its rules and those
  over every device, in order: `ether saddr vmap` sends its packets there by MAC, the maps
  `to_dev_4`/`to_dev_6` (its addresses, from the neighbour table) packets to it; every other
  device's packets walk only the rules over every device;
- one named counter per (rule, device), or per rule for "every device": the metrics and the
  policy events read them (cardinality: configured rules x configured devices).

The base chain hooks forward at priority ``filter - 5``: before the usual filter chain, so it
sees every packet of established connections too (a `ct state established accept` elsewhere
does not hide them: an accept ends only its own chain, a drop anywhere is final).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from sensor.config.policy import EVERY as EVERY  # the [policy] settings live in config
from sensor.config.policy import PolicyConfig as PolicyConfig
from sensor.config.policy import PolicyRuleConfig as PolicyRuleConfig
from sensor.config.policy import check_policy as check_policy
from sensor.config.policy import resolve_devices as resolve_devices
from sensor.enrich.geo import merge_intervals

if TYPE_CHECKING:
    from sensor.config import DeviceConfig

POLICY_TABLE: Final = "phonehome_policy"
PRIORITY: Final = "filter - 5"
DNS_TTL_MIN: Final = 30
"""Seconds a domain set element lives at least: a device may reconnect to an address just after
a short-TTL answer ran out (it reuses what its own resolver cached)."""
DNS_TTL_MAX: Final = 86400

_IDENT = re.compile(r"[^A-Za-z0-9]+")


# --- destination data ---------------------------------------------------------------------------

Interval = tuple[int, int]


class DestinationData(Protocol):
    """Where the address ranges and party domains come from (the enricher's data)."""

    def ranges(self, kind: str, value: str) -> tuple[list[Interval], list[Interval]]:
        """IPv4 and IPv6 (first, last) integer intervals of a class: kind country, cloud, asn."""
        ...

    def party_domains(self, party: str) -> list[str]:
        """Registrable domains and host names vendors.toml gives the party; [] if unknown."""
        ...


# --- compiling ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    rule: PolicyRuleConfig
    macs: tuple[str, ...] | None
    """None: every device."""
    counters: Mapping[str, str]
    """Counter name -> the device it counts ("*" for every device)."""
    domain_sets: tuple[str, str] | None
    """The rule's (IPv4, IPv6) sets of DNS-learned addresses, when it names domains/parties."""
    domains: tuple[str, ...]
    abroad_sets: tuple[str, str] | None
    expired: bool


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    table: str
    script: str
    """`nft -f` input that replaces the table atomically."""
    rules: tuple[CompiledRule, ...]
    device_sets: Mapping[str, tuple[str, str]]
    """MAC -> the (IPv4, IPv6) chains for packets to it: the daemon maps the device's
    addresses to them (maps `to_dev_4`, `to_dev_6`)."""
    class_sizes: Mapping[str, int]
    """Class set name -> intervals in it (for `policy list` and the benchmark)."""
    next_expiry: float | None
    """When the next rule runs out (the daemon compiles again then)."""
    counters: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Counter name -> (rule name, device label)."""


def set_name(*parts: str) -> str:
    return "_".join(_IDENT.sub("_", p).strip("_") for p in parts)[:60]


def compile_policy(
    policy: PolicyConfig,
    devices: Sequence[DeviceConfig],
    lan_ifaces: Sequence[str],
    data: DestinationData,
    now: float,
    *,
    table: str = POLICY_TABLE,
) -> CompiledPolicy:
    """The nftables table for `policy`. ValueError when it cannot be built (no LAN interface,
    a device reference that does not resolve)."""
    if not lan_ifaces:
        raise ValueError("no LAN interface")
    for name in lan_ifaces:
        if not re.fullmatch(r"[A-Za-z0-9_.:@+-]{1,15}", name):
            raise ValueError(f"interface name {name!r}: not a valid interface name")
    check_policy(policy, devices)
    lan = "{ " + ", ".join(f'"{n}"' for n in lan_ifaces) + " }"
    names = {d.mac: d.name or d.mac for d in devices}
    sets: list[str] = []
    class_sizes: dict[str, int] = {}
    class_sets: dict[tuple[str, str], tuple[str, str]] = {}
    device_sets: dict[str, tuple[str, str]] = {}
    counters: dict[str, tuple[str, str]] = {}
    entries: list[tuple[int, tuple[str, ...] | None, list[tuple[str, str]]]] = []
    compiled: list[CompiledRule] = []
    next_expiry: float | None = None

    def class_set(kind: str, value: str) -> tuple[str, str]:
        got = class_sets.get((kind, value))
        if got is None:
            v4, v6 = data.ranges(kind, value)
            got = (set_name(kind, value, "4"), set_name(kind, value, "6"))
            for name, rows, fam in ((got[0], v4, 4), (got[1], v6, 6)):
                sets.append(_interval_set(name, fam, rows))
                class_sizes[name] = len(rows)
            class_sets[(kind, value)] = got
        return got

    def device_set(mac: str) -> tuple[str, str]:
        got = device_sets.get(mac)
        if got is None:
            k = len(device_sets)
            got = (f"down4_d{k}", f"down6_d{k}")
            device_sets[mac] = got
        return got

    for i, rule in enumerate(policy.rules):
        expiry = rule.expiry()
        expired = expiry is not None and expiry <= now
        if expiry is not None and not expired:
            next_expiry = expiry if next_expiry is None else min(next_expiry, expiry)
        macs = resolve_devices(rule.devices, devices)
        rule_counters: dict[str, str] = {}
        dom: tuple[str, str] | None = None
        abroad: tuple[str, str] | None = None
        domains = list(rule.domains)
        for party in rule.parties:
            domains += [d for d in data.party_domains(party) if d not in domains]
        if expired:
            compiled.append(
                CompiledRule(i, rule, macs, {}, None, tuple(domains), None, expired=True)
            )
            continue
        # Destination matches: (IPv4 expression, IPv6 expression) for each direction.
        dests: list[tuple[str, str, str, str]] = []
        for kind, value in rule.classes:
            s4, s6 = class_set(kind, value)
            dests.append(
                (f"ip daddr @{s4}", f"ip6 daddr @{s6}", f"ip saddr @{s4}", f"ip6 saddr @{s6}")
            )
        if rule.parties or rule.domains:
            dom = (f"r{i}_dns_4", f"r{i}_dns_6")
            for name, fam in ((dom[0], 4), (dom[1], 6)):
                sets.append(
                    f"    set {name} {{ type ipv{fam}_addr; flags timeout; size 65536; }}\n"
                )
            dests.append(
                (
                    f"ip daddr @{dom[0]}",
                    f"ip6 daddr @{dom[1]}",
                    f"ip saddr @{dom[0]}",
                    f"ip6 saddr @{dom[1]}",
                )
            )
        if rule.identifier_abroad:
            abroad = (f"r{i}_abroad_4", f"r{i}_abroad_6")
            timeout = int(policy.abroad_expiry)
            for name, fam in ((abroad[0], 4), (abroad[1], 6)):
                sets.append(
                    f"    set {name} {{ type ipv{fam}_addr . ipv{fam}_addr; flags timeout; "
                    f"timeout {timeout}s; size {policy.abroad_max}; }}\n"
                )
            dests.append(
                (
                    f"ip saddr . ip daddr @{abroad[0]}",
                    f"ip6 saddr . ip6 daddr @{abroad[1]}",
                    f"ip daddr . ip saddr @{abroad[0]}",
                    f"ip6 daddr . ip6 saddr @{abroad[1]}",
                )
            )
        if rule.action == "quarantine":
            # Anything forwarded that does not stay on the LAN side.
            out_, in_ = f"oifname != {lan}", f"iifname != {lan}"
            dests = [(out_, out_, in_, in_)]
        up_v, down_v = _verdicts(rule.action)
        templates: list[tuple[str, str]] = []  # (chain prefix, line with the counter to fill)
        for d_up4, d_up6, d_down4, d_down6 in dests:
            templates += [
                ("up4", f"{d_up4} counter name @C {up_v}"),
                ("up6", f"{d_up6} counter name @C {up_v}"),
                ("down4", f"{d_down4} counter name @C {down_v}"),
                ("down6", f"{d_down6} counter name @C {down_v}"),
            ]
        if macs is None:
            c = f"r{i}_all"
            rule_counters[c] = EVERY
            counters[c] = (rule.name, EVERY)
        else:
            for mac in macs:
                device_set(mac)
                c = f"r{i}_d{list(device_sets).index(mac)}"
                rule_counters[c] = mac
                counters[c] = (rule.name, names.get(mac, mac))
        entries.append((i, macs, templates))
        compiled.append(
            CompiledRule(
                i,
                rule,
                macs,
                rule_counters,
                dom,
                tuple(domains),
                abroad,
                expired=False,
            )
        )
    # Per device (and one for every other device) a chain per family and direction holding,
    # in order, the rules that apply to it: a packet walks only its own device's rules.
    keys = ["all", *(f"d{k}" for k in range(len(device_sets)))]
    chains: dict[str, list[str]] = {
        f"{d}{fam}_{key}": [] for key in keys for d in ("up", "down") for fam in (4, 6)
    }
    for i, macs, templates in entries:
        if macs is None:
            targets = [(key, f"r{i}_all") for key in keys]
        else:
            targets = [
                (f"d{list(device_sets).index(m)}", f"r{i}_d{list(device_sets).index(m)}")
                for m in macs
            ]
        for key, c in targets:
            for prefix, line in templates:
                chains[f"{prefix}_{key}"].append(line.replace("@C", c).rstrip())
    counter_decls = "".join(f"    counter {c} {{ }}\n" for c in counters)
    maps = "".join(f"    map to_dev_{fam} {{ type ipv{fam}_addr : verdict; }}\n" for fam in (4, 6))
    dispatch = {}
    for fam in (4, 6):
        pairs = ", ".join(f"{mac} : goto up{fam}_d{k}" for k, mac in enumerate(device_sets))
        vmap = f"        ether saddr vmap {{ {pairs} }}\n" if pairs else ""
        dispatch[fam] = f"{vmap}        goto up{fam}_all\n"
    bodies = "".join(
        f"    chain {name} {{\n" + "".join(f"        {line}\n" for line in lines) + "    }\n"
        for name, lines in chains.items()
    )
    script = f"""\
table inet {table}
delete table inet {table}
table inet {table} {{
{"".join(sets)}{maps}{counter_decls}\
    chain forward {{
        type filter hook forward priority {PRIORITY}; policy accept;
        iifname {lan} jump from_lan
        oifname {lan} jump to_lan
    }}
    chain from_lan {{
        meta nfproto ipv4 goto from_lan_4
        meta nfproto ipv6 goto from_lan_6
    }}
    chain from_lan_4 {{
{dispatch[4]}\
    }}
    chain from_lan_6 {{
{dispatch[6]}\
    }}
    chain to_lan {{
        ip daddr vmap @to_dev_4
        ip6 daddr vmap @to_dev_6
        meta nfproto ipv4 goto down4_all
        meta nfproto ipv6 goto down6_all
    }}
{bodies}\
    chain refuse {{
        meta l4proto tcp reject with tcp reset
        drop
    }}
}}
"""
    return CompiledPolicy(
        table=table,
        script=script,
        rules=tuple(compiled),
        device_sets=device_sets,
        class_sizes=class_sizes,
        next_expiry=next_expiry,
        counters=counters,
    )


def _verdicts(action: str) -> tuple[str, str]:
    """nft verdicts for packets from the device (upstream) and to it."""
    if action == "alert":
        return "", ""
    if action == "allow":
        return "accept", "accept"
    return "jump refuse", "drop"


def _interval_set(name: str, family: int, rows: Sequence[Interval]) -> str:
    head = f"    set {name} {{ type ipv{family}_addr; flags interval; auto-merge;"
    if not rows:
        return head + " }\n"
    text = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    elements = ", ".join(
        str(text(a)) if a == b else f"{text(a)}-{text(b)}" for a, b in merge_intervals(rows)
    )
    return f"{head} elements = {{ {elements} }}; }}\n"


# --- explaining ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DestinationFacts:
    """What enrichment knows of a destination (see `sensor.model.Destination`)."""

    ip: str | None
    name: str | None = None
    country: str | None = None
    provider: str | None = None
    region: str | None = None
    asn: int | None = None
    party: str | None = None
    abroad_pair: bool = False
    """An identifier_abroad block for this device and address is in force."""


@dataclass(frozen=True, slots=True)
class Explanation:
    rule: PolicyRuleConfig | None
    """The rule that decides (block, allow or quarantine), or None: the packet passes."""
    action: str
    """What happens: block, allow, quarantine, or "pass" when no deciding rule matches."""
    would_block: tuple[str, ...]
    """Dry-run (alert) rules matched on the way."""
    lines: tuple[str, ...]
    """Rule by rule, why it matched or not."""


def _domain_match(name: str | None, domains: Sequence[str]) -> str | None:
    if not name:
        return None
    n = name.lower().rstrip(".")
    for d in domains:
        if n == d or n.endswith("." + d):
            return d
    return None


def explain(
    policy: PolicyConfig,
    devices: Sequence[DeviceConfig],
    mac: str | None,
    facts: DestinationFacts,
    now: float,
    party_domains: Mapping[str, Sequence[str]] | None = None,
) -> Explanation:
    """Which rule a packet from the device `mac` to `facts` would hit, and why each other rule
    does not. Domains match the name given (in the kernel: addresses learned from DNS)."""
    lines: list[str] = []
    would: list[str] = []
    party_domains = party_domains or {}
    for rule in policy.rules:
        head = f"{rule.name} ({rule.action})"
        expiry = rule.expiry()
        if expiry is not None and expiry <= now:
            lines.append(f"{head}: expired at {rule.expires}")
            continue
        macs = resolve_devices(rule.devices, devices)
        if macs is not None and (mac is None or mac not in macs):
            lines.append(f"{head}: not for this device")
            continue
        why = _dest_reason(rule, facts, party_domains)
        if why is None:
            lines.append(f"{head}: destination not named by the rule")
            continue
        lines.append(f"{head}: matches ({why})")
        if rule.action == "alert":
            would.append(rule.name)
            continue
        return Explanation(rule, rule.action, tuple(would), tuple(lines))
    return Explanation(None, "pass", tuple(would), tuple(lines))


def _dest_reason(
    rule: PolicyRuleConfig, f: DestinationFacts, party_domains: Mapping[str, Sequence[str]]
) -> str | None:
    if rule.action == "quarantine":
        return "quarantine: everything beyond the LAN"
    if f.country is not None and f.country in rule.countries:
        return f"country {f.country}"
    for c in rule.clouds:
        provider, _, region = c.partition(":")
        if f.provider == provider and (not region or region == f.region):
            return f"cloud {f.provider}:{f.region}"
    if f.asn is not None and f.asn in rule.asns:
        return f"AS{f.asn}"
    if f.party is not None and f.party in rule.parties:
        return f"party {f.party}"
    d = _domain_match(f.name, rule.domains)
    if d is not None:
        return f"domain {d}"
    for party in rule.parties:
        d = _domain_match(f.name, party_domains.get(party, ()))
        if d is not None:
            return f"party {party} (domain {d})"
    if rule.identifier_abroad and f.abroad_pair:
        return "identifier_abroad block for this device and address"
    return None
