"""Output of `analyze`: JSON Lines records (the stable contract), CSV rows, a readable summary,
and the progress line.

Nothing written here may carry an identifier in full: HTTP request paths are written without
their query string (the usual carrier of leaked identifiers) and bodies not at all. Names taken
from the network (server names, host names, user agents) are written to a terminal with their
control characters escaped, and to CSV with formula-starting cells neutralised.
"""

from __future__ import annotations

import csv
import datetime
import ipaddress
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TextIO

from sensor.config import normalize_mac
from sensor.model import Alert, Device, Flow, HttpRequest
from sensor.names import redact_name
from sensor.sinks import alert_fields

SCHEMA_VERSION = 1
"""Of the JSON Lines records; written in the first record. Records only ever gain fields."""

MAX_SUMMARY_ALERTS = 1000
"""Alerts kept per severity for the summary; the rest are counted."""
MAX_SUMMARY_SERVERS = 2000
"""Server rows kept per device in the summary; the rest fold into "(other)"."""
DEFAULT_TOP = 40
"""Rows per device and table in the summary unless --top or --all says otherwise."""

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def _http_summary(req: HttpRequest) -> dict[str, Any]:
    path, _, query = req.path.partition("?")
    return {
        "method": req.method,
        "host": redact_name(req.host) if req.host else req.host,
        "path": path,
        "query_bytes": len(query),
        "user_agent": req.user_agent,
        "body_bytes": len(req.body),
        "content_length": req.content_length,
    }


def flow_record(flow: Flow) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "type": "flow",
        "uid": flow.uid,
        "proto": flow.proto,
        "src_ip": flow.src_ip,
        "src_port": flow.src_port,
        "dst_ip": flow.dst_ip,
        "dst_port": flow.dst_port,
        "device_mac": flow.device_mac,
        "server_name": flow.server_name,
        "name_source": flow.name_source,
        "bytes_up": flow.bytes_up,
        "bytes_down": flow.bytes_down,
        "packets_up": flow.packets_up,
        "packets_down": flow.packets_down,
        "first_seen": round(flow.first_seen, 6),
        "last_seen": round(flow.last_seen, 6),
    }
    if flow.alpn:
        rec["alpn"] = list(flow.alpn)
    if flow.quic_version is not None:
        rec["quic_version"] = flow.quic_version
    if flow.ja4 is not None:
        rec["ja4"] = flow.ja4
    if flow.ech:
        rec["ech"] = True
        rec["outer_server_name"] = flow.outer_server_name
    if flow.relay is not None:
        rec["relay"] = flow.relay
    if flow.http:
        rec["http"] = [_http_summary(r) for r in flow.http]
    if flow.dns_bypass is not None:
        b = flow.dns_bypass
        rec["dns_bypass"] = {"protocol": b.protocol, "resolver": b.resolver, "evidence": b.evidence}
    for k, v in flow.extra.items():
        rec.setdefault(k, v)
    return rec


def device_record(dev: Device) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "type": "device",
        "mac": dev.mac,
        "ips": sorted(dev.ips),
        "hostname": dev.hostname,
        "dhcp_vendor_class": dev.dhcp_vendor_class,
        "dhcp_params": list(dev.dhcp_params),
        "user_agents": list(dev.user_agents),
        "ja4": list(dev.ja4),
        "first_seen": round(dev.first_seen, 6),
        "last_seen": round(dev.last_seen, 6),
    }
    for k, v in dev.extra.items():
        rec.setdefault(k, v)
    return rec


class Report(Protocol):
    """What `analyze` writes to: one of the sinks below."""

    def flow(self, flow: Flow) -> None: ...

    def device(self, device: Device) -> None: ...

    def alert(self, alert: Alert) -> None: ...

    def stats(self, stats: dict[str, Any]) -> None: ...


