"""Output of `analyze`: JSON Lines records (the stable contract) and a readable summary.

Nothing written here may carry an identifier in full: HTTP request paths are written without
their query string (the usual carrier of leaked identifiers) and bodies not at all.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, TextIO

from sensor.model import Device, Flow, HttpRequest

MAX_SUMMARY_SERVERS = 2000
"""Server rows kept per device in the summary; the rest fold into "(other)"."""


def _http_summary(req: HttpRequest) -> dict[str, Any]:
    path, _, query = req.path.partition("?")
    return {
        "method": req.method,
        "host": req.host,
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

    def stats(self, stats: dict[str, Any]) -> None:
        self.write({"type": "stats", **stats})


class SummarySink:
    """Aggregates per device and server name; prints a table at the end."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        # device key -> server label -> [bytes_up, bytes_down, flows]
        self.usage: dict[str, dict[str, list[int]]] = defaultdict(dict)
        self.devices: dict[str, Device] = {}

    def flow(self, flow: Flow) -> None:
        dev = flow.device_mac or f"ip {flow.src_ip}"
        label = flow.server_name or f"{flow.dst_ip}"
        servers = self.usage[dev]
        row = servers.get(label)
        if row is None:
            if len(servers) >= MAX_SUMMARY_SERVERS:
                label = "(other)"
                row = servers.get(label)
            if row is None:
                row = servers[label] = [0, 0, 0]
        row[0] += flow.bytes_up
        row[1] += flow.bytes_down
        row[2] += 1

    def device(self, device: Device) -> None:
        self.devices[device.mac] = device

    def stats(self, stats: dict[str, Any]) -> None:
        w = self.out.write
        for dev_key in sorted(
            self.usage, key=lambda d: -sum(r[0] + r[1] for r in self.usage[d].values())
        ):
            servers = self.usage[dev_key]
            up = sum(r[0] for r in servers.values())
            down = sum(r[1] for r in servers.values())
            w(f"\n{_device_title(dev_key, self.devices.get(dev_key))}\n")
            w(f"  {len(servers)} servers, {human_bytes(up)} up, {human_bytes(down)} down\n")
            w(f"  {'server':<48} {'flows':>6} {'up':>10} {'down':>10}\n")
            rows = sorted(servers.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
            for label, (bu, bd, n) in rows[:40]:
                w(f"  {label[:48]:<48} {n:>6} {human_bytes(bu):>10} {human_bytes(bd):>10}\n")
            if len(rows) > 40:
                w(f"  ... {len(rows) - 40} more\n")
        skipped = stats.get("skipped") or {}
        w(
            f"\n{stats['packets_read']} packets read, {stats['packets_decoded']} decoded, "
            f"{stats['packets_skipped']} skipped, {stats['flows']} flows\n"
        )
        if skipped:
            w("skipped: " + ", ".join(f"{k}={v}" for k, v in skipped.items()) + "\n")


def _device_title(key: str, dev: Device | None) -> str:
    if dev is None:
        return key
    parts = [dev.mac]
    if dev.hostname:
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
