"""Prometheus metrics: what every stage knows, read at scrape time, served from a thread.

The only module importing prometheus_client. It reads every stage: each collector builds its
families fresh per scrape from the pipeline's own state (flow table, device table, counters,
the capture source's and conntrack's statistics, the data manifest); nothing is updated per
packet. Hooks carry what that state forgets: `Exporter.flow_ended` (the bytes of flows that
left the table), `Exporter.observation` (identifier exposures, before suppression; `tap` wraps
an AlertStage's `observe` to feed it, the one place it touches a stage) and
`Exporter.alert` / `alert_sink` (delivered alerts).

Counters stay monotonic across flow eviction
--------------------------------------------
Bytes are attributed as deltas. Per live flow (by uid) the exporter remembers how many bytes it
has already counted; each scrape adds what the flow sent since to the flow's current label set,
and `flow_ended` adds the remainder and forgets the flow. So a counter only ever grows, a flow's
bytes are counted exactly once even when its labels change mid-flow (its server name learned
later, say), and the state is bounded by the flow table plus the series bounds below. A scrape
copies the flow table without a lock (one C-level `list()` under the GIL) and takes the
exporter's lock only in short slices to apply deltas, so the packet loop never waits for more
than a slice; flows that end while a scrape runs are settled by `flow_ended` alone.

Cardinality is bounded
----------------------
Per family: at most `max_devices` devices (the rest are ``device="other"``), per device the top
`top_vendors` vendors and `top_countries` countries by bytes (resp. by exposures; the rest are
``"other"``), and at most `max_series_per_device` label sets per device (beyond it, all labels
``"other"``). Membership is sticky: a value outside the top set collects weight as a candidate
and takes the place of the lightest member once it outweighs it. The member's series are then
no longer exported (stale to Prometheus, never a counter reset); what they counted since the
last scrape moves to the matching "other" series, so every byte appears in exactly one
series' increase; bytes already counted under "other" stay there. Unknown values are
``"unknown"``.

Identifiers never appear: device labels are the owner's name, else the DHCP host name, else the
MAC, with anything shaped like an identifier (long digit runs, e-mail addresses, long hex runs,
UUIDs: Android's ``android-<android_id>`` host names) masked; identifier values, redacted values
and keyed hashes are never read. Custom families never carry ``created`` timestamps, so there
are no ``*_created`` series, without touching prometheus_client's process-wide switch.

Each collector is wrapped: one that raises shows ``phonehome_scrape_collector_success 0`` and
the scrape carries on (node_exporter's convention). The endpoint serves ``/metrics`` over HTTP
or HTTPS, optionally behind basic auth and/or a bearer token, from a thread per connection
(bounded); one scrape runs at a time.

Settings section ``[metrics]``: `MetricsConfig`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import platform
import re
import socket
import ssl
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from sensor import __version__
from sensor.alerts import RULES
from sensor.detect.identifiers import ENCODINGS, KINDS
from sensor.model import Alert, Flow, Observation
from sensor.sinks import LogLimiter

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 14663
"""Above the Prometheus wiki's exporter range (9100-9999, full since 2023) and clear of the
ports common agents take above 10000 (kubelet 10250/10255, kube-proxy 10249/10256, ingress-nginx
10254, Zabbix 10050/10051, netdata 19999, Grafana Agent/Alloy 12345, Istio 15020/15090, ...);
"1-HOME" on a phone keypad."""

COLLECTORS: Final = (
    "info",
    "traffic",
    "exposures",
    "alerts",
    "devices",
    "pipeline",
    "capture",
    "conntrack",
    "data",
    "process",
)
"""Collector names (the ``collector`` label; `MetricsConfig.disabled_collectors`)."""

OTHER: Final = "other"
UNKNOWN: Final = "unknown"
MAX_REASONS: Final = 64
"""Skip/weird reasons (and sinks, datasets) kept as labels; more fold into "other"."""
MAX_CONNECTIONS: Final = 8
"""Concurrent HTTP connections; more are closed at once."""
CONNECTION_TIMEOUT: Final = 10.0
"""Seconds a client may take to send its request (and finish the TLS handshake)."""
APPLY_SLICE: Final = 256
"""Live flows settled per hold of the lock during a scrape (about a millisecond)."""
MAX_DEST_CACHE: Final = 65536
MAX_NAME_HINTS: Final = 4096


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    """Serve the metrics endpoint."""
    address: str = "127.0.0.1"
    """IP address to listen on (an address literal; "::" or "0.0.0.0" for every interface)."""
    port: int = DEFAULT_PORT
    """TCP port (0 picks a free one: tests)."""
    max_devices: int = 64
    """Devices with series of their own per family; the rest are device="other"."""
    top_vendors: int = 10
    """Vendors with series of their own per device (by bytes, resp. exposures)."""
    top_countries: int = 10
    """Destination countries with series of their own per device."""
    max_series_per_device: int = 50
    """Label sets per device and family; beyond it a device's new label sets count under
    all-"other" labels."""
    disabled_collectors: tuple[str, ...] = ()
    """Collectors not run (see `COLLECTORS`)."""
    tls_cert_file: str | None = None
    """PEM certificate (chain) for HTTPS; with `tls_key_file`."""
    tls_key_file: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_sha256: str | None = None
    """Hex SHA-256 of the basic-auth password (`printf %s 'pw' | sha256sum`)."""
    basic_auth_password_file: str | None = None
    """Or a file holding the password itself (mode 0600 or stricter)."""
    bearer_token_file: str | None = None
    """A file holding a bearer token (mode 0600 or stricter); `Authorization: Bearer ...`."""
    allow_unauthenticated: bool = False
    """Allow listening on a non-loopback address without basic auth or a bearer token (the
    metrics say which device talks to whom, and where)."""
    scrape_timeout: float = 10.0
    """Seconds a scrape waits for the one before it before answering 503."""

    def validate(self) -> None:
        try:
            addr = ipaddress.ip_address(self.address)
        except ValueError:
            raise ValueError("address: must be an IP address literal") from None
        if not 0 <= self.port <= 65535:
            raise ValueError("port: must be between 0 and 65535")
        if not 1 <= self.max_devices <= 4096:
            raise ValueError("max_devices: must be between 1 and 4096")
        for key in ("top_vendors", "top_countries"):
            if not 1 <= getattr(self, key) <= 1000:
                raise ValueError(f"{key}: must be between 1 and 1000")
        if not 1 <= self.max_series_per_device <= 100_000:
            raise ValueError("max_series_per_device: must be between 1 and 100000")
        for name in self.disabled_collectors:
            if name not in COLLECTORS:
                raise ValueError(f"disabled_collectors: unknown collector {name!r}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file: tls_cert_file and tls_key_file go together")
        pw = (self.basic_auth_password_sha256, self.basic_auth_password_file)
        if self.basic_auth_user is not None:
            if not self.basic_auth_user or ":" in self.basic_auth_user:
                raise ValueError("basic_auth_user: must be non-empty and without ':'")
            if sum(p is not None for p in pw) != 1:
                raise ValueError(
                    "basic_auth_user: needs exactly one of basic_auth_password_sha256 and "
                    "basic_auth_password_file"
                )
        elif any(p is not None for p in pw):
            raise ValueError("basic_auth_user: a basic-auth password needs a user")
        h = self.basic_auth_password_sha256
        if h is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", h):
            raise ValueError("basic_auth_password_sha256: must be 64 hex digits")
        if not 0.1 <= self.scrape_timeout <= 300:
            raise ValueError("scrape_timeout: must be between 0.1 and 300 seconds")
        authenticated = self.basic_auth_user is not None or self.bearer_token_file is not None
        if (
            self.enabled
            and not addr.is_loopback
            and not authenticated
            and not self.allow_unauthenticated
        ):
            raise ValueError(
                "address: a non-loopback address needs basic_auth_user or bearer_token_file "
                "(or allow_unauthenticated = true)"
            )


class MetricsError(Exception):
    """The endpoint cannot start (address in use, unreadable key or credential file)."""


# --- label hygiene ----------------------------------------------------------------------------

_IDENTIFIER_SHAPED = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # e-mail addresses
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUIDs
    r"|\+?\d(?:[\s().-]?\d){6,}"  # 7+ digits: IMEI, IMSI, ICCID, phone numbers, serials
    r"|(?=[a-fA-F]*\d)[0-9a-fA-F]{12,}"  # long hex runs: Android IDs, serials
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_label(value: object, limit: int = 64) -> str:
    """A label value free of identifier-shaped text: masked with "…", control characters
    dropped, at most `limit` characters; "" for None or empty."""
    if not isinstance(value, str) or not value:
        return ""
    text = _IDENTIFIER_SHAPED.sub("…", _CONTROL.sub("", value)).strip()
    return text[:limit]


def _vocab(value: str | None, allowed: frozenset[str]) -> str:
    if not value:
        return UNKNOWN
    return value if value in allowed else OTHER


_KINDS: Final = frozenset(KINDS)
_ENCODINGS: Final = frozenset(ENCODINGS)
_RULES: Final = frozenset(RULES)


# --- bounded counters -------------------------------------------------------------------------


class TopK:
    """Which values of a label get series of their own: at most `k`, by weight, sticky.

    A value outside the set collects weight as a candidate (at most ``4k`` are remembered,
    least recently seen go first); once its weight exceeds the lightest member's, it takes that
    member's place and `admit` names the member pushed out, whose series the caller drops.
    """

    __slots__ = ("_lightest", "candidates", "k", "max_candidates", "members")

    def __init__(self, k: int) -> None:
        self.k = k
        self.members: dict[str, float] = {}
        self.candidates: OrderedDict[str, float] = OrderedDict()
        self.max_candidates = max(16, 4 * k)
        self._lightest: tuple[str, float] | None = None

    def admit(self, value: str, weight: float) -> tuple[str, str | None]:
        """(the label to count `weight` under: `value` or OTHER, the member pushed out)."""
        if value == OTHER:
            return OTHER, None
        members = self.members
        w = members.get(value)
        if w is not None:
            members[value] = w + weight
            if self._lightest is not None and self._lightest[0] == value:
                self._lightest = None
            return value, None
        cand = self.candidates
        cw = cand.pop(value, 0.0) + weight
        if len(members) < self.k:
            members[value] = cw
            self._lightest = None
            return value, None
        low = self._lightest
        if low is None:
            name = min(members, key=members.__getitem__)
            low = self._lightest = (name, members[name])
        if cw > low[1]:
            del members[low[0]]
            members[value] = cw
            self._lightest = None
            return value, low[0]
        cand[value] = cw
        if len(cand) > self.max_candidates:
            cand.popitem(last=False)
        return OTHER, None


class _Rows:
    __slots__ = ("series", "tops")

    def __init__(self, tops: Sequence[int | None]) -> None:
        self.tops = [TopK(k) if k else None for k in tops]
        self.series: dict[tuple[str, ...], list[float]] = {}
        """label values -> [value per column ..., value last exported per column ...]"""


class Table:
    """Counters per (device, label...), bounded: `max_devices` devices (TopK by weight), per
    device a TopK for each label with a limit in `tops`, and `max_series` label sets.

    A series pushed out (its device or one of its labels lost its place) is no longer
    exported; what it counted since the last scrape moves to the series with "other" in that
    place, so every byte shows up in some series' increase. Its last exported value is kept
    (bounded), so a series that comes back resumes from it instead of looking like a reset.
    """

    MAX_GRAVES: Final = 16384

    def __init__(
        self, width: int, tops: Sequence[int | None], max_devices: int, max_series: int
    ) -> None:
        self.tops = tuple(tops)
        self.width = width
        self.devices = TopK(max_devices)
        self.max_series = max_series
        self.rows: dict[str, _Rows] = {}
        self.graves: OrderedDict[tuple[str, tuple[str, ...]], list[float]] = OrderedDict()

    def add(
        self, device: str, labels: Sequence[str], amounts: Sequence[float], weight: float
    ) -> None:
        dev, out = self.devices.admit(device, weight)
        if out is not None:
            self._evict_device(out)
        self._add_row(dev, labels, amounts, weight)

    def snapshot(self) -> list[tuple[str, tuple[str, ...], tuple[float, ...]]]:
        """Every series and its values, marked as exported."""
        w = self.width
        out = []
        for dev, rows in self.rows.items():
            for k, cell in rows.series.items():
                cell[w:] = cell[:w]
                out.append((dev, k, tuple(cell[:w])))
        return out

    def __len__(self) -> int:
        return sum(len(r.series) for r in self.rows.values())

    def _add_row(
        self, dev: str, labels: Sequence[str], amounts: Sequence[float], weight: float
    ) -> None:
        rows = self.rows.get(dev)
        if rows is None:
            rows = self.rows[dev] = _Rows(self.tops)
        key: list[str] = []
        for i, value in enumerate(labels):
            top = rows.tops[i]
            if top is None or value == OTHER:
                key.append(value)
                continue
            label, out = top.admit(value, weight)
            if out is not None:
                self._evict_value(dev, rows, i, out)
            key.append(label)
        self._add_to(dev, rows, tuple(key), amounts)

    def _add_to(
        self, dev: str, rows: _Rows, key: tuple[str, ...], amounts: Sequence[float]
    ) -> None:
        cell = rows.series.get(key)
        if cell is None:
            if len(rows.series) >= self.max_series:
                key = (OTHER,) * len(key)
                cell = rows.series.get(key)
            if cell is None:
                grave = self.graves.pop((dev, key), None)
                cell = rows.series[key] = grave + grave if grave else [0.0] * (2 * self.width)
        for j, a in enumerate(amounts):
            cell[j] += a

    def _bury(self, dev: str, key: tuple[str, ...], cell: list[float]) -> list[float] | None:
        """Remember what was exported; return what was not (None if nothing)."""
        w = self.width
        self.graves[(dev, key)] = cell[w:]
        if len(self.graves) > self.MAX_GRAVES:
            self.graves.popitem(last=False)
        unseen = [cell[j] - cell[w + j] for j in range(w)]
        return unseen if any(u > 0 for u in unseen) else None

    def _evict_value(self, dev: str, rows: _Rows, i: int, value: str) -> None:
        gone = [(k, c) for k, c in rows.series.items() if k[i] == value]
        for k, _ in gone:
            del rows.series[k]
        for k, c in gone:
            unseen = self._bury(dev, k, c)
            if unseen is not None:
                self._add_to(dev, rows, (*k[:i], OTHER, *k[i + 1 :]), unseen)

    def _evict_device(self, dev: str) -> None:
        rows = self.rows.pop(dev, None)
        if rows is None:
            return
        for k, c in rows.series.items():
            unseen = self._bury(dev, k, c)
            if unseen is not None:
                self._add_row(OTHER, k, unseen, 0.0)


class _Carry:
    """Counters read from another object's stats. When that object is replaced (a reload
    builds new stages), the old one's last values are carried over; and an exported value
    never goes down (a racy read of someone else's counter can come out low)."""

    def __init__(self) -> None:
        self._owner: object = None
        self._base: dict[tuple[str, ...], float] = {}
        self._raw: dict[tuple[str, ...], float] = {}
        self._out: dict[tuple[str, ...], float] = {}

    def owner(self, obj: object) -> None:
        """The object the next values come from (held until another one takes its place)."""
        if obj is self._owner:
            return
        for k, v in self._raw.items():
            self._base[k] = self._base.get(k, 0.0) + v
        self._raw = {}
        self._owner = obj

    def value(self, key: tuple[str, ...], raw: float) -> float:
        self._raw[key] = raw
        out = self._base.get(key, 0.0) + raw
        last = self._out.get(key, 0.0)
        if out < last:
            out = last
        self._out[key] = out
        return out


def _fold_keys(counts: Mapping[str, Any], limit: int = MAX_REASONS) -> dict[str, float]:
    """At most `limit` keys (the largest), the rest summed under "other"."""
    items = [(str(k), float(v)) for k, v in counts.items() if isinstance(v, int | float)]
    if len(items) <= limit:
        return dict(items)
    items.sort(key=lambda kv: -kv[1])
    out = dict(items[: limit - 1])
    out[OTHER] = out.get(OTHER, 0.0) + sum(v for _, v in items[limit - 1 :])
    return out


# --- the exporter -----------------------------------------------------------------------------


Families = Iterable[Metric]


class Exporter:
    """The metrics of one running sensor.

    `sensor` is read at every scrape, by attribute, so a reload's new stages are seen: the
    daemon passes itself. Attributes used when present (a missing one is a feature absent,
    not an error): ``pipeline`` (sensor.pipeline.Pipeline), ``stages`` (sensor.stages.Stages:
    its ``enricher`` places live flows, ``detector.alerts`` has the alert counters), ``source``
    (live capture, ``stats()``), ``interfaces``, ``conntrack`` (netlink.ConntrackMonitor),
    ``conntrack_updates``, ``cfg`` (sensor.config.Config: state directory, home country).
    """

    def __init__(self, cfg: MetricsConfig, sensor: object) -> None:
        self.cfg = cfg
        self.sensor = sensor
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        """Guards the traffic table, live-flow state and the alert tables (short holds)."""
        self._scrape_lock = threading.Lock()
        """One scrape at a time (they share carry-over state)."""
        self._limiter = LogLimiter(log)
        self._traffic = Table(
            3,
            (cfg.top_vendors, None, None, cfg.top_countries),
            cfg.max_devices,
            cfg.max_series_per_device,
        )
        """(vendor, provider, cloud_region, dst_country) -> [bytes up, bytes down, flows]."""
        self._exposures = Table(
            1,
            (None, None, cfg.top_countries, cfg.top_vendors),
            cfg.max_devices,
            cfg.max_series_per_device,
        )
        """(identifier, encoding, dst_country, vendor) -> [exposures]."""
        self._alerts = Table(1, (None, None), cfg.max_devices, cfg.max_series_per_device)
        """(rule, severity) -> [alerts delivered]."""
        self._live: dict[str, list[Any]] = {}
        """uid -> [bytes up counted, bytes down counted, scrape generation last seen]."""
        self._ended_during: set[str] | None = None
        """Flows ended while a scrape is under way (it must not count them again)."""
        self._pipeline: object = None
        """The pipeline `_live` belongs to (its flow uids)."""
        self._generation = 0
        self._dest_cache: dict[tuple[str, str | None], tuple[str, str, str, str]] = {}
        self._dest_owner: object = None
        self._names: OrderedDict[str, str] = OrderedDict()
        """MAC -> device name the alert stage knew (DeviceRef.name), for the device label."""
        self._identity: dict[str, tuple[tuple[Any, ...], tuple[str, str, str, str]]] = {}
        self._carry: dict[str, _Carry] = {}
        self._manifest: tuple[float, dict[str, Any]] | None = None
        self.resolve_errors = 0
        self._started = False
        """start() was called (and stop() was not): reconfigure() restarts the endpoint."""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        process = ProcessCollector(registry=None)
        table: dict[str, Callable[[], Families]] = {
            "info": self._collect_info,
            "traffic": self._collect_traffic,
            "exposures": self._collect_exposures,
            "alerts": self._collect_alerts,
            "devices": self._collect_devices,  # after the tables it lists the devices of
            "pipeline": self._collect_pipeline,
            "capture": self._collect_capture,
            "conntrack": self._collect_conntrack,
            "data": self._collect_data,
            "process": process.collect,
        }
        off = set(cfg.disabled_collectors)
        self.registry.register(
            _Guarded([(n, fn) for n, fn in table.items() if n not in off], self._limiter)
        )
        self._app = make_wsgi_app(self.registry)

    # --- hooks (called on the packet loop) ----------------------------------------------------

    def flow_ended(self, flow: Flow) -> None:
        """A flow left the table (idle, evicted, ended): count what it sent since the last
        scrape. Call with the enriched record (the daemon's output sink). Never raises."""
        try:
            labels = self._flow_labels(flow)
            dev = flow.device_mac or ""
            up, down = flow.bytes_up, flow.bytes_down
            with self._lock:
                if self._ended_during is not None:
                    self._ended_during.add(flow.uid)
                seen = self._live.pop(flow.uid, None)
                if seen is None:
                    self._traffic.add(dev, labels, (up, down, 1), up + down)
                else:
                    du, dd = max(0, up - seen[0]), max(0, down - seen[1])
                    if du or dd:
                        self._traffic.add(dev, labels, (du, dd, 0), du + dd)
        except Exception as exc:
            self._limiter.warning("flow_ended", "metrics: counting an ended flow failed: %r", exc)

    def observation(self, obs: Observation) -> None:
        """Every Observation the alert stage receives, before suppression and the rate bound:
        identifier ones are counted as exposures. Never raises."""
        if obs.what != "identifier":
            return
        try:
            labels = (
                _vocab(obs.identifier, _KINDS),
                _vocab(obs.encoding, _ENCODINGS),
                safe_label(obs.dst.country) or UNKNOWN,
                safe_label(obs.dst.vendor) or UNKNOWN,
            )
            with self._lock:
                dev = self._device_key(obs.device.mac, obs.device.name)
                self._exposures.add(dev, labels, (1,), 1.0)
        except Exception as exc:
            self._limiter.warning("observation", "metrics: counting an exposure failed: %r", exc)

    def alert(self, alert: Alert) -> None:
        """An alert delivered to the sinks. Never raises."""
        try:
            labels = (_vocab(alert.rule, _RULES), alert.severity)
            with self._lock:
                dev = self._device_key(alert.device.mac, alert.device.name)
                self._alerts.add(dev, labels, (1,), 1.0)
        except Exception as exc:
            self._limiter.warning("alert", "metrics: counting an alert failed: %r", exc)

    def alert_sink(self) -> AlertCounter:
        """An alert sink (`sensor.sinks.Sink`) that counts delivered alerts here: add it to the
        alert stage's sinks."""
        return AlertCounter(self)

    def tap(self, stage: object) -> None:
        """Count every identifier observation `stage` (a `sensor.alerts.AlertStage`) receives,
        by wrapping its `observe`. Call again after a reload builds a new stage."""
        inner = getattr(stage, "observe", None)
        if inner is None or getattr(inner, "__phonehome_metrics__", None) is self:
            return

        def observe(obs: Observation) -> object:
            self.observation(obs)
            return inner(obs)

        observe.__phonehome_metrics__ = self  # type: ignore[attr-defined]
        setattr(stage, "observe", observe)  # noqa: B010 (shadows the method, on this object)

    def _device_key(self, mac: str | None, name: str | None) -> str:
        """The table key of an alert's device, noting the name it came with (under the lock)."""
        if not mac:
            return ""
        if name:
            names = self._names
            names[mac] = name
            names.move_to_end(mac)
            if len(names) > MAX_NAME_HINTS:
                names.popitem(last=False)
        return mac

    # --- the endpoint -------------------------------------------------------------------------

    def start(self) -> None:
        """Listen and serve from a daemon thread. Read TLS keys and credential files here
        (before the daemon drops privileges). MetricsError if it cannot."""
        self._started = True
        if not self.cfg.enabled or self._server is not None:
            return
        auth = _Auth.from_config(self.cfg)
        ctx = _tls_context(self.cfg)
        try:
            server = _Server((self.cfg.address, self.cfg.port), ctx)
        except OSError as exc:
            raise MetricsError(
                f"metrics: cannot listen on {self.cfg.address} port {self.cfg.port}: "
                f"{exc.strerror or exc}"
            ) from None
        server.set_app(_App(self, auth))
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics", daemon=True
        )
        self._thread.start()
        if not ipaddress.ip_address(self.cfg.address).is_loopback and ctx is None and auth:
            log.warning("metrics: credentials travel in clear without tls_cert_file")
        log.info("metrics on %s", self.url)

    def stop(self) -> None:
        """Stop serving (waits for the serving thread, at most a few seconds)."""
        self._started = False
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def reconfigure(self, cfg: MetricsConfig) -> None:
        """New settings (SIGHUP): a started endpoint restarts if its settings changed
        (MetricsError if it cannot). Series bounds and disabled collectors keep their
        start-up values until the daemon restarts."""
        endpoint = (
            "enabled", "address", "port", "tls_cert_file", "tls_key_file", "basic_auth_user",
            "basic_auth_password_sha256", "basic_auth_password_file", "bearer_token_file",
            "scrape_timeout",
        )  # fmt: skip
        changed = any(getattr(cfg, k) != getattr(self.cfg, k) for k in endpoint)
        started = self._started
        self.cfg = cfg
        if changed and started:
            self.stop()
            self.start()

    @property
    def url(self) -> str:
        """Where the endpoint listens (the real port when 0 was asked)."""
        host, port = self.cfg.address, self.cfg.port
        if self._server is not None:
            port = self._server.server_address[1]
        scheme = "https" if self.cfg.tls_cert_file else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def render(self) -> bytes:
        """One scrape in the text format (tests, `phonehome check`)."""
        with self._scrape_lock:
            return generate_latest(self.registry)

    # --- collectors ---------------------------------------------------------------------------

    def _collect_info(self) -> Families:
        build = InfoMetricFamily("phonehome_build", "Phonehome version and the Python running it")
        build.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield build
        site = InfoMetricFamily("phonehome_site", "The site's settings that rules join on")
        cfg = getattr(self.sensor, "cfg", None)
        home = getattr(getattr(cfg, "site", None), "home_country", None) or ""
        site.add_metric([], {"home_country": home})
        yield site

    def _collect_devices(self) -> Families:
        pipeline = getattr(self.sensor, "pipeline", None)
        info = InfoMetricFamily(
            "phonehome_device",
            "A LAN device with series of its own: name, MAC and what it seems to be",
        )
        with self._lock:
            macs = {
                m
                for t in (self._traffic, self._exposures, self._alerts)
                for m in t.rows
                if m not in ("", OTHER)
            }
        labels = self._device_labels(macs)
        for mac in sorted(macs):
            vendor, model, kind, _ = self._identity_of(mac)
            info.add_metric(
                [],
                {
                    "device": labels[mac],
                    "mac": mac,
                    "vendor": vendor,
                    "model": model,
                    "kind": kind,
                },
            )
        yield info
        if pipeline is not None:
            yield _gauge(
                "phonehome_devices", "LAN devices the pipeline knows", len(pipeline.devices)
            )
            yield self._counter(
                "pipeline",
                pipeline,
                "phonehome_devices_dropped",
                "Devices not tracked because the device table was full",
                pipeline.devices_dropped,
            )

    def _collect_traffic(self) -> Families:
        self._settle_live()
        with self._lock:
            rows = self._traffic.snapshot()
        names = self._device_labels({d for d, _, _ in rows})
        labels = ["device", "vendor", "provider", "cloud_region", "dst_country"]
        up = CounterMetricFamily(
            "phonehome_upload_bytes",
            "Bytes LAN devices sent (IP length), by destination",
            labels=labels,
        )
        down = CounterMetricFamily(
            "phonehome_download_bytes",
            "Bytes LAN devices received (IP length), by origin",
            labels=labels,
        )
        flows: dict[tuple[str, str, str], float] = {}
        for dev, key, (b_up, b_down, n) in rows:
            name = names[dev]
            up.add_metric([name, *key], b_up)
            down.add_metric([name, *key], b_down)
            fkey = (name, key[0], key[3])
            flows[fkey] = flows.get(fkey, 0.0) + n
        yield up
        yield down
        fam = CounterMetricFamily(
            "phonehome_flows",
            "Flows seen (counted when first seen), by device, vendor and country",
            labels=["device", "vendor", "dst_country"],
        )
        for fkey, n in flows.items():
            fam.add_metric(list(fkey), n)
        yield fam
        yield _gauge(
            "phonehome_metrics_tracked_flows",
            "Live flows whose counted bytes the exporter remembers",
            len(self._live),
        )

    def _collect_exposures(self) -> Families:
        with self._lock:
            rows = self._exposures.snapshot()
        names = self._device_labels({d for d, _, _ in rows})
        fam = CounterMetricFamily(
            "phonehome_identifier_exposures",
            "Identifiers seen leaving in cleartext (every sighting, suppressed repeats too)",
            labels=["device", "identifier", "encoding", "dst_country", "vendor"],
        )
        for dev, key, (n,) in rows:
            fam.add_metric([names[dev], *key], n)
        yield fam

    def _collect_alerts(self) -> Families:
        with self._lock:
            rows = self._alerts.snapshot()
        names = self._device_labels({d for d, _, _ in rows})
        fam = CounterMetricFamily(
            "phonehome_alerts",
            "Alerts delivered to the sinks",
            labels=["rule", "severity", "device"],
        )
        for dev, (rule, severity), (n,) in rows:
            fam.add_metric([rule, severity, names[dev]], n)
        yield fam
        stages = getattr(self.sensor, "stages", None)
        stage = getattr(getattr(stages, "detector", None), "alerts", None)
        if stage is None:
            return
        stats = stage.stats()
        carry = self._carry_for("alert_stage", stage)
        for name, key, doc in (
            ("phonehome_alerts_suppressed", "suppressed", "Repeats counted, not delivered"),
            ("phonehome_alerts_rate_limited", "dropped", "Alerts dropped by the rate bound"),
        ):
            fam = CounterMetricFamily(name, doc, labels=["rule"])
            counts = stats.get(key) or {}
            for rule in sorted(RULES):
                fam.add_metric([rule], carry.value((name, rule), float(counts.get(rule, 0))))
            yield fam
        fam = CounterMetricFamily(
            "phonehome_alert_sink_errors", "Alert deliveries that failed", labels=["sink"]
        )
        for sink, n in sorted(_fold_keys(stats.get("sink_errors") or {}).items()):
            fam.add_metric([safe_label(sink)], carry.value(("sink_errors", sink), n))
        yield fam

    def _collect_pipeline(self) -> Families:
        p = getattr(self.sensor, "pipeline", None)
        if p is None:
            return
        carry = self._carry_for("pipeline", p)
        for name, doc, value in (
            ("phonehome_packets_read", "Packets handed to the pipeline", p.packets_read),
            ("phonehome_packets_decoded", "Packets counted to a flow", p.packets_decoded),
        ):
            fam = CounterMetricFamily(name, doc)
            fam.add_metric([], carry.value((name,), float(value)))
            yield fam
        for name, doc, counts in (
            (
                "phonehome_packets_skipped",
                "Packets that could not be counted to a flow, by reason",
                dict(p.skipped),
            ),
            (
                "phonehome_payloads_undecodable",
                "Payloads a decoder could not make sense of (packet still counted), by reason",
                dict(p.weird),
            ),
        ):
            fam = CounterMetricFamily(name, doc, labels=["reason"])
            for reason, n in sorted(_fold_keys(counts).items()):
                fam.add_metric([safe_label(reason)], carry.value((name, reason), n))
            yield fam
        flows = p.flows
        yield _gauge("phonehome_flows_active", "Flows in the flow table", len(flows))
        yield _gauge(
            "phonehome_flows_active_max", "The flow table's size cap", p.cfg.flows.max_flows
        )
        fam = CounterMetricFamily("phonehome_flows_opened", "Flows opened in the table")
        fam.add_metric([], carry.value(("created",), float(flows.created)))
        yield fam
        fam = CounterMetricFamily(
            "phonehome_flows_evicted",
            "Flows removed before they ended: idle timeout or the size cap",
            labels=["reason"],
        )
        fam.add_metric(["idle"], carry.value(("evicted", "idle"), float(flows.evicted_idle)))
        fam.add_metric(["cap"], carry.value(("evicted", "cap"), float(flows.evicted_cap)))
        yield fam
        yield _gauge("phonehome_dns_cache_entries", "Entries in the DNS name cache", len(p.dns))

    def _collect_capture(self) -> Families:
        source = getattr(self.sensor, "source", None)
        if source is None:
            return
        stats = source.stats()
        carry = self._carry_for("capture", source)
        per_if = stats.get("interfaces")
        if isinstance(per_if, Mapping):
            groups = {str(k): v for k, v in per_if.items() if isinstance(v, Mapping)}
        else:
            names = list(getattr(self.sensor, "interfaces", ()) or ())
            groups = {",".join(names) or "all": stats}
        recv = CounterMetricFamily(
            "phonehome_capture_received_packets",
            "Packets the kernel passed to the capture (drops included)",
            labels=["interface"],
        )
        deliv = CounterMetricFamily(
            "phonehome_capture_delivered_packets",
            "Packets the capture handed to the pipeline",
            labels=["interface"],
        )
        drop = CounterMetricFamily(
            "phonehome_capture_dropped_packets",
            "Packets lost before the pipeline saw them (ring or socket buffer full)",
            labels=["interface"],
        )
        errs = CounterMetricFamily(
            "phonehome_capture_errors",
            "Capture trouble by kind: malformed, truncated, overruns, errors, freeze",
            labels=["interface", "kind"],
        )
        queue = GaugeMetricFamily(
            "phonehome_capture_queue_length", "Packets waiting in the kernel", labels=["interface"]
        )
        for ifname, st in sorted(groups.items()):
            iface = safe_label(ifname) or "all"

            def val(key: str, st: Mapping[str, Any] = st, iface: str = iface) -> float:
                return carry.value((iface, key), float(st.get(key, 0) or 0))

            recv.add_metric([iface], val("received"))
            deliv.add_metric([iface], val("delivered"))
            drop.add_metric([iface], val("drops") + val("lost"))
            for kind in ("malformed", "truncated", "overruns", "errors", "freeze"):
                if kind in st:
                    errs.add_metric([iface, kind], val(kind))
            if "kernel_queue" in st:
                queue.add_metric([iface], float(st["kernel_queue"]))
        yield from (recv, deliv, drop, errs, queue)

    def _collect_conntrack(self) -> Families:
        mon = getattr(self.sensor, "conntrack", None)
        if mon is None:
            return
        carry = self._carry_for("conntrack", mon)
        fam = CounterMetricFamily("phonehome_conntrack_events", "Conntrack events received")
        fam.add_metric([], carry.value(("events",), float(mon.received)))
        yield fam
        fam = CounterMetricFamily(
            "phonehome_conntrack_errors",
            "Conntrack events lost (socket buffer overruns) or undecodable",
            labels=["kind"],
        )
        fam.add_metric(["overrun"], carry.value(("overrun",), float(mon.lost_overruns)))
        fam.add_metric(["decode"], carry.value(("decode",), float(mon.decode_errors)))
        yield fam
        updates = getattr(self.sensor, "conntrack_updates", None)
        if isinstance(updates, int):
            fam = CounterMetricFamily(
                "phonehome_conntrack_updates", "Conntrack entries applied to flows"
            )
            fam.add_metric([], carry.value(("updates",), float(updates)))
            yield fam

    def _collect_data(self) -> Families:
        cfg = getattr(self.sensor, "cfg", None)
        state = getattr(getattr(cfg, "paths", None), "state_dir", None)
        if not state:
            return
        sources = self._read_manifest(Path(state) / "data" / "manifest.json")
        now = time.time()
        age = GaugeMetricFamily(
            "phonehome_data_age_seconds",
            "Seconds since a data file was last fetched successfully",
            labels=["dataset"],
        )
        stamp = GaugeMetricFamily(
            "phonehome_data_timestamp_seconds",
            "When a data file was last fetched successfully (Unix time)",
            labels=["dataset"],
        )
        records = GaugeMetricFamily(
            "phonehome_data_records", "Records (prefixes) in a data file", labels=["dataset"]
        )
        failing = GaugeMetricFamily(
            "phonehome_data_update_failing",
            "1 when the last update of a data file failed (the previous copy is in use)",
            labels=["dataset"],
        )
        for name, entry in sorted(sources.items())[:MAX_REASONS]:
            ds = safe_label(name)
            fetched = _parse_time(entry.get("fetched"))
            if fetched is not None:
                age.add_metric([ds], max(0.0, now - fetched))
                stamp.add_metric([ds], fetched)
            if isinstance(entry.get("records"), int):
                records.add_metric([ds], float(entry["records"]))
            attempt = _parse_time(entry.get("last_attempt"))
            bad = bool(entry.get("last_error")) and (
                fetched is None or attempt is None or attempt >= fetched
            )
            failing.add_metric([ds], 1.0 if bad else 0.0)
        yield from (age, stamp, records, failing)

    # --- traffic accounting -------------------------------------------------------------------

    def _settle_live(self) -> None:
        """Count what live flows sent since the last scrape (see the module docstring)."""
        pipeline = getattr(self.sensor, "pipeline", None)
        with self._lock:
            if pipeline is not self._pipeline:
                self._live.clear()  # another pipeline: its uids are new
                self._pipeline = pipeline
            self._ended_during = set()
            self._generation += 1
            gen = self._generation
        try:
            if pipeline is None:
                return
            rows = self._read_live(pipeline, gen)
            for i in range(0, len(rows), APPLY_SLICE):
                with self._lock:
                    ended = self._ended_during or set()
                    live = self._live
                    add = self._traffic.add
                    for uid, dev, labels, up, down in rows[i : i + APPLY_SLICE]:
                        if uid in ended:
                            continue
                        seen = live.get(uid)
                        if seen is None:
                            live[uid] = [up, down, gen]
                            add(dev, labels, (up, down, 1), up + down)
                            continue
                        du, dd = up - seen[0], down - seen[1]
                        seen[2] = gen
                        if du > 0 or dd > 0:
                            du, dd = max(du, 0), max(dd, 0)
                            seen[0] += du
                            seen[1] += dd
                            add(dev, labels, (du, dd, 0), du + dd)
        finally:
            with self._lock:
                self._ended_during = None
            # Flows gone from the table whose end never reached us (a hook not wired, a failed
            # sink): forgotten after a few scrapes, so the state stays bounded.
            stale = [u for u, seen in _copy_items(self._live) if seen[2] < gen - 2]
            for i in range(0, len(stale), APPLY_SLICE):
                with self._lock:
                    for u in stale[i : i + APPLY_SLICE]:
                        seen = self._live.get(u)
                        if seen is not None and seen[2] < gen - 2:
                            del self._live[u]

    def _read_live(
        self, pipeline: Any, gen: int
    ) -> list[tuple[str, str, tuple[str, ...], int, int]]:
        """(uid, device, labels, bytes up, bytes down) of the live flows that sent something
        since they were last counted; the others are only marked as still live."""
        entries = _copy_values(pipeline.flows.entries)
        stages = getattr(self.sensor, "stages", None)
        enricher = getattr(stages, "enricher", None)
        if enricher is not self._dest_owner:
            self._dest_cache = {}
            self._dest_owner = enricher
        resolve = self._dest_labels
        live = self._live  # read without the lock: dict.get is atomic; only this thread adds
        out: list[tuple[str, str, tuple[str, ...], int, int]] = []
        append = out.append
        for e in entries:
            f = e.flow
            up, down = e.up.nbytes, e.down.nbytes
            seen = live.get(f.uid)
            if seen is not None and seen[0] == up and seen[1] == down:
                seen[2] = gen
                continue
            append(
                (f.uid, f.device_mac or "", resolve(enricher, f.dst_ip, f.server_name), up, down)
            )
        return out

    def _dest_labels(self, enricher: Any, ip: str, name: str | None) -> tuple[str, str, str, str]:
        key = (ip, name)
        hit = self._dest_cache.get(key)
        if hit is not None:
            return hit
        if enricher is None:
            hit = (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
        else:
            try:
                d = enricher.destination(ip, 0, name)
                hit = (
                    safe_label(d.vendor) or UNKNOWN,
                    safe_label(d.provider) or UNKNOWN,
                    safe_label(d.region) or UNKNOWN,
                    safe_label(d.country) or UNKNOWN,
                )
            except Exception as exc:
                self.resolve_errors += 1
                self._limiter.warning("resolve", "metrics: placing %s failed: %r", ip, exc)
                hit = (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
        if len(self._dest_cache) >= MAX_DEST_CACHE:
            self._dest_cache.clear()
        self._dest_cache[key] = hit
        return hit

    def _flow_labels(self, flow: Flow) -> tuple[str, str, str, str]:
        x = flow.extra
        if "country" in x:  # enriched by the stages
            return (
                safe_label(x.get("vendor")) or UNKNOWN,
                safe_label(x.get("provider")) or UNKNOWN,
                safe_label(x.get("region")) or UNKNOWN,
                safe_label(x.get("country")) or UNKNOWN,
            )
        enricher = getattr(getattr(self.sensor, "stages", None), "enricher", None)
        if enricher is None:
            return (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
        try:
            d = enricher.destination(flow.dst_ip, flow.dst_port, flow.server_name)
        except Exception:
            self.resolve_errors += 1
            return (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
        return (
            safe_label(d.vendor) or UNKNOWN,
            safe_label(d.provider) or UNKNOWN,
            safe_label(d.region) or UNKNOWN,
            safe_label(d.country) or UNKNOWN,
        )

    # --- devices ------------------------------------------------------------------------------

    def _identity_of(self, mac: str) -> tuple[str, str, str, str]:
        """(vendor, model, kind, name) of a device, "" name when none is known."""
        pipeline = getattr(self.sensor, "pipeline", None)
        dev = pipeline.devices.get(mac) if pipeline is not None else None
        hint = self._names.get(mac, "")
        if dev is None:
            return (UNKNOWN, UNKNOWN, UNKNOWN, hint)
        # Identified afresh when what it rests on changed: the enricher's `extra` can be
        # older than the device's last User-Agent.
        fp = (dev.hostname, dev.dhcp_vendor_class, dev.dhcp_params, len(dev.user_agents))
        cached = self._identity.get(mac)
        if cached is not None and cached[0] == fp:
            ident = cached[1]
        else:
            ident = self._identify(dev)
            if len(self._identity) >= 4 * MAX_NAME_HINTS:
                self._identity.clear()
            self._identity[mac] = (fp, ident)
        vendor, model, kind, name = ident
        return (
            safe_label(vendor) or UNKNOWN,
            safe_label(model) or UNKNOWN,
            safe_label(kind) or UNKNOWN,
            name or hint,
        )

    def _identify(self, dev: Any) -> tuple[str, str, str, str]:
        enricher = getattr(getattr(self.sensor, "stages", None), "enricher", None)
        identifier = getattr(enricher, "devices", None)
        if identifier is not None:
            try:
                i = identifier.identify(dev)
                return (i.vendor or "", i.model or "", i.kind or "", i.name or "")
            except ValueError:
                pass
        x = dev.extra
        return (
            _str(x.get("vendor")),
            _str(x.get("model")),
            _str(x.get("kind")),
            _str(x.get("name")) or dev.hostname or "",
        )

    def _device_labels(self, keys: Iterable[str]) -> dict[str, str]:
        """The `device` label per device key: owner name, else host name, else the MAC; names
        shared by several devices (or equal to "other"/"unknown") get the MAC appended."""
        base: dict[str, str] = {}
        for key in keys:
            if key == "":
                base[key] = UNKNOWN
            elif key == OTHER:
                base[key] = OTHER
            else:
                name = safe_label(self._identity_of(key)[3])
                base[key] = name or key
        count: dict[str, int] = {}
        for v in base.values():
            count[v] = count.get(v, 0) + 1
        out: dict[str, str] = {}
        for key, v in base.items():
            if key not in ("", OTHER) and v != key and (count[v] > 1 or v in (OTHER, UNKNOWN)):
                v = f"{v} ({key})"
            out[key] = v
        return out

    # --- helpers ------------------------------------------------------------------------------

    def _carry_for(self, name: str, owner: object) -> _Carry:
        carry = self._carry.get(name)
        if carry is None:
            carry = self._carry[name] = _Carry()
        carry.owner(owner)
        return carry

    def _counter(
        self, carry: str, owner: object, name: str, doc: str, value: float
    ) -> CounterMetricFamily:
        fam = CounterMetricFamily(name, doc)
        fam.add_metric([], self._carry_for(carry, owner).value((name,), float(value)))
        return fam

    def _read_manifest(self, path: Path) -> dict[str, Any]:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return {}
        if self._manifest is not None and self._manifest[0] == mtime:
            return self._manifest[1]
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return {}
        raw = doc.get("sources") if isinstance(doc, dict) else None
        sources = {str(k): v for k, v in raw.items() if isinstance(v, dict)} if raw else {}
        self._manifest = (mtime, sources)
        return sources


class AlertCounter:
    """An alert sink counting delivered alerts into an `Exporter`."""

    name = "metrics"

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def send(self, alert: Alert) -> None:
        self.exporter.alert(alert)

    def close(self) -> None:
        pass


class _Guarded:
    """The registry's one collector: runs each named collector, contained, and reports
    phonehome_scrape_collector_success / _duration_seconds for each."""

    def __init__(
        self, collectors: Sequence[tuple[str, Callable[[], Families]]], limiter: LogLimiter
    ) -> None:
        self.collectors = list(collectors)
        self.limiter = limiter

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily(
            "phonehome_scrape_collector_success",
            "1 when the collector succeeded in this scrape, 0 when it failed",
            labels=["collector"],
        )
        took = GaugeMetricFamily(
            "phonehome_scrape_collector_duration_seconds",
            "Seconds the collector took in this scrape",
            labels=["collector"],
        )
        for name, fn in self.collectors:
            t0 = time.perf_counter()
            try:
                families = list(fn())
                success = 1.0
            except Exception as exc:
                families = []
                success = 0.0
                self.limiter.warning(f"collector:{name}", "metrics: collector %s failed: %r",
                                     name, exc)  # fmt: skip
            took.add_metric([name], time.perf_counter() - t0)
            ok.add_metric([name], success)
            yield from families
        yield ok
        yield took


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _str(v: object) -> str:
    return v if isinstance(v, str) else ""


def _copy_values(od: Mapping[Any, Any]) -> list[Any]:
    """The table's values, copied while the packet loop may change it: `list()` of a dict
    view runs in C under the GIL; a size change in between is retried."""
    for _ in range(5):
        try:
            return list(od.values())
        except RuntimeError:
            continue
    return list(dict(od).values())


def _copy_items(d: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    for _ in range(5):
        try:
            return list(d.items())
        except RuntimeError:
            continue
    return list(dict(d).items())


def _parse_time(v: object) -> float | None:
    if not isinstance(v, str):
        return None
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


# --- HTTP -------------------------------------------------------------------------------------


def _read_secret(path: str, what: str) -> bytes:
    """A credential file: ours or root's, not readable by group or others; stripped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise MetricsError(f"metrics: {what} {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise MetricsError(f"metrics: {what} {path}: not a regular file")
        if st.st_mode & 0o077:
            raise MetricsError(
                f"metrics: {what} {path}: readable by others (mode {st.st_mode & 0o777:o}); "
                "chmod 600 it"
            )
        data = fh.read(4096).strip()
    if not data:
        raise MetricsError(f"metrics: {what} {path}: empty")
    return data


class _Auth:
    """Accepts a request when no credentials are configured, or when it carries one of the
    configured ones (basic auth or bearer token). Comparisons are constant-time."""

    def __init__(
        self, user: bytes | None, password_sha256: bytes | None, token_sha256: bytes | None
    ) -> None:
        self.user = user
        self.password_sha256 = password_sha256
        self.token_sha256 = token_sha256

    @classmethod
    def from_config(cls, cfg: MetricsConfig) -> _Auth:
        user = pw = token = None
        if cfg.basic_auth_user is not None:
            user = cfg.basic_auth_user.encode()
            if cfg.basic_auth_password_sha256 is not None:
                pw = bytes.fromhex(cfg.basic_auth_password_sha256)
            elif cfg.basic_auth_password_file is not None:
                secret = _read_secret(cfg.basic_auth_password_file, "basic_auth_password_file")
                pw = hashlib.sha256(secret).digest()
        if cfg.bearer_token_file is not None:
            secret = _read_secret(cfg.bearer_token_file, "bearer_token_file")
            token = hashlib.sha256(secret).digest()
        return cls(user, pw, token)

    def __bool__(self) -> bool:
        return self.user is not None or self.token_sha256 is not None

    @property
    def schemes(self) -> str:
        return "Basic" if self.user is not None else "Bearer"

    def check(self, header: str | None) -> bool:
        if not self:
            return True
        if not header:
            return False
        scheme, _, cred = header.strip().partition(" ")
        scheme = scheme.lower()
        cred = cred.strip()
        if scheme == "bearer" and self.token_sha256 is not None:
            got = hashlib.sha256(cred.encode("utf-8", "surrogateescape")).digest()
            return hmac.compare_digest(got, self.token_sha256)
        if scheme == "basic" and self.user is not None and self.password_sha256 is not None:
            try:
                raw = base64.b64decode(cred, validate=True)
            except ValueError:
                return False
            user, sep, pw = raw.partition(b":")
            if not sep:
                return False
            user_ok = hmac.compare_digest(
                hashlib.sha256(user).digest(), hashlib.sha256(self.user).digest()
            )
            pw_ok = hmac.compare_digest(hashlib.sha256(pw).digest(), self.password_sha256)
            return user_ok and pw_ok
        return False


def _tls_context(cfg: MetricsConfig) -> ssl.SSLContext | None:
    if cfg.tls_cert_file is None or cfg.tls_key_file is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise MetricsError(f"metrics: cannot load the TLS certificate or key: {exc}") from None
    return ctx


class _App:
    """The WSGI app: credentials, then /metrics (prometheus_client's app) one at a time."""

    def __init__(self, exporter: Exporter, auth: _Auth) -> None:
        self.exporter = exporter
        self.auth = auth

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if not self.auth.check(environ.get("HTTP_AUTHORIZATION")):
            start_response(
                "401 Unauthorized",
                [
                    ("WWW-Authenticate", f'{self.auth.schemes} realm="phonehome"'),
                    ("Content-Type", "text/plain; charset=utf-8"),
                ],
            )
            return [b"401 Unauthorized\n"]
        path = environ.get("PATH_INFO", "")
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"Phonehome metrics: /metrics\n"]
        if path != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"404 Not Found: try /metrics\n"]
        ex = self.exporter
        if not ex._scrape_lock.acquire(timeout=ex.cfg.scrape_timeout):
            start_response("503 Service Unavailable", [("Retry-After", "5")])
            return [b"503: another scrape is still running\n"]
        try:
            return list(ex._app(environ, start_response))
        finally:
            ex._scrape_lock.release()


class _Handler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s " + format, self.address_string(), *args)


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection (at most MAX_CONNECTIONS), TLS handshakes in that thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], ctx: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.ssl_context = ctx
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks our own name up in DNS (getfqdn): not on a router.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(CONNECTION_TIMEOUT)
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.debug("metrics: TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: request from %s failed", client_address, exc_info=True)