class JsonLinesSink:
    """Writes each record as one JSON object per line, flows as they end; the first record
    carries `schema_version`."""

    def __init__(self, out: TextIO, alerts_only: bool = False) -> None:
        self.out = out
        self.alerts_only = alerts_only
        self._first = True

    def write(self, rec: dict[str, Any]) -> None:
        if self._first:
            self._first = False
            rec = {"type": rec.get("type"), "schema_version": SCHEMA_VERSION, **rec}
        self.out.write(json.dumps(rec, separators=(",", ":"), default=str) + "\n")

    def flow(self, flow: Flow) -> None:
        if not self.alerts_only:
            self.write(flow_record(flow))

    def device(self, device: Device) -> None:
        if not self.alerts_only:
            self.write(device_record(device))

    def alert(self, alert: Alert) -> None:
        self.write(alert_fields(alert))

    def stats(self, stats: dict[str, Any]) -> None:
        self.write({"type": "stats", **stats})


# --- where a destination is -----------------------------------------------------------------


class Scope:
    """Tells servers apart from local, broadcast and multicast destinations."""

    def __init__(self, lan_networks: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in lan_networks]
        self.broadcasts = {
            n.broadcast_address for n in self.networks if n.version == 4 and n.prefixlen < 31
        }
        self._cache: dict[str, str | None] = {}

    def __call__(self, ip: str) -> str | None:
        """ "multicast", "broadcast", "local", or None for a server beyond the LAN."""
        hit = self._cache.get(ip, "?")
        if hit != "?":
            return hit
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        scope: str | None = None
        if addr.is_multicast:
            scope = "multicast"
        elif addr.version == 4 and (
            addr == ipaddress.IPv4Address("255.255.255.255")
            or addr in self.broadcasts
            # A LAN's subnet is usually a /24 inside the configured prefix: x.y.z.255 there
            # is its broadcast address (a host so numbered is rare enough to misfile).
            or (addr.packed[3] == 255 and any(addr in n for n in self.networks))
        ):
            scope = "broadcast"
        elif (
            addr.is_loopback
            or addr.is_link_local
            or addr.is_unspecified
            or any(addr in n for n in self.networks)
        ):
            scope = "local"
        if len(self._cache) < 100_000:
            self._cache[ip] = scope
        return scope


# --- CSV --------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "type",
    "time",
    "device_mac",
    "device_name",
    "severity",
    "rule",
    "identifier",
    "proto",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "server_name",
    "scope",
    "country",
    "provider",
    "region",
    "city",
    "vendor",
    "asn_org",
    "bytes_up",
    "bytes_down",
    "packets_up",
    "packets_down",
    "summary",
)


def csv_cell(value: object) -> str:
    """A cell a spreadsheet shows as text: one starting like a formula (= + - @, or a tab or
    carriage return some spreadsheets skip first) gets a leading apostrophe."""
    if value is None:
        return ""
    text = str(value)
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text


def iso_time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


