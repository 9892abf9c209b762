"""Output of `analyze`: JSON Lines records (the stable contract) and a readable summary.

Nothing written here may carry an identifier in full: HTTP request paths are written without
their query string (the usual carrier of leaked identifiers) and bodies not at all.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, TextIO

from sensor.model import Alert, Device, Flow, HttpRequest
from sensor.names import redact_name
from sensor.sinks import alert_fields

MAX_SUMMARY_ALERTS = 1000
MAX_SUMMARY_SERVERS = 2000
"""Server rows kept per device in the summary; the rest fold into "(other)"."""


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
    if flow.http:
        rec["http"] = [_http_summary(r) for r in flow.http]
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
        "first_seen": round(dev.first_seen, 6),
        "last_seen": round(dev.last_seen, 6),
    }
    for k, v in dev.extra.items():
        rec.setdefault(k, v)
    return rec


class JsonLinesSink:
    """Writes each record as one JSON object per line, flows as they end."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, rec: dict[str, Any]) -> None:
        self.out.write(json.dumps(rec, separators=(",", ":"), default=str) + "\n")

    def flow(self, flow: Flow) -> None:
        self.write(flow_record(flow))

    def device(self, device: Device) -> None:
        self.write(device_record(device))

    def alert(self, alert: Alert) -> None:
        self.write(alert_fields(alert))

    def stats(self, stats: dict[str, Any]) -> None:
        self.write({"type": "stats", **stats})


class SummarySink:
    """Aggregates per device, then country and party, then server; prints tables at the end."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        # device key -> (country, party, server, host) -> [bytes_up, bytes_down, flows]
        self.usage: dict[str, dict[tuple[str, str, str, str], list[int]]] = defaultdict(dict)
        self.devices: dict[str, Device] = {}
        self.alerts: list[Alert] = []

    def alert(self, alert: Alert) -> None:
        if len(self.alerts) < MAX_SUMMARY_ALERTS:
            self.alerts.append(alert)

    def flow(self, flow: Flow) -> None:
        dev = flow.device_mac or f"ip {flow.src_ip}"
        x = flow.extra
        country = str(x.get("country") or "--")
        party = str(x.get("party") or "-")  # no name: no party, the host column speaks
        key = (country, party, flow.server_name or flow.dst_ip, _host(x))
        rows = self.usage[dev]
        row = rows.get(key)
        if row is None:
            if len(rows) >= MAX_SUMMARY_SERVERS:
                key = ("--", "-", "(other)", "-")
                row = rows.get(key)
            if row is None:
                row = rows[key] = [0, 0, 0]
        row[0] += flow.bytes_up
        row[1] += flow.bytes_down
        row[2] += 1

    def device(self, device: Device) -> None:
        self.devices[device.mac] = device

    def stats(self, stats: dict[str, Any]) -> None:
        w = self.out.write

        def total(d: str) -> int:
            return sum(r[0] + r[1] for r in self.usage[d].values())

        for dev_key in sorted(self.usage, key=lambda d: -total(d)):
            rows = self.usage[dev_key]
            up = sum(r[0] for r in rows.values())
            down = sum(r[1] for r in rows.values())
            w(f"\n{_device_title(dev_key, self.devices.get(dev_key))}\n")
            w(f"  {len(rows)} servers, {human_bytes(up)} up, {human_bytes(down)} down\n")
            # countries by bytes, then vendors by bytes within them
            by_country: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for (country, _p, _s, _h), (bu, bd, _n) in rows.items():
                by_country[country][0] += bu
                by_country[country][1] += bd
            w(_HEADER)
            shown = 0
            for country in sorted(by_country, key=lambda c: -sum(by_country[c])):
                items = [(k, v) for k, v in rows.items() if k[0] == country]
                items.sort(key=lambda kv: (kv[0][1], -(kv[1][0] + kv[1][1])))
                for (c, party, server, host), (bu, bd, n) in items:
                    if shown >= 40:
                        break
                    shown += 1
                    w(
                        f"  {c:<7} {party[:22]:<22} {server[:40]:<40} {host[:24]:<24} {n:>5} "
                        f"{human_bytes(bu):>9} {human_bytes(bd):>9}\n"
                    )
            if len(rows) > shown:
                w(f"  ... {len(rows) - shown} more\n")
        if self.alerts:
            w(f"\nALERTS ({len(self.alerts)})\n")
            for a in self.alerts:
                w(f"  {a.severity.upper():<8} {a.rule:<21} {a.device.mac or a.device.ip}  ")
                w(f"{a.summary}\n")
        skipped = stats.get("skipped") or {}
        w(
            f"\n{stats['packets_read']} packets read, {stats['packets_decoded']} decoded, "
            f"{stats['packets_skipped']} skipped, {stats['flows']} flows\n"
        )
        if skipped:
            w("skipped: " + ", ".join(f"{k}={v}" for k, v in skipped.items()) + "\n")


_HEADER = (
    f"  {'country':<7} {'party':<22} {'server':<40} {'host':<24} {'flows':>5} {'up':>9} "
    f"{'down':>9}\n"
)


def _host(x: dict[str, object]) -> str:
    """Who hosts the server: cloud provider and region, else the AS organisation."""
    if x.get("provider"):
        return " ".join(str(v) for v in (x.get("provider"), x.get("region")) if v)
    return str(x.get("asn_org") or "-")


def _device_title(key: str, dev: Device | None) -> str:
    if dev is None:
        return key
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
    return "  ".join(parts)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"
