"""The policy in the kernel: loads the table `sensor.policy` compiles, keeps its dynamic sets
current, reads its counters, removes it.

- `EnricherData`: the destination classes' address ranges from the enricher's data (geo
  overrides and embedded data, cloud range files) and the parties' domains (vendors.toml).
- `load` / `remove` / `exists`: `nft -f` in one transaction (the table is replaced atomically:
  a reload never leaves a moment without rules).
- `Enforcer`: the daemon's side. Device address sets from the neighbour table, domain sets from
  DNS answers of the trusted resolvers (elements time out with the answer's TTL),
  identifier_abroad pairs from alerts (capped, expiring), counters read every few seconds and
  turned into `policy_block` / `policy_would_block` events (one per rule, device and
  suppression window) and metrics.

`nft` is run as a child process (sensor.kernel.nftables): under the systemd unit it inherits
CAP_NET_ADMIN (ambient).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sensor.enrich.geo import ip_key, merge_intervals, subtract_intervals
from sensor.kernel import nftables
from sensor.policy import (
    DNS_TTL_MAX,
    DNS_TTL_MIN,
    POLICY_TABLE,
    CompiledPolicy,
    CompiledRule,
    Interval,
)

log = logging.getLogger(__name__)

MAX_BATCH = 512
"""Set elements added per `nft` call."""


class EnforceError(OSError):
    """nft failed; the message says what it was asked and what it answered."""


class EnricherData:
    """`sensor.policy.DestinationData` over a loaded `Enricher`."""

    def __init__(self, enricher: object) -> None:
        self.enricher = enricher

    def ranges(self, kind: str, value: str) -> tuple[list[Interval], list[Interval]]:
        geo = getattr(self.enricher, "geo", None)
        cloud = getattr(self.enricher, "cloud", None)
        if kind == "country":
            v4, v6 = geo.intervals(country=value) if geo is not None else ([], [])
            if cloud is not None:
                # A cloud region's country wins over the registry's (as in enrichment): AWS
                # Singapore addresses registered in the US belong to SG, not US.
                all4, all6 = cloud.intervals()
                in4, in6 = cloud.intervals(country=value)
                v4 = subtract_intervals(merge_intervals(v4), merge_intervals(all4)) + in4
                v6 = subtract_intervals(merge_intervals(v6), merge_intervals(all6)) + in6
            return v4, v6
        if kind == "cloud":
            provider, _, region = value.partition(":")
            if cloud is None:
                return [], []
            return cloud.intervals(provider, region or None)  # type: ignore[no-any-return]
        if kind == "asn":
            return geo.intervals(asn=int(value)) if geo is not None else ([], [])
        raise ValueError(f"unknown destination class {kind!r}")

    def party_domains(self, party: str) -> list[str]:
        vendors = getattr(self.enricher, "vendors", None)
        if vendors is None:
            return []
        low = party.lower()
        return sorted(name for name, e in vendors.entries.items() if e.vendor.lower() == low)


def _nft(script: str, *, netns: str | None, nft: str = "nft") -> str:
    try:
        return nftables.load_script(script, netns=netns, nft=nft, timeout=60)
    except nftables.NftError as exc:
        raise EnforceError(str(exc)) from None


def load(compiled: CompiledPolicy, *, netns: str | None = None, nft: str = "nft") -> None:
    """Replace the policy table in one transaction. `nft -c` is implied: a script the kernel
    refuses changes nothing, the old table stays."""
    _nft(compiled.script, netns=netns, nft=nft)


def remove(*, table: str = POLICY_TABLE, netns: str | None = None, nft: str = "nft") -> None:
    """Delete the policy table; nothing happens if it is not there."""
    _nft(nftables.drop_table(table), netns=netns, nft=nft)


def exists(*, table: str = POLICY_TABLE, netns: str | None = None, nft: str = "nft") -> bool:
    try:
        proc = nftables.run_nft(["list", "table", "inet", table], netns=netns, nft=nft)
    except nftables.NftError:
        return False
    return proc.returncode == 0


def read_counters(
    *, table: str = POLICY_TABLE, netns: str | None = None, nft: str = "nft"
) -> dict[str, tuple[int, int]] | None:
    """Counter name -> (packets, bytes); None when the table is not there."""
    args = ["-j", "list", "counters", "table", "inet", table]
    try:
        proc = nftables.run_nft(args, netns=netns, nft=nft)
    except nftables.NftError:
        return None
    if proc.returncode != 0:
        return None
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        return None
    out: dict[str, tuple[int, int]] = {}
    for item in doc.get("nftables", []):
        c = item.get("counter") if isinstance(item, dict) else None
        if isinstance(c, dict) and "name" in c:
            out[str(c["name"])] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    return out


def _refresh(table: str, set_name: str, element: str, seconds: int) -> str:
    """Lines that put `element` in the set with a timeout of `seconds`, also when it is there
    already: `add element` leaves an existing element's timeout alone, so it is added (a no-op
    if present), deleted and added again, in the one transaction of the nft call."""
    where = f"inet {table} {set_name}"
    return (
        f"add element {where} {{ {element} }}\n"
        f"delete element {where} {{ {element} }}\n"
        f"add element {where} {{ {element} timeout {seconds}s }}"
    )


def _family(ip: str) -> int | None:
    key = ip_key(ip)
    if key is None:
        return None
    try:
        return ipaddress.ip_address(ip.partition("%")[0]).version
    except ValueError:
        return None


@dataclass(slots=True)
class PolicyEvent:
    """A rule that matched packets since the last reading (for the alert sinks)."""

    rule: str
    action: str
    device: str
    """MAC, or "*" for a rule over every device."""
    packets: int


@dataclass(slots=True)
class EnforcerStats:
    loads: Counter[str] = field(default_factory=Counter)
    """Loads of the table by result (ok, failed)."""
    restored: Counter[str] = field(default_factory=Counter)
    """Reinstalls after the table vanished (a firewall reload), by result."""
    dns_elements: int = 0
    dns_ignored: int = 0
    """Answers not from a trusted resolver (never added)."""
    abroad_added: int = 0
    abroad_capped: int = 0
    """identifier_abroad blocks not added because the rule's cap was reached."""
    element_errors: int = 0