class CsvSink:
    """One row per alert and per ended flow (`type` says which), columns `CSV_COLUMNS`."""

    def __init__(
        self,
        out: TextIO,
        scope: Scope,
        devices: Mapping[str, Device] | None = None,
        alerts_only: bool = False,
    ) -> None:
        self.writer = csv.writer(out, lineterminator="\r\n")
        self.scope = scope
        self.devices: Mapping[str, Device] = devices if devices is not None else {}
        self.alerts_only = alerts_only
        self.writer.writerow(CSV_COLUMNS)

    def _row(self, values: dict[str, object]) -> None:
        self.writer.writerow([csv_cell(values.get(c)) for c in CSV_COLUMNS])

    def flow(self, flow: Flow) -> None:
        if self.alerts_only:
            return
        x = flow.extra
        dev = self.devices.get(flow.device_mac) if flow.device_mac else None
        self._row(
            {
                "type": "flow",
                "time": iso_time(flow.first_seen),
                "device_mac": flow.device_mac,
                "device_name": _device_name(dev),
                "proto": flow.proto,
                "src_ip": flow.src_ip,
                "src_port": flow.src_port,
                "dst_ip": flow.dst_ip,
                "dst_port": flow.dst_port,
                "server_name": flow.server_name,
                "scope": self.scope(flow.dst_ip) or "server",
                "country": x.get("country"),
                "provider": x.get("provider"),
                "region": x.get("region"),
                "city": x.get("city"),
                "vendor": x.get("vendor"),
                "asn_org": x.get("asn_org"),
                "bytes_up": flow.bytes_up,
                "bytes_down": flow.bytes_down,
                "packets_up": flow.packets_up,
                "packets_down": flow.packets_down,
            }
        )

    def device(self, device: Device) -> None:
        pass

    def alert(self, alert: Alert) -> None:
        f = alert_fields(alert)
        self._row(
            {
                **f,
                "time": iso_time(alert.ts),
                "device_name": alert.device.name,
                "scope": self.scope(alert.dst.ip) or "server",
                "bytes_down": None,
                "city": alert.dst.city,
                "asn_org": alert.dst.asn_org,
            }
        )

    def stats(self, stats: dict[str, Any]) -> None:
        pass


def _device_name(dev: Device | None) -> str | None:
    if dev is None:
        return None
    name = dev.extra.get("name")
    return str(name) if name else dev.hostname


# --- one device's records only ----------------------------------------------------------------


class DeviceFilter:
    """Passes on the records of the devices `wanted` names (a MAC address, or a configured,
    DHCP or identified name, case-insensitive); `matched` says whether any record passed."""

    def __init__(
        self,
        inner: Report,
        wanted: str,
        devices: Mapping[str, Device],
        configured_names: Mapping[str, str] | None = None,
    ) -> None:
        self.inner = inner
        self.devices = devices
        try:
            self.mac: str | None = normalize_mac(wanted.strip())
        except ValueError:
            self.mac = None
        self.name = wanted.strip().casefold()
        self.configured = {m: n.casefold() for m, n in (configured_names or {}).items()}
        self.matched = False

    def wants(self, mac: str | None, name: str | None = None) -> bool:
        ok = self._wants(mac, name)
        self.matched |= ok
        return ok

    def _wants(self, mac: str | None, name: str | None) -> bool:
        if (mac is not None and mac == self.mac) or (
            name is not None and name.casefold() == self.name
        ):
            return True
        if mac is None:
            return False
        if self.configured.get(mac) == self.name:
            return True
        dev = self.devices.get(mac)
        if dev is None:
            return False
        names = (dev.hostname, dev.extra.get("name"))
        return any(isinstance(n, str) and n.casefold() == self.name for n in names)

    def flow(self, flow: Flow) -> None:
        if self.wants(flow.device_mac):
            self.inner.flow(flow)

    def device(self, device: Device) -> None:
        if self.wants(device.mac):
            self.inner.device(device)

    def alert(self, alert: Alert) -> None:
        if self.wants(alert.device.mac, alert.device.name):
            self.inner.alert(alert)

    def stats(self, stats: dict[str, Any]) -> None:
        self.inner.stats(stats)


# --- the readable summary ---------------------------------------------------------------------


def clean(text: str) -> str:
    """`text` safe to print: control, format (bidi overrides) and separator characters other
    than the space are written as escapes, so a name from the network cannot move the
    cursor, recolour the terminal or hide itself."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


def fit(text: str, width: int) -> str:
    """`text` cleaned and cut to `width` characters, a cut marked with an ellipsis."""
    text = clean(text)
    return text if len(text) <= width else text[: width - 1] + "…"


class Colors:
    """ANSI colours, or none (not a terminal, or NO_COLOR)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def severity(self, severity: str, text: str) -> str:
        code = {"critical": "1;31", "warning": "33", "info": "36"}.get(severity)
        return self.paint(text, code) if code else text

    def bold(self, text: str) -> str:
        return self.paint(text, "1")


