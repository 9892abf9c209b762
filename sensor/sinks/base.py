"""What every alert sink shares: the `AlertSink` protocol (and its optional `resolve`), the flat
record all sinks write, and a rate-limited logger for delivery trouble."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sensor.model import Alert


class AlertSink(Protocol):
    """Delivers alerts somewhere. `send` must not block for long and should not raise. (The
    pipeline's flow and device consumer is `sensor.pipeline.FlowSink`.)"""

    def send(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Coverage:
    """What an alert and its suppressed repeats covered, for the resolve record: the
    encodings and the servers (name, else address), each in first-seen order and bounded;
    `left_out` counts those beyond the bound."""

    encodings: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    left_out: int = 0


@runtime_checkable
class ResolvingSink(Protocol):
    """Optional extra a sink may have: told when an alert's suppression window closed, with
    the number of repeats that were suppressed during it and what they covered."""

    def resolve(
        self, alert: Alert, ts: float, repeats: int, coverage: Coverage | None = None
    ) -> None: ...


class LogLimiter:
    """Logs one message per key per `interval` seconds and says how many it held back, so a
    failing disk or endpoint shows up in the log without flooding it."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] += 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if len(self._last) > 256:  # keys are a handful of error kinds; stay bounded anyway
            self._last.pop(next(iter(self._last)))
        if held:
            self._log.warning(msg + " (%d similar messages held back)", *args, held)
        else:
            self._log.warning(msg, *args)


def alert_fields(alert: Alert) -> dict[str, Any]:
    """The flat record every sink writes (event log order); None where unknown."""
    dev, dst = alert.device, alert.dst
    return {
        "type": "alert",
        "ts": alert.ts,
        "rule": alert.rule,
        "severity": alert.severity,
        "device_mac": dev.mac,
        "device_ip": dev.ip,
        "device_name": dev.name,
        "device_vendor": dev.vendor,
        "device_kind": dev.kind,
        "identifier": alert.identifier,
        "encoding": alert.encoding,
        "location": alert.location,
        "value": alert.value,
        "keyed_hash": alert.keyed_hash,
        "dst_ip": dst.ip,
        "dst_port": dst.port,
        "server_name": dst.server_name,
        "party": dst.party,
        "vendor": dst.vendor,
        "provider": dst.provider,
        "country": dst.country,
        "region": dst.region,
        "asn": dst.asn,
        "bytes_up": alert.bytes_up,
        "flow_uid": alert.flow_uid,
        "summary": alert.summary,
    }


def destination_label(alert: Alert) -> str:
    """Who the alert is about on the far side: vendor, else server name, else address (the
    same choice the alert stage suppresses repeats by)."""
    return alert.dst.vendor or alert.dst.server_name or alert.dst.ip