class Enforcer:
    """Keeps one compiled policy in the kernel while the daemon runs."""

    def __init__(
        self,
        compiled: CompiledPolicy,
        *,
        resolvers: Sequence[str],
        abroad_expiry: float,
        abroad_max: int,
        netns: str | None = None,
        nft: str = "nft",
        now: Callable[[], float] = time.time,
    ) -> None:
        self.compiled = compiled
        self.resolvers = frozenset(resolvers)
        self.abroad_expiry = abroad_expiry
        self.abroad_max = abroad_max
        self.netns = netns
        self.nft = nft
        self._now = now
        self.stats = EnforcerStats()
        self.neighbours: dict[str, dict[str, None]] = {}
        """MAC -> addresses seen for it, oldest first (only MACs a rule names)."""
        self._abroad: dict[tuple[int, str, str], float] = {}
        """(rule index, device address, server address) -> when the block ends."""
        self._dns: dict[tuple[int, str], float] = {}
        """(rule index, address) -> when the element runs out (to skip repeats)."""
        self.totals: dict[str, tuple[int, int]] = {}
        """Counter name -> (packets, bytes), carried over table reinstalls."""
        self._raw: dict[str, tuple[int, int]] = {}
        self.missing = False

    # --- whole table ------------------------------------------------------------------------

    def install(self) -> None:
        """Load the table and put every dynamic element back (after a reinstall too)."""
        try:
            load(self.compiled, netns=self.netns, nft=self.nft)
        except EnforceError:
            self.stats.loads["failed"] += 1
            raise
        self.stats.loads["ok"] += 1
        self._raw = {}
        self.missing = False
        now = self._now()
        for mac, addrs in self.neighbours.items():
            self._add_device_addresses(mac, list(addrs))
        self._dns = {k: t for k, t in self._dns.items() if t > now}
        self._abroad = {k: t for k, t in self._abroad.items() if t > now}
        lines = [
            self._dns_line(self.compiled.rules[i], ip, int(t - now))
            for (i, ip), t in self._dns.items()
        ]
        lines += [
            self._abroad_line(self.compiled.rules[i], dev, srv, int(t - now))
            for (i, dev, srv), t in self._abroad.items()
        ]
        self._apply([line for line in lines if line])

    def replace(self, compiled: CompiledPolicy) -> None:
        """A new policy (SIGHUP): loaded first; on failure the old one stays in force."""
        old = self.compiled
        self.compiled = compiled
        try:
            self.install()
        except EnforceError:
            self.compiled = old
            raise
        self.neighbours = {m: a for m, a in self.neighbours.items() if m in compiled.device_sets}

    def remove(self) -> None:
        remove(table=self.compiled.table, netns=self.netns, nft=self.nft)

    def check(self) -> bool:
        """Puts the table back when a firewall reload removed it; True when it was missing."""
        if exists(table=self.compiled.table, netns=self.netns, nft=self.nft):
            self.missing = False
            return False
        self.missing = True
        log.warning("the nftables table inet %s is gone: installing it again", self.compiled.table)
        try:
            self.install()
        except EnforceError as exc:
            self.stats.restored["failed"] += 1
            log.warning("cannot install the policy table: %s", exc)
        else:
            self.stats.restored["ok"] += 1
        return True

    # --- dynamic elements -------------------------------------------------------------------

    def _apply(self, lines: list[str]) -> None:
        for start in range(0, len(lines), MAX_BATCH):
            try:
                _nft(
                    "\n".join(lines[start : start + MAX_BATCH]) + "\n",
                    netns=self.netns,
                    nft=self.nft,
                )
            except EnforceError as exc:
                self.stats.element_errors += 1
                log.warning("policy set update failed: %s", exc)

    def learn_neighbour(self, ip: str, mac: str) -> None:
        """An address of a device some rule names (others are ignored): packets to it go to
        that device's chains (the `to_dev_4`/`to_dev_6` maps)."""
        mac = mac.lower()
        fam = _family(ip)
        lines: list[str] = []
        for other, addrs in self.neighbours.items():
            if other != mac and ip in addrs:  # the address moved to another device
                del addrs[ip]
                lines.append(self._map_line("delete", ip, None))
        if mac not in self.compiled.device_sets or fam is None:
            self._apply(lines)
            return
        known = self.neighbours.setdefault(mac, {})
        if ip in known:
            self._apply(lines)
            return
        known[ip] = None
        if len(known) > 64:  # IPv6 privacy addresses come and go: keep the newest
            old = next(iter(known))
            del known[old]
            lines.append(self._map_line("delete", old, None))
        lines.append(self._map_line("add", ip, mac))
        self._apply(lines)

    def _map_line(self, verb: str, ip: str, mac: str | None) -> str:
        fam = 4 if _family(ip) == 4 else 6
        where = f"inet {self.compiled.table} to_dev_{fam}"
        if mac is None:
            return f"{verb} element {where} {{ {ip} }}"
        chain = self.compiled.device_sets[mac][0 if fam == 4 else 1]
        return f"{verb} element {where} {{ {ip} : goto {chain} }}"

    def _add_device_addresses(self, mac: str, ips: Sequence[str]) -> None:
        self._apply([self._map_line("add", ip, mac) for ip in ips if _family(ip) is not None])

    def _dns_line(self, rule: CompiledRule, ip: str, ttl: int) -> str:
        if rule.domain_sets is None:
            return ""
        fam = _family(ip)
        if fam is None or ttl <= 0:
            return ""
        name = rule.domain_sets[0 if fam == 4 else 1]
        return _refresh(self.compiled.table, name, ip, ttl)

    def dns_answer(self, resolver: str, name: str, address: str, ttl: int) -> int:
        """A DNS answer seen by the sensor: `name` (the question) resolves to `address`.
        Added to the domain set of every rule naming the name's domain, when `resolver` is a
        trusted one. Returns the elements added."""
        rules = [r for r in self.compiled.rules if r.domain_sets is not None and not r.expired]
        if not rules:
            return 0
        n = name.lower().rstrip(".")
        hits = [r for r in rules if any(n == d or n.endswith("." + d) for d in r.domains)]
        if not hits:
            return 0
        if resolver not in self.resolvers:
            self.stats.dns_ignored += 1
            return 0
        ttl = max(DNS_TTL_MIN, min(DNS_TTL_MAX, ttl))
        now = self._now()
        lines = []
        for r in hits:
            key = (r.index, address)
            if self._dns.get(key, 0.0) > now + ttl / 2:
                continue  # still fresh: no nft call per repeated answer
            self._dns[key] = now + ttl
            if len(self._dns) > 65536:
                self._dns.pop(next(iter(self._dns)))
            line = self._dns_line(r, address, ttl)
            if line:
                lines.append(line)
        self._apply(lines)
        self.stats.dns_elements += len(lines)
        return len(lines)

    def _abroad_line(self, rule: CompiledRule, dev: str, srv: str, seconds: int) -> str:
        if rule.abroad_sets is None or seconds <= 0:
            return ""
        fam = _family(dev)
        if fam is None or fam != _family(srv):
            return ""
        name = rule.abroad_sets[0 if fam == 4 else 1]
        return _refresh(self.compiled.table, name, f"{dev} . {srv}", seconds)

    def identifier_abroad(self, mac: str | None, device_ip: str, server_ip: str) -> int:
        """An identifier_abroad alert: block that device → server pair under every rule that
        asks for it and names the device. Returns the blocks added."""
        now = self._now()
        added = 0
        lines = []
        for r in self.compiled.rules:
            if r.abroad_sets is None or r.expired:
                continue
            if r.macs is not None and (mac is None or mac.lower() not in r.macs):
                continue
            key = (r.index, device_ip, server_ip)
            live = sum(1 for (i, _, _), t in self._abroad.items() if i == r.index and t > now)
            if key not in self._abroad and live >= self.abroad_max:
                self.stats.abroad_capped += 1
                log.warning(
                    "policy rule %s: identifier_abroad cap (%d) reached; not blocking another "
                    "destination",
                    r.rule.name,
                    self.abroad_max,
                )
                continue
            self._abroad[key] = now + self.abroad_expiry
            line = self._abroad_line(r, device_ip, server_ip, int(self.abroad_expiry))
            if line:
                lines.append(line)
                added += 1
        self._apply(lines)
        self.stats.abroad_added += added
        self._abroad = {k: t for k, t in self._abroad.items() if t > now}
        return added

    def abroad_blocks(self) -> int:
        now = self._now()
        return sum(1 for t in self._abroad.values() if t > now)

    # --- counters ---------------------------------------------------------------------------

    def poll_counters(self) -> list[PolicyEvent]:
        """Reads the counters; what grew since the last reading, per rule and device."""
        raw = read_counters(table=self.compiled.table, netns=self.netns, nft=self.nft)
        if raw is None:
            return []
        events = []
        by_counter = {c: (r, dev) for r in self.compiled.rules for c, dev in r.counters.items()}
        for name, (packets, nbytes) in raw.items():
            old_p, old_b = self._raw.get(name, (0, 0))
            if packets < old_p:  # the table was loaded again: counting starts over
                old_p, old_b = 0, 0
            dp, db = packets - old_p, nbytes - old_b
            tp, tb = self.totals.get(name, (0, 0))
            self.totals[name] = (tp + dp, tb + db)
            hit = by_counter.get(name)
            if dp > 0 and hit is not None:
                rule, dev = hit
                events.append(PolicyEvent(rule.rule.name, rule.rule.action, dev, dp))
        self._raw = raw
        return events