_Key = tuple[str, str, str, str]
"""(country, where: provider region city, party, server) of a server row; for local rows
(scope, "", app, address)."""


class SummarySink:
    """Aggregates per device: servers (by country, place, party, name) and, apart from them,
    local, broadcast and multicast destinations; prints alerts first, then the devices."""

    def __init__(
        self,
        out: TextIO,
        scope: Scope | None = None,
        top: int | None = DEFAULT_TOP,
        color: bool = False,
        alerts_only: bool = False,
        context: Sequence[str] = (),
    ) -> None:
        self.out = out
        self.scope = scope or Scope(())
        self.top = top
        self.colors = Colors(color)
        self.alerts_only = alerts_only
        self.context = list(context)
        # device key -> key -> [bytes_up, bytes_down, flows]
        self.usage: dict[str, dict[_Key, list[int]]] = defaultdict(dict)
        self.local: dict[str, dict[_Key, list[int]]] = defaultdict(dict)
        self.devices: dict[str, Device] = {}
        self.alerts: dict[str, list[Alert]] = defaultdict(list)
        self.alerts_dropped = 0
        self.bypass: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
        """Device -> (protocol, resolver) -> flows that bypassed the network's resolvers."""

    def alert(self, alert: Alert) -> None:
        kept = self.alerts[alert.severity]
        if len(kept) < MAX_SUMMARY_ALERTS:
            kept.append(alert)
        else:
            self.alerts_dropped += 1

    def flow(self, flow: Flow) -> None:
        if self.alerts_only:
            return
        dev = flow.device_mac or f"ip {flow.src_ip}"
        x = flow.extra
        if flow.dns_bypass is not None:
            seen = self.bypass[dev]
            pair = (flow.dns_bypass.protocol, flow.dns_bypass.resolver)
            if pair in seen or len(seen) < MAX_SUMMARY_SERVERS:
                seen[pair] = seen.get(pair, 0) + 1
        scope = self.scope(flow.dst_ip)
        name = flow.server_name or flow.dst_ip
        if scope is None:
            # no name: no party, the host column speaks; into a relay: the relay, never its name
            party = str(x.get("party") or (_relay_text(flow.relay) if flow.relay else "-"))
            key: _Key = (str(x.get("country") or "--"), _host(x), party, name)
            table = self.usage[dev]
        else:
            key = (scope, "", str(x.get("app") or ""), name)
            table = self.local[dev]
        row = table.get(key)
        if row is None:
            if len(table) >= MAX_SUMMARY_SERVERS:
                key = ("--", "", "", "(other)")
                row = table.get(key)
            if row is None:
                row = table[key] = [0, 0, 0]
        row[0] += flow.bytes_up
        row[1] += flow.bytes_down
        row[2] += 1

    def device(self, device: Device) -> None:
        self.devices[device.mac] = device

    def _rows(
        self, rows: dict[_Key, list[int]], what: str, line: Callable[[_Key, list[int]], str]
    ) -> None:
        w = self.out.write
        # Most bytes first; ties by upload, then name, so the order is stable.
        items = sorted(rows.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), -kv[1][0], kv[0]))
        shown = items if self.top is None else items[: self.top]
        for key, row in shown:
            w(line(key, row))
        if len(items) > len(shown):
            w(f"  … {len(items) - len(shown)} more {what} (--top N or --all to list them)\n")

    def stats(self, stats: dict[str, Any]) -> None:
        w = self.out.write
        c = self.colors
        for line in self.context:
            w(f"{clean(line)}\n")
        alerts = [a for sev in sorted(self.alerts, key=_severity_rank) for a in self.alerts[sev]]
        alerts.sort(key=lambda a: (_severity_rank(a.severity), a.ts))
        if alerts:
            w(c.bold(f"\nALERTS ({len(alerts) + self.alerts_dropped})") + "\n")
            for a in alerts:
                sev = c.severity(a.severity, f"{a.severity.upper():<8}")
                who = a.device.mac or a.device.ip
                w(f"  {sev} {a.rule:<21} {who}  {clean(a.summary)}\n")
            if self.alerts_dropped:
                w(f"  … {self.alerts_dropped} more alerts not kept for this summary\n")
        elif self.alerts_only:
            w("\nno alerts\n")

        def total(d: str) -> int:
            rows = list(self.usage[d].values()) + list(self.local[d].values())
            return sum(r[0] + r[1] for r in rows)

        for dev_key in sorted(set(self.usage) | set(self.local), key=lambda d: (-total(d), d)):
            servers, local = self.usage.get(dev_key, {}), self.local.get(dev_key, {})
            every = list(servers.values()) + list(local.values())
            up, down = sum(r[0] for r in every), sum(r[1] for r in every)
            w("\n" + c.bold(_device_title(dev_key, self.devices.get(dev_key))) + "\n")
            w(
                f"  {len(servers)} servers, {len(local)} local/broadcast/multicast, "
                f"{human_bytes(up)} up, {human_bytes(down)} down"
                f"{_hidden_text(self.devices.get(dev_key))}\n"
            )
            w(_bypass_lines(self.bypass.get(dev_key, {}), self.devices.get(dev_key)))
            if servers:
                w(_HEADER)
                self._rows(servers, "servers", _server_line)
            if local:
                w(_LOCAL_HEADER)
                self._rows(local, "local destinations", _local_line)
        skipped = stats.get("skipped") or {}
        w(
            f"\n{stats['packets_read']} packets read, {stats['packets_decoded']} decoded, "
            f"{stats['packets_skipped']} skipped, {stats['flows']} flows\n"
        )
        if skipped:
            w("skipped: " + ", ".join(f"{k}={v}" for k, v in skipped.items()) + "\n")
        for warning in stats.get("warnings") or ():
            w(f"warning: {clean(str(warning))}\n")


