"""Sample alerts and helpers shared by the sink tests (and the lab tests that read the
journal's native protocol)."""

from __future__ import annotations

import http.client
import json
import socket
import struct
from pathlib import Path
from typing import Any

from sensor.model import RULES, Alert, Destination, DeviceRef

FULL_IMEI = "356938035643809"
"""A test identifier: only its redacted tail may appear in any alert or output."""
REDACTED = "…3809"
HASH = "9f2c4e1a0b7d3c55"
REPO = Path(__file__).resolve().parents[2]
AM_BINARY = "/usr/bin/prometheus-alertmanager"

TV = DeviceRef(
    mac="aa:bb:cc:dd:ee:01",
    ip="192.168.1.20",
    name="Living-room TV",
    vendor="TVMaker",
    kind="tv",
)
DST = Destination(
    ip="203.0.113.7",
    port=80,
    server_name="t.example.cn",
    vendor="ExampleCorp",
    country="CN",
    region="CN-BJ",
    abroad=True,
)


def make_alert(
    rule: str = "identifier_abroad", ts: float = 1_700_000_000.0, summary: str | None = None
) -> Alert:
    ident = rule.startswith("identifier")
    return Alert(
        rule=rule,
        severity=RULES[rule].severity,
        ts=ts,
        device=TV,
        dst=DST,
        summary=summary or f"Living-room TV sent imei {REDACTED} in cleartext to t.example.cn",
        identifier="imei" if ident else None,
        encoding="plain" if ident else None,
        location="url" if ident else None,
        value=REDACTED if ident else None,
        keyed_hash=HASH if ident else None,
        bytes_up=0 if ident else 6_000_000,
        flow_uid="Fabc",
    )


def parse_native(data: bytes) -> dict[str, str]:
    """Decode one datagram of journald's native protocol."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            pos = nl + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            start = nl + 9
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n"
            pos = start + size + 1
        assert key.decode() not in out, "field sent twice"
        out[key.decode()] = value.decode()
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


SG_CLOUD = Destination(
    ip="198.51.100.20",
    port=80,
    server_name="data.example.com",
    vendor="ExampleCorp",
    provider="aws",
    region="ap-southeast-1",
    country="SG",
    abroad=True,
)
"""A destination in a cloud region abroad (the alert tests split alerts by region)."""