# --- `phonehome policy` -------------------------------------------------------------------------


def main(action: str, config_path: str | None, args: Sequence[str], out: object) -> int:
    """`phonehome policy list | explain DEVICE DEST | clear [--force]`; 2 on a config error."""
    import sys

    from sensor.config import Config, ConfigError, load_config
    from sensor.enrich.stage import Enricher
    from sensor.policy import DestinationFacts, compile_policy, explain

    write = getattr(out, "write", sys.stdout.write)
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        sys.stderr.write(f"phonehome: config error: {exc}\n")
        if action != "clear":
            return 2
        # The file was edited into a broken state after the start: its fail mode is unknown,
        # and open (the default) is the one that cannot lock anyone out.
        sys.stderr.write("phonehome: removing the policy table (fail open)\n")
        cfg = Config()
    p = cfg.policy
    if action == "clear":
        # ExecStopPost: the daemon may have crashed with its rules loaded.
        if p.fail == "closed" and "--force" not in args:
            write(f"policy.fail = closed: table inet {POLICY_TABLE} kept (--force removes it)\n")
            return 0
        try:
            remove()
        except EnforceError as exc:
            sys.stderr.write(f"phonehome: {exc}\n")
            return 1
        write(f"table inet {POLICY_TABLE} removed (if it was there)\n")
        return 0
    enricher = Enricher.load(cfg)
    if action == "list":
        now = time.time()
        compiled = compile_policy(p, cfg.devices, ["lan"], EnricherData(enricher), now)
        counters = read_counters() or {}
        state = "loaded" if counters or exists() else "not loaded"
        write(f"table inet {POLICY_TABLE}: {state}; fail {p.fail}; {len(p.rules)} rules\n")
        for r in compiled.rules:
            rule = r.rule
            flag = " (expired)" if r.expired else ""
            write(
                f"{r.index + 1}. {rule.name}: {rule.action}{flag}, "
                f"devices {', '.join(rule.devices)}\n"
            )
            for c, (_, dev) in ((c, compiled.counters[c]) for c in r.counters):
                pk, by = counters.get(c, (0, 0))
                write(f"     {dev}: {pk} packets, {by} bytes\n")
        for set_, size in sorted(compiled.class_sizes.items()):
            write(f"   set {set_}: {size} intervals\n")
        return 0
    if action == "explain":
        if len(args) != 2:
            sys.stderr.write("phonehome policy explain DEVICE DEST (MAC/name/IP, IP/name)\n")
            return 2
        who, dest = args
        mac: str | None = next(
            (c.mac for c in cfg.devices if who.lower() in (c.mac, (c.name or "").lower())),
            who.lower() if ":" in who and len(who) == 17 else None,
        )
        ip: str | None = dest if ip_key(dest) is not None else None
        name: str | None = None if ip is not None else dest
        d = enricher.destination(ip, 0, name) if ip is not None else None
        party: str | None = d.vendor if d is not None else None
        if name is not None:
            m = enricher.vendors.vendor_for_name(name)
            party = m.vendor if m is not None else None
        facts = DestinationFacts(
            ip=ip,
            name=name,
            country=d.country if d else None,
            provider=d.provider if d else None,
            region=d.region if d else None,
            asn=d.asn if d else None,
            party=party,
        )
        data = EnricherData(enricher)
        parties = {x: data.party_domains(x) for r in p.rules for x in r.parties}
        e = explain(p, cfg.devices, mac, facts, time.time(), parties)
        write(
            f"{who} -> {dest}: {e.action}" + (f" by rule {e.rule.name!r}" if e.rule else "") + "\n"
        )
        write(
            f"  destination: country {facts.country}, cloud {facts.provider}:{facts.region}, "
            f"AS{facts.asn}, party {facts.party}\n"
        )
        for line in e.lines:
            write(f"  {line}\n")
        if e.would_block:
            write(f"  dry-run rules that would block: {', '.join(e.would_block)}\n")
        return 0
    sys.stderr.write(f"phonehome policy: unknown action {action!r}\n")
    return 2