def _bypass_lines(bypass: Mapping[tuple[str, str], int], dev: Device | None) -> str:
    """A device's DNS bypass and the canary names it asked (docs/ENCRYPTED.md)."""
    out = ""
    if bypass:
        items = sorted(bypass.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(
            f"{proto} to {resolver} ({n} flow{'s' if n > 1 else ''})"
            for (proto, resolver), n in items[:8]
        )
        more = f", … {len(items) - 8} more" if len(items) > 8 else ""
        out += f"  DNS bypass: {clean(shown)}{more}\n"
    canaries = dev.extra.get("dns_canaries") if dev is not None else None
    if isinstance(canaries, list) and canaries:
        out += f"  DNS canaries asked: {clean(', '.join(str(c) for c in canaries))}\n"
    return out


def _relay_text(relay: str) -> str:
    """A relay as the party column shows it: "(Private Relay)", "(Tor)", "(VPN office)"."""
    if relay == "icloud-private-relay":
        return "(Private Relay)"
    if relay == "tor":
        return "(Tor)"
    return "(VPN" + (f" {relay[4:]})" if relay.startswith("vpn:") else ")")


def _hidden_text(dev: Device | None) -> str:
    """What the sensor could not see of a device's traffic, e.g. ", 1.2 MB through relays (tor),
    3 kB without a name" (the device record's visibility_bytes, docs/ENCRYPTED.md)."""
    vis = dev.extra.get("visibility_bytes") if dev is not None else None
    if not isinstance(vis, dict):
        return ""

    def both(cls: str) -> int:
        cell = vis.get(cls)
        return int(cell["up"] + cell["down"]) if isinstance(cell, dict) else 0

    out = ""
    relays = dev.extra.get("relay_bytes") if dev is not None else None
    if both("relay"):
        names = ", ".join(sorted(relays)) if isinstance(relays, dict) else ""
        out += f", {human_bytes(both('relay'))} through relays ({names})"
    if both("ech"):
        out += f", {human_bytes(both('ech'))} hidden by ECH"
    if both("none"):
        out += f", {human_bytes(both('none'))} without a name"
    return out


def _severity_rank(severity: str) -> int:
    return SEVERITY_ORDER.get(severity, len(SEVERITY_ORDER))


def _server_line(key: _Key, row: list[int]) -> str:
    country, where, party, server = key
    bu, bd, n = row
    return (
        f"  {fit(country, 7):<7} {fit(where, 30):<30} {fit(party, 18):<18} {fit(server, 34):<34} "
        f"{n:>5} {human_bytes(bu):>9} {human_bytes(bd):>9}\n"
    )


def _local_line(key: _Key, row: list[int]) -> str:
    scope, _, app, address = key
    bu, bd, n = row
    return (
        f"  {scope:<9} {fit(app, 8):<8} {fit(address, 74):<74} "
        f"{n:>5} {human_bytes(bu):>9} {human_bytes(bd):>9}\n"
    )


_HEADER = (
    f"  {'country':<7} {'host: provider region city':<30} {'party':<18} {'server':<34} "
    f"{'flows':>5} {'up':>9} {'down':>9}\n"
)


def _host(x: dict[str, object]) -> str:
    """Who hosts the server and where: cloud provider, region and city, else the AS
    organisation and city (the party column says whose name it is)."""
    first = (x.get("provider"), x.get("region")) if x.get("provider") else (x.get("asn_org"),)
    return " ".join(str(v) for v in (*first, x.get("city")) if v)


_LOCAL_HEADER = f"  {'local':<9} {'app':<8} {'address':<74} {'flows':>5} {'up':>9} {'down':>9}\n"


def _device_title(key: str, dev: Device | None) -> str:
    if dev is None:
        return clean(key)
    parts = [dev.mac]
    x = dev.extra
    ident = " ".join(str(v) for v in (x.get("vendor"), x.get("model")) if v)
    if x.get("name"):
        parts.append(str(x["name"]))
    if ident:
        parts.append(ident)
    if x.get("kind"):
        parts.append(f"[{x['kind']}]")
    if x.get("randomized_mac"):
        parts.append("(randomized MAC)")
    if dev.hostname and dev.hostname != x.get("name"):
        parts.append(f'"{dev.hostname}"')
    if dev.ips:
        parts.append(", ".join(sorted(dev.ips)[:4]))
    if dev.dhcp_vendor_class:
        parts.append(f"({dev.dhcp_vendor_class})")
    return clean("  ".join(parts))


# --- progress on a terminal -------------------------------------------------------------------


class Counted(Protocol):
    path: str
    packets: int
    size: int | None

    @property
    def bytes_read(self) -> int: ...


class Progress:
    """A progress line on a terminal (stderr): first after `delay` seconds, then at most once
    per `interval`, erased at the end. Written by a thread, so a stalled pipe shows too."""

    def __init__(
        self,
        stream: TextIO,
        files: Sequence[Counted],
        delay: float = 2.0,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.files = files
        self.delay = delay
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.updates = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.started = self.clock()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()

    def line(self) -> str:
        done = sum(f.bytes_read for f in self.files)
        packets = sum(f.packets for f in self.files)
        sizes = [f.size for f in self.files]
        elapsed = int(self.clock() - self.started)
        text = f"phonehome: {human_bytes(done)}"
        if all(s is not None for s in sizes):
            total = sum(s or 0 for s in sizes)
            pct = 100 * done / total if total else 100.0
            text += f" of {human_bytes(total)} ({pct:.0f}%)"
        else:
            text += " read"
        return text + f", {packets} packets, {elapsed // 60}:{elapsed % 60:02d}"

    def _loop(self) -> None:
        if self._stop.wait(self.delay):
            return
        while True:
            try:
                self.stream.write("\r" + self.line() + "\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                return
            self.updates += 1
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.updates:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"
