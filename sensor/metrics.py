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
`top_vendors` parties and `top_countries` countries by bytes (resp. by exposures; the rest are
``"other"``), and at most `max_series_per_device` label sets per device (beyond it, all labels
``"other"``). Membership is sticky: a value outside the top set collects weight as a candidate
and takes the place of the lightest member once it outweighs it. The member's series are then
no longer exported (stale to Prometheus, never a counter reset); what they counted since the
last scrape moves to the matching "other" series, so every byte appears in exactly one
series' increase; bytes already counted under "other" stay there. Unknown values are
``"unknown"``.

Destination families label the `party` (the organisation behind the server name,
sensor.enrich.party; "unknown" for servers reached without a name, whose hosting side the
`provider` label and the alerts still tell); `vendor` is only the device maker, on
``phonehome_device_info``.

Identifiers never appear: device labels are the owner's name, else the DHCP host name, else the
MAC, with anything shaped like an identifier (long digit runs, e-mail addresses, long hex runs,
UUIDs: Android's ``android-<android_id>`` host names) masked; identifier values, redacted values
and keyed hashes are never read. Custom families never carry ``created`` timestamps, so there
are no ``*_created`` series, without touching prometheus_client's process-wide switch.

Each collector is wrapped: one that raises shows ``phonehome_scrape_collector_success 0`` and
the scrape carries on (node_exporter's convention).

The endpoint holds up under hostile scrapers
--------------------------------------------
It serves ``/metrics`` over HTTP or HTTPS, optionally behind basic auth and/or a bearer token
(checked in constant time; anything else gets 401 and no metrics). The endpoint's Python work
takes the GIL from the packet loop, so what scrapers cost is bounded, not their politeness
assumed:

- one thread with a selector serves every connection (`_Server`): a slow client costs a
  socket and a few bytes, never a thread; no thread is started per connection;
- a collection is reused while it is fresh (finished less than `MetricsConfig.min_interval`
  ago, or less than it took), each wire format encoded once per collection, so many scrapers
  cost about what one does; counters never go back (a newer collection only replaces an
  older one);
- at most `max_connections` connections: at the limit a new one takes the place of one from
  the client address that holds the most (its oldest still sending its request, or else its
  answer gone longest without progress), so a crowd from one address only pushes out its
  own;
- a client has `connection_timeout` seconds to send its request (at most `MAX_REQUEST_BYTES`),
  TLS handshake included, and as long again to read the answer;
- at most `ACCEPT_RATE` new connections a second, whoever opens them (the rest wait in the
  kernel's listen queue);
- ``phonehome_metrics_connections_dropped_total{reason}``, ``…_connections_open``,
  ``…_collections_total`` and ``…_http_requests_total{code}`` show all this.

Settings section ``[metrics]``: `MetricsConfig`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import platform
import re
import selectors
import socket
import ssl
import stat
import struct
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    choose_encoder,
    gzip_accepted,
)
from prometheus_client.registry import Collector

from sensor import __version__
from sensor.alerts import RULES
from sensor.detect import placeholders
from sensor.detect.identifiers import ENCODINGS, KINDS
from sensor.metrics_visibility import VisibilityCounter, visibility_of
from sensor.metrics_visibility import family as visibility_family
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
    "state",
    "endpoint",
    "process",
    "policy",
)
"""Collector names (the ``collector`` label; `MetricsConfig.disabled_collectors`)."""

OTHER: Final = "other"
UNKNOWN: Final = "unknown"
MAX_REASONS: Final = 64
"""Skip/weird reasons (and sinks, datasets) kept as labels; more fold into "other"."""
MAX_REQUEST_BYTES: Final = 8192
"""A request's line and headers together (a GET has no body); a longer one is dropped."""
WRITE_CHUNK: Final = 65536
"""Bytes of an answer sent per write; the connection's progress is noted between writes."""
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
    """Parties (the `party` label: the company behind the server name) with series of their
    own per device, by bytes (resp. exposures); the rest, the long tail of bare registrable
    domains among them, are "other". (The key keeps its old name.)"""
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
    """Seconds a scrape waits for a collection under way elsewhere (`Exporter.render`) before
    answering 503."""
    min_interval: float = 0.5
    """Seconds a collection is reused: a scrape less than this long (or than the collection
    took) after the last one finished is answered from it, so concurrent scrapers cost one
    collection (0: a collection for every scrape, unless one is slow)."""
    max_connections: int = 64
    """Connections open at once (one thread serves them all). At the limit a new one takes
    the place of one from the client address that holds the most: the oldest still sending
    its request, or else the answer gone longest without progress."""
    connection_timeout: float = 5.0
    """Seconds a client has to send its request (TLS handshake included), and again to read
    the answer; then the connection is closed."""

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
        if not 0 <= self.min_interval <= 60:
            raise ValueError("min_interval: must be between 0 and 60 seconds")
        if not 1 <= self.max_connections <= 1024:
            raise ValueError("max_connections: must be between 1 and 1024")
        if not 0.1 <= self.connection_timeout <= 300:
            raise ValueError("connection_timeout: must be between 0.1 and 300 seconds")
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
    ``conntrack_updates``, ``cfg`` (sensor.config.Config: state directory, home country),
    ``write_errors`` (failed state-file writes by (file, errno name)).
    """

    def __init__(self, cfg: MetricsConfig, sensor: object) -> None:
        self.cfg = cfg
        self.sensor = sensor
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        """Guards the traffic table, live-flow state and the alert tables (short holds)."""
        self._scrape_lock = threading.Lock()
        """One collection at a time (they share carry-over state)."""
        self._snapshot: _Snapshot | None = None
        """The last collection, reused by scrapes within `MetricsConfig.min_interval`."""
        self._endpoint = _EndpointStats()
        self._limiter = LogLimiter(log)
        self._traffic = Table(
            3,
            (cfg.top_vendors, None, None, cfg.top_countries),
            cfg.max_devices,
            cfg.max_series_per_device,
        )
        """(party, provider, cloud_region, dst_country) -> [bytes up, bytes down, flows]."""
        self._exposures = Table(
            1,
            (None, None, cfg.top_countries, cfg.top_vendors),
            cfg.max_devices,
            cfg.max_series_per_device,
        )
        """(identifier, encoding, dst_country, party) -> [exposures]."""
        self._alerts = Table(1, (None, None), cfg.max_devices, cfg.max_series_per_device)
        """(rule, severity) -> [alerts delivered]."""
        self._visibility = VisibilityCounter(
            Table(2, (None,), cfg.max_devices, cfg.max_series_per_device)
        )
        """(visibility class) -> [bytes up, bytes down] (sensor.metrics_visibility)."""
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
        self._alert_stats_memo: tuple[object, Mapping[str, Any]] | None = None
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
            "placeholders": self._collect_placeholders,
            "devices": self._collect_devices,  # after the tables it lists the devices of
            "pipeline": self._collect_pipeline,
            "capture": self._collect_capture,
            "conntrack": self._collect_conntrack,
            "data": self._collect_data,
            "state": self._collect_state,
            "learning": self._collect_learning,
            "endpoint": self._collect_endpoint,
            "process": process.collect,
            "policy": self._collect_policy,
        }
        off = set(cfg.disabled_collectors)
        self.registry.register(
            _Guarded([(n, fn) for n, fn in table.items() if n not in off], self._limiter)
        )

    # --- hooks (called on the packet loop) ----------------------------------------------------

    def flow_ended(self, flow: Flow) -> None:
        """A flow left the table (idle, evicted, ended): count what it sent since the last
        scrape. Call with the enriched record (the daemon's output sink). Never raises."""
        try:
            labels = self._flow_labels(flow)
            vis = visibility_of(
                getattr(getattr(self.sensor, "stages", None), "enricher", None), flow
            )
            dev = flow.device_mac or ""
            up, down = flow.bytes_up, flow.bytes_down
            with self._lock:
                if self._ended_during is not None:
                    self._ended_during.add(flow.uid)
                seen = self._live.pop(flow.uid, None)
                if seen is None:
                    self._traffic.add(dev, labels, (up, down, 1), up + down)
                    self._visibility.add(dev, vis, up, down)
                else:
                    du, dd = max(0, up - seen[0]), max(0, down - seen[1])
                    if du or dd:
                        self._traffic.add(dev, labels, (du, dd, 0), du + dd)
                        self._visibility.add(dev, vis, du, dd)
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
                safe_label(obs.dst.party) or UNKNOWN,
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

    def start(self, serve: bool = True) -> None:
        """Listen and serve from a daemon thread; with `serve` false, serve only once `serve`
        is called. Read TLS keys and credential files here (before the daemon drops
        privileges). MetricsError if it cannot."""
        self._started = True
        if not self.cfg.enabled or self._server is not None:
            return
        auth = _Auth.from_config(self.cfg)
        ctx = _tls_context(self.cfg)
        try:
            server = _Server(
                (self.cfg.address, self.cfg.port),
                ctx,
                self.cfg,
                self._endpoint,
                _App(self, auth),
                self._limiter,
            )
        except OSError as exc:
            raise MetricsError(
                f"metrics: cannot listen on {self.cfg.address} port {self.cfg.port}: "
                f"{exc.strerror or exc}"
            ) from None
        self._server = server
        if serve:
            self.serve()
        if not ipaddress.ip_address(self.cfg.address).is_loopback and ctx is None and auth:
            log.warning("metrics: credentials travel in clear without tls_cert_file")
        log.info("metrics on %s", self.url)

    def serve(self) -> None:
        """Serve what `start(serve=False)` opened, from a daemon thread. The daemon opens the
        endpoint as root and serves after dropping privileges: a thread made before the drop
        would keep the whole capability bounding set (it is per thread)."""
        if self._server is None or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (waits for the serving thread, at most a few seconds)."""
        self._started = False
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        if thread is None:  # opened, never served
            server.close()
            return
        server.shutdown()
        thread.join(timeout=5)

    def reconfigure(self, cfg: MetricsConfig) -> None:
        """New settings (SIGHUP): a started endpoint restarts if its settings changed
        (MetricsError if it cannot). Series bounds and disabled collectors keep their
        start-up values until the daemon restarts."""
        endpoint = (
            "enabled", "address", "port", "tls_cert_file", "tls_key_file", "basic_auth_user",
            "basic_auth_password_sha256", "basic_auth_password_file", "bearer_token_file",
            "scrape_timeout", "max_connections", "connection_timeout",
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
        """A fresh collection in the text format (tests, `phonehome check`)."""
        snap = self.collection(None, None)
        assert snap is not None  # waited as long as it took
        return snap.body(generate_latest, CONTENT_TYPE_PLAIN_0_0_4, gzipped=False)

    def collection(self, max_age: float | None, wait: float | None) -> _Snapshot | None:
        """The last collection while it is fresh (`_Snapshot.fresh` for `max_age` seconds),
        else a new one: after the one under way, which is shared if it started after the call
        or is fresh by then. `max_age` None: a new one. None when the one under way did not
        finish within `wait` seconds (None: as long as it takes)."""
        asked = time.monotonic()
        snap = self._snapshot
        if max_age is not None and snap is not None and snap.fresh(max_age, asked):
            return snap
        if not self._scrape_lock.acquire(timeout=-1 if wait is None else wait):
            return None
        try:
            snap = self._snapshot
            if snap is not None and (
                snap.started >= asked
                or (max_age is not None and snap.fresh(max_age, time.monotonic()))
            ):
                return snap
            self._endpoint.add("collections")
            started = time.monotonic()
            self._alert_stats_memo = None  # one stats() per collection, however many read it
            try:
                families = list(self.registry.collect())
            finally:
                self._alert_stats_memo = None
            snap = self._snapshot = _Snapshot(started, time.monotonic(), families)
            return snap
        finally:
            self._scrape_lock.release()

    # --- collectors ---------------------------------------------------------------------------

    def _collect_info(self) -> Families:
        build = InfoMetricFamily("phonehome_build", "Phonehome version and the Python running it")
        build.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield build
        site = InfoMetricFamily(
            "phonehome_site", "The site's name (fleet label) and the settings rules join on"
        )
        cfg = getattr(self.sensor, "cfg", None)
        home = getattr(getattr(cfg, "site", None), "home_country", None) or ""
        # config.py imports this module (MetricsConfig): its helper is looked up late
        from sensor.config import Config, site_name

        name = site_name(cfg) if isinstance(cfg, Config) else ""
        site.add_metric([], {"home_country": home, "site": name})
        yield site
        # The upload thresholds the sensor alerts on, so the shipped Prometheus rules follow
        # the owner's settings: ForeignUploadHigh is off while foreign_upload is.
        acfg = getattr(cfg, "alerts", None)
        thresholds = GaugeMetricFamily(
            "phonehome_alert_threshold_bytes",
            "Upload alert thresholds in force (rule absent: off)",
            labels=["rule"],
        )
        if acfg is not None:
            off = set(acfg.disabled_rules)
            if acfg.foreign_upload_bytes is not None and "foreign_upload" not in off:
                thresholds.add_metric(["foreign_upload"], float(acfg.foreign_upload_bytes))
            if "new_party_upload" not in off:
                thresholds.add_metric(["new_party_upload"], float(acfg.new_party_bytes))
        yield thresholds

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
            vis_rows = self._visibility.snapshot()
        names = self._device_labels({d for d, _, _ in rows} | {d for d, _, _ in vis_rows})
        labels = ["device", "party", "provider", "cloud_region", "dst_country"]
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
            "Flows seen (counted when first seen), by device, party and country",
            labels=["device", "party", "dst_country"],
        )
        for fkey, n in flows.items():
            fam.add_metric(list(fkey), n)
        yield fam
        yield visibility_family(vis_rows, names)
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
            labels=["device", "identifier", "encoding", "dst_country", "party"],
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
        stage, stats = self._alert_stats()
        if stage is None:
            return
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
        yield from self._alertmanager_families(stage, stats, carry)

    def _alertmanager_families(
        self, stage: Any, stats: Mapping[str, Any], carry: _Carry
    ) -> Families:
        """Per Alertmanager the sensor pushes to (each of an HA pair has its own sender):
        alerts by outcome and the queue length, so one unreachable member shows."""
        sinks = stats.get("sinks") or {}
        fam = CounterMetricFamily(
            "phonehome_alertmanager_alerts",
            "Alerts pushed to each Alertmanager, by outcome (sent; failed after every retry; "
            "rejected with a 4xx answer; dropped: queue full, or unsent at shutdown)",
            labels=["alertmanager", "outcome"],
        )
        qlen = GaugeMetricFamily(
            "phonehome_alertmanager_queue_length",
            "Alerts waiting for an Alertmanager's sender",
            labels=["alertmanager"],
        )
        for sink in list(getattr(stage, "sinks", ()))[:MAX_REASONS]:
            endpoint = getattr(sink, "endpoint", None)
            st = sinks.get(getattr(sink, "name", None))
            if not isinstance(endpoint, str) or not isinstance(st, Mapping):
                continue
            am = safe_label(endpoint)
            for outcome, n in (
                ("sent", st.get("sent", 0)),
                ("failed", st.get("failed", 0)),
                ("rejected", st.get("rejected", 0)),
                (
                    "dropped",
                    st.get("dropped_queue_full", 0)
                    + st.get("dropped_closed", 0)
                    + st.get("unsent_at_close", 0),
                ),
            ):
                fam.add_metric([am, outcome], carry.value(("am", am, outcome), float(n)))
            qlen.add_metric([am], float(st.get("queue_length", 0)))
        yield fam
        yield qlen

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
            (
                "phonehome_quic_flows_unnamed",
                "QUIC flows that ended without a name from their Initials, by why",
                dict(p.quic_unnamed),
            ),
        ):
            fam = CounterMetricFamily(name, doc, labels=["reason"])
            for reason, n in sorted(_fold_keys(counts).items()):
                fam.add_metric([safe_label(reason)], carry.value((name, reason), n))
            yield fam
        flows = p.flows
        yield _gauge("phonehome_flows_active", "Flows in the flow table", len(flows))
        yield _gauge("phonehome_flows_active_max", "The flow table's size cap", p.flows.cap)
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
            "Capture trouble by kind: malformed, truncated, overruns, errors, freeze, "
            "over_budget (not sampled: the LAN host was over its sampling budget)",
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
            for kind in ("malformed", "truncated", "overruns", "errors", "freeze", "over_budget"):
                if kind in st:
                    errs.add_metric([iface, kind], val(kind))
            if "kernel_queue" in st:
                queue.add_metric([iface], float(st["kernel_queue"]))
        yield from (recv, deliv, drop, errs, queue)
        restored = getattr(self.sensor, "rules_restored", None)
        if getattr(self.sensor, "capture_mode", None) == "nflog" and restored is not None:
            fam = CounterMetricFamily(
                "phonehome_capture_rules_restored",
                "Times the sensor found its nftables table gone (a firewall reload flushed the "
                "ruleset) and installed it again, by result (failed: the sensor samples nothing)",
                labels=["result"],
            )
            for result in ("ok", "failed"):
                fam.add_metric([result], float(restored.get(result, 0)))
            yield fam
            missing = GaugeMetricFamily(
                "phonehome_capture_rules_missing",
                "1 while the sensor's nftables table is gone and nothing reaches it",
            )
            missing.add_metric([], 1.0 if getattr(self.sensor, "rules_missing", False) else 0.0)
            yield missing

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

    def _collect_policy(self) -> Families:
        """The policy's nftables counters, per rule and device (configured rules x configured
        devices, so bounded), and its own bookkeeping. Nothing without a policy."""
        enf = getattr(self.sensor, "enforcer", None)
        if enf is None:
            return
        compiled = enf.compiled
        actions = {r.rule.name: r.rule.action for r in compiled.rules}
        packets = CounterMetricFamily(
            "phonehome_policy_packets",
            "Packets a policy rule matched, per rule and device (action alert: would block)",
            labels=["rule", "device", "action"],
        )
        nbytes = CounterMetricFamily(
            "phonehome_policy_bytes",
            "Bytes a policy rule matched, per rule and device (action alert: would block)",
            labels=["rule", "device", "action"],
        )
        for counter, (rule, device) in sorted(compiled.counters.items()):
            p, b = enf.totals.get(counter, (0, 0))
            labels = [safe_label(rule), safe_label(device), actions.get(rule, "")]
            packets.add_metric(labels, float(p))
            nbytes.add_metric(labels, float(b))
        yield packets
        yield nbytes
        rules = GaugeMetricFamily(
            "phonehome_policy_rules", "Policy rules in force, by action", labels=["action"]
        )
        live = Counter(r.rule.action for r in compiled.rules if not r.expired)
        for action in ("alert", "block", "allow", "quarantine"):
            rules.add_metric([action], float(live.get(action, 0)))
        yield rules
        abroad = GaugeMetricFamily(
            "phonehome_policy_abroad_blocks",
            "identifier_abroad blocks (device and server pairs) in force",
        )
        abroad.add_metric([], float(enf.abroad_blocks()))
        yield abroad
        st = enf.stats
        dns = CounterMetricFamily(
            "phonehome_policy_dns_answers",
            "DNS answers naming a rule's domain: added to its set, or ignored (not from a "
            "trusted resolver)",
            labels=["result"],
        )
        dns.add_metric(["added"], float(st.dns_elements))
        dns.add_metric(["ignored"], float(st.dns_ignored))
        yield dns
        capped = CounterMetricFamily(
            "phonehome_policy_abroad_capped",
            "identifier_abroad blocks not made because the rule's cap (policy.abroad_max) was "
            "reached",
        )
        capped.add_metric([], float(st.abroad_capped))
        yield capped
        restored = CounterMetricFamily(
            "phonehome_policy_table_restored",
            "Times the policy table was found gone (a firewall reload) and loaded again",
            labels=["result"],
        )
        for result in ("ok", "failed"):
            restored.add_metric([result], float(st.restored.get(result, 0)))
        yield restored
        missing = GaugeMetricFamily(
            "phonehome_policy_table_missing", "1 while the policy table is gone from the kernel"
        )
        missing.add_metric([], 1.0 if enf.missing else 0.0)
        yield missing

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

    def _collect_state(self) -> Families:
        """Failed writes to the disk: the event log's (its sink counts them by errno name;
        carried over a reload's new sink) and the sensor's own state files
        (``sensor.write_errors``, {(file, reason): n})."""
        fam = CounterMetricFamily(
            "phonehome_state_write_errors",
            "Writes of the event log and state files that failed, by file and errno name "
            "(ENOSPC: disk full; EROFS, EACCES: not writable)",
            labels=["file", "reason"],
        )
        stage, stats = self._alert_stats()
        if stage is not None:
            sinks = stats.get("sinks") or {}
            counts = {
                k.removeprefix("errors_"): v
                for k, v in (sinks.get("eventlog") or {}).items()
                if k.startswith("errors_")
            }
            carry = self._carry_for("eventlog", stage)
            for reason, n in sorted(_fold_keys(counts).items()):
                fam.add_metric(
                    ["events.jsonl", safe_label(reason)], carry.value(("eventlog", reason), n)
                )
        detector = getattr(getattr(self.sensor, "stages", None), "detector", None)
        if detector is not None:
            learned = getattr(detector, "write_errors", None) or {}
            carry = self._carry_for("learned", detector)
            for reason, n in sorted(_fold_keys(dict(_copy_items(learned))).items()):
                fam.add_metric(
                    ["learned.json", safe_label(reason)], carry.value(("learned", reason), n)
                )
        own = getattr(self.sensor, "write_errors", None)
        if own:
            for (name, reason), n in sorted(_copy_items(own))[:MAX_REASONS]:
                fam.add_metric([safe_label(name), safe_label(reason)], float(n))
        yield fam

    def _collect_placeholders(self) -> Families:
        fam = CounterMetricFamily(
            "phonehome_placeholders",
            "Placeholder values (sensor/data/placeholders.toml) dropped by reason: as an "
            "identifier finding (no alert) or as a device MAC (no device)",
            labels=["reason", "as"],
        )
        stages = getattr(self.sensor, "stages", None)
        detector = getattr(stages, "detector", None)
        pipeline = getattr(self.sensor, "pipeline", None)
        reasons = placeholders.default().reasons  # the file's reasons: a bounded label
        for what, owner, attr in (
            ("identifier", detector, "placeholders_seen"),
            ("device", pipeline, "not_devices"),
        ):
            if owner is None:
                continue
            seen = dict(_copy_items(getattr(owner, attr, None) or {}))
            carry = self._carry_for(f"placeholders_{what}", owner)
            for reason in reasons:
                n = float(seen.get(reason, 0))
                fam.add_metric([reason, what], carry.value((what, reason), n))
        yield fam

    def _collect_learning(self) -> Families:
        """Identifiers learned from plaintext (`LearnedIdentifiers.stats`): how many, how many
        wait to be searched for, and what a flood of new values made the sensor shed."""
        detector = getattr(getattr(self.sensor, "stages", None), "detector", None)
        scanner = getattr(detector, "scanner", None)
        learned = getattr(scanner, "learned", None)
        if learned is None:
            return
        yield self._counter(
            "learned_total",
            learned,
            "phonehome_identifiers_learned",
            "Identifiers learned from plaintext sightings (their encoded and hashed forms are "
            "searched for from then on)",
            learned.added,
        )
        yield _gauge(
            "phonehome_identifiers_learned_in_memory",
            "Learned identifiers kept in memory now (at most detect.max_learned)",
            len(learned),
        )
        yield _gauge(
            "phonehome_identifiers_learned_pending",
            "Learned identifiers not yet searched for: they wait for the next compile, which "
            "gets at most a tenth of the scanner's time",
            learned.pending,
        )
        shed = CounterMetricFamily(
            "phonehome_identifiers_learned_shed",
            "Learned identifiers dropped to stay within detect.max_learned, taken from the "
            "device holding the most; reason=unsearched: dropped before its encoded forms were "
            "ever searched for (new values came faster than the compile budget)",
            labels=["reason"],
        )
        carry = self._carry_for("learned_shed", learned)
        for reason, n in sorted(dict(learned.shed).items()):
            shed.add_metric([reason], carry.value(("shed", reason), float(n)))
        yield shed
        yield self._counter(
            "learned_compiles",
            learned,
            "phonehome_identifiers_learned_compiles",
            "Rebuilds of the learned identifiers' automaton",
            learned.compiles,
        )
        yield self._counter(
            "learned_compile_seconds",
            learned,
            "phonehome_identifiers_learned_compile_seconds",
            "Seconds spent rebuilding the learned identifiers' automaton",
            learned.compile_seconds,
        )

    def _collect_endpoint(self) -> Families:
        ep = self._endpoint
        with ep.lock:
            counts = dict(ep.counts)
            codes = dict(ep.codes)
        server = self._server
        fam = CounterMetricFamily(
            "phonehome_metrics_connections_dropped",
            "Connections to the metrics endpoint closed by it: evicted (making room for a new "
            "one at max_connections), timeout (request or answer too slow), invalid (request "
            "too long or malformed)",
            labels=["reason"],
        )
        for reason in _DROP_REASONS:
            fam.add_metric([reason], counts.get(reason, 0))
        yield fam
        yield _gauge(
            "phonehome_metrics_connections_open",
            "Connections to the metrics endpoint open now (this one included)",
            server.open_connections() if server is not None else 0,
        )
        yield _gauge(
            "phonehome_metrics_connections_max",
            "The metrics endpoint's connection limit (max_connections)",
            self.cfg.max_connections,
        )
        fam = CounterMetricFamily(
            "phonehome_metrics_collections",
            "Collections of the metrics (scrapes within min_interval share one)",
        )
        fam.add_metric([], counts.get("collections", 0))
        yield fam
        fam = CounterMetricFamily(
            "phonehome_metrics_http_requests",
            "Requests the metrics endpoint answered, by status code",
            labels=["code"],
        )
        for code, n in sorted(codes.items()):
            fam.add_metric([code], n)
        yield fam

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
                    add_vis = self._visibility.add
                    for uid, dev, labels, up, down, vis in rows[i : i + APPLY_SLICE]:
                        if uid in ended:
                            continue
                        seen = live.get(uid)
                        if seen is None:
                            live[uid] = [up, down, gen]
                            add(dev, labels, (up, down, 1), up + down)
                            add_vis(dev, vis, up, down)
                            continue
                        du, dd = up - seen[0], down - seen[1]
                        seen[2] = gen
                        if du > 0 or dd > 0:
                            du, dd = max(du, 0), max(dd, 0)
                            seen[0] += du
                            seen[1] += dd
                            add(dev, labels, (du, dd, 0), du + dd)
                            add_vis(dev, vis, du, dd)
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
    ) -> list[tuple[str, str, tuple[str, ...], int, int, str | None]]:
        """(uid, device, labels, bytes up, bytes down, visibility class) of the live flows that
        sent something since they were last counted; the others are only marked as still
        live."""
        entries = _copy_values(pipeline.flows.entries)
        stages = getattr(self.sensor, "stages", None)
        enricher = getattr(stages, "enricher", None)
        if enricher is not self._dest_owner:
            self._dest_cache = {}
            self._dest_owner = enricher
        resolve = self._dest_labels
        live = self._live  # read without the lock: dict.get is atomic; only this thread adds
        out: list[tuple[str, str, tuple[str, ...], int, int, str | None]] = []
        append = out.append
        for e in entries:
            f = e.flow
            up, down = e.up.nbytes, e.down.nbytes
            seen = live.get(f.uid)
            if seen is not None and seen[0] == up and seen[1] == down:
                seen[2] = gen
                continue
            vis = visibility_of(enricher, f)
            name = None if vis == "relay" else f.server_name  # a relay's name is no party
            append((f.uid, f.device_mac or "", resolve(enricher, f.dst_ip, name), up, down, vis))
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
                    safe_label(d.party) or UNKNOWN,
                    safe_label(d.provider) or UNKNOWN,
                    safe_label(d.region) or UNKNOWN,
                    safe_label(d.country) or UNKNOWN,
                )
            except Exception as exc:
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
                safe_label(x.get("party")) or UNKNOWN,
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
            return (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
        return (
            safe_label(d.party) or UNKNOWN,
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

    def _alert_stage(self) -> Any:
        """The sensor's alert stage (``stages.detector.alerts``), None when it has none."""
        detector = getattr(getattr(self.sensor, "stages", None), "detector", None)
        return getattr(detector, "alerts", None)

    def _alert_stats(self) -> tuple[Any, Mapping[str, Any]]:
        """The alert stage and its `stats()`, read once per collection (two collectors use
        them; a sink whose stats fail is counted by each read)."""
        stage = self._alert_stage()
        if stage is None:
            return None, {}
        memo = self._alert_stats_memo
        if memo is None or memo[0] is not stage:
            memo = self._alert_stats_memo = (stage, stage.stats())
        return memo

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


_DROP_REASONS: Final = ("evicted", "timeout", "invalid")
_READING, _WRITING = 0, 1
"""A connection's phases: sending its request (TLS handshake included), reading the answer."""
_POLL: Final = 0.25
"""Seconds between the serving thread's checks of the connections' ages, at most."""
_CROWD_TURNS: Final = 16
"""Connections of a crowd (an address holding over a quarter of max_connections) served per
round of the serving thread, at most."""
_BACKLOG: Final = 256
ACCEPT_RATE: Final = 400.0
"""New connections accepted per second, at most (in bursts of up to `_ACCEPT_BURST`); more
wait in the listen queue. Each one costs the packet loop some GIL time, whoever sends it;
scrapers need a few a second."""
_ACCEPT_BURST: Final = 64.0
_ABORT: Final = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 seconds: close() resets the connection."""


class _EndpointStats:
    """The endpoint's own counters, kept by the exporter so that they outlive a restart of the
    endpoint (reconfigure)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        """Dropped connections by reason (`_DROP_REASONS`), and "collections"."""
        self.codes: Counter[str] = Counter()
        """Requests answered, by status code."""

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def answered(self, code: str) -> None:
        with self.lock:
            self.codes[code] += 1


def _encode(encoder: Callable[[Collector], bytes], families: Collector, gz: bool) -> bytes:
    out = encoder(families)
    return gzip.compress(out, compresslevel=6) if gz else out


class _Snapshot:
    """One collection, and its encodings (per content type and compression), each made once.
    A collector itself: the encoders read it as they would a registry."""

    def __init__(self, started: float, finished: float, families: list[Metric]) -> None:
        self.started = started
        """time.monotonic() when the collection began."""
        self.finished = finished
        self.families = families
        self._bodies: dict[tuple[str, bool], bytes] = {}
        self._lock = threading.Lock()

    def collect(self) -> list[Metric]:
        return self.families

    def fresh(self, max_age: float, now: float) -> bool:
        """Finished less than `max_age` seconds ago, or less than it took (a slow collection
        does not run back to back)."""
        return now - self.finished < max(max_age, self.finished - self.started)

    def body(
        self,
        encoder: Callable[[Collector], bytes],
        content_type: str,
        gzipped: bool,
        names: Sequence[str] = (),
    ) -> bytes:
        """The collection in `content_type` (its `encoder`); only samples named in `names`
        when given (``?name[]=...``, not kept)."""
        if names:  # prometheus_client's own ?name[] filter (it finds collectors by name)
            registry = CollectorRegistry(auto_describe=True)
            registry.register(self)
            return _encode(encoder, registry.restricted_registry(names), gzipped)
        key = (content_type, gzipped)
        with self._lock:
            out = self._bodies.get(key)
            if out is None:
                out = self._bodies[key] = _encode(encoder, self, gzipped)
        return out


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ","."""


_LINE_END = re.compile(rb"\r?\n")
_HEAD_END = re.compile(rb"\n\r?\n")


def _head_end(buf: bytearray, start: int) -> int:
    """Where the request's head (line and headers) ends in `buf`, -1 while incomplete; the
    search starts at `start` (what came before was searched already)."""
    m = _HEAD_END.search(buf, start)
    return m.end() if m else -1


def _parse_request(head: bytes) -> _Request | None:
    """The request line and headers of `head`, None when malformed."""
    lines = _LINE_END.split(head)
    parts = lines[0].decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        if not raw:
            continue
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            return None
        key, v = name.lower(), value.strip()
        headers[key] = f"{headers[key]},{v}" if key in headers else v
    path, _, query = parts[1].partition("?")
    return _Request(parts[0], path, query, headers)


class _App:
    """The answers: credentials first, then /metrics from the shared collection."""

    def __init__(self, exporter: Exporter, auth: _Auth) -> None:
        self.exporter = exporter
        self.auth = auth

    def __call__(self, req: _Request) -> tuple[str, list[tuple[str, str]], bytes]:
        text = ("Content-Type", "text/plain; charset=utf-8")
        if not self.auth.check(req.headers.get("authorization")):
            www = ("WWW-Authenticate", f'{self.auth.schemes} realm="phonehome"')
            return "401 Unauthorized", [www, text], b"401 Unauthorized\n"
        if req.method != "GET":
            return "405 Method Not Allowed", [("Allow", "GET"), text], b"405: use GET\n"
        if req.path == "/":
            return "200 OK", [text], b"Phonehome metrics: /metrics\n"
        if req.path != "/metrics":
            return "404 Not Found", [text], b"404 Not Found: try /metrics\n"
        ex = self.exporter
        snap = ex.collection(ex.cfg.min_interval, ex.cfg.scrape_timeout)
        if snap is None:
            return (
                "503 Service Unavailable",
                [("Retry-After", "5"), text],
                b"503: the collection under way is taking too long\n",
            )
        encoder, content_type = choose_encoder(req.headers.get("accept", ""))
        gz = gzip_accepted(req.headers.get("accept-encoding", ""))
        names = parse_qs(req.query).get("name[]", [])
        headers = [("Content-Type", content_type)]
        if gz:
            headers.append(("Content-Encoding", "gzip"))
        return "200 OK", headers, snap.body(encoder, content_type, gz, names)


class _Conn:
    """A connection as the serving thread keeps it: no thread of its own."""

    __slots__ = ("addr", "events", "fd", "handshaken", "host", "inbuf", "mark", "out", "phase",
                 "since", "sock")  # fmt: skip

    def __init__(self, sock: socket.socket, addr: Any, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.host = str(addr[0]) if isinstance(addr, tuple) and addr else ""
        self.phase = _READING
        self.since = now
        """When the phase began (its time limit counts from here)."""
        self.mark = now
        """Last sign of progress: when it was accepted while it sends its request (however
        much it dribbles), the last write that went out while it reads the answer."""
        self.events = 0
        """What the selector waits for (0: not registered)."""
        self.handshaken = not isinstance(sock, ssl.SSLSocket)
        self.inbuf = bytearray()
        self.out: list[memoryview] = []
        """What is left to send: the head, then the body (shared by every scraper)."""


class _Server:
    """The endpoint: one thread and a selector for every connection (slowloris clients cost a
    socket and a few bytes each, not a thread); a request is answered when its head is in, a
    collection, when one is due, in this thread too (scrapes arriving meanwhile share it).

    At most `max_connections` connections. At the limit a new one takes the place of a
    connection of the client address that holds the most: its oldest one still sending its
    request, or else its answer gone longest without progress. So a crowd of slow connections
    from one address only pushes out its own members, never a scraper elsewhere; and a
    well-behaved request is safe once read (requests in are read before newcomers are
    accepted).

    A connection that takes more than `connection_timeout` to send its request (TLS handshake
    included), or to read its answer, is closed. Dropped connections are closed with a reset
    and counted by reason. New connections are accepted at `ACCEPT_RATE` a second at most.
    """

    def __init__(
        self,
        address: tuple[str, int],
        ctx: ssl.SSLContext | None,
        cfg: MetricsConfig,
        stats: _EndpointStats,
        app: Callable[[_Request], tuple[str, list[tuple[str, str]], bytes]],
        limiter: LogLimiter,
    ) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(_BACKLOG)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self.ssl_context = ctx
        self.max_connections = cfg.max_connections
        self.connection_timeout = cfg.connection_timeout
        self.stats = stats
        self.app = app
        self.limiter = limiter
        self._conns: dict[int, _Conn] = {}
        self._by_host: dict[str, dict[int, _Conn]] = {}
        """The connections of each client address, oldest first."""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.socket, selectors.EVENT_READ, "accept")
        self._wake, self._waker = socket.socketpair()
        self._wake.setblocking(False)
        self._sel.register(self._wake, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._accept_paused_until = 0.0
        self._tokens = _ACCEPT_BURST
        """Connections that may be accepted now (refilled at ACCEPT_RATE)."""
        self._refilled = time.monotonic()

    def open_connections(self) -> int:
        return len(self._conns)

    def serve_forever(self) -> None:
        try:
            while not self._stopping:
                accept = False
                wait = _POLL
                if self._accept_paused_until:
                    wait = min(wait, max(0.0, self._accept_paused_until - time.monotonic()))
                ready = []
                for key, _ in self._sel.select(wait):
                    if isinstance(key.data, _Conn):
                        ready.append(key.data)
                    elif key.data == "accept":
                        accept = True
                    else:
                        with contextlib.suppress(OSError):
                            self._wake.recv(64)
                try:
                    if accept:
                        self._accept()
                    # Clients with few connections first; a crowd's turn is bounded per round
                    # (the rest stay ready for the next), so it cannot hold up the accepting
                    # of everyone else's connections.
                    ready.sort(key=self._crowding)
                    crowd_turns = _CROWD_TURNS
                    for conn in ready:
                        if self._conns.get(conn.fd) is not conn:
                            continue
                        if self._crowded(conn):
                            if crowd_turns <= 0:
                                break
                            crowd_turns -= 1
                        self._service(conn)
                    self._check(time.monotonic())
                except Exception as exc:  # a bug: the endpoint carries on, and says so
                    self.limiter.warning("endpoint", "metrics: endpoint trouble: %r", exc)
                    time.sleep(0.05)
        finally:
            self.close()

    def shutdown(self) -> None:
        """Stop serving (from another thread): the serving thread closes everything."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._waker.send(b"x")

    def close(self) -> None:
        """Close every connection and the listening socket (the serving thread does, once
        stopped; or whoever opened the endpoint and never served it)."""
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        for s in (self.socket, self._wake, self._waker):
            s.close()

    # --- connections ------------------------------------------------------------------------

    def _pause_accepting(self, seconds: float) -> None:
        self._sel.unregister(self.socket)
        self._accept_paused_until = time.monotonic() + seconds

    def _accept(self) -> None:
        # Newcomers are accepted before the ready connections are served: a scraper's is
        # answered at once (below); a crowd's may push its own older ones out unanswered.
        now = time.monotonic()
        self._tokens = min(_ACCEPT_BURST, self._tokens + (now - self._refilled) * ACCEPT_RATE)
        self._refilled = now
        if self._tokens < 1:  # the rest wait in the listen queue
            self._pause_accepting((1 - self._tokens) / ACCEPT_RATE)
            return
        for _ in range(max(1, min(self.max_connections // 2, int(self._tokens)))):
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of descriptors: let the backlog wait a moment
                log.debug("metrics: accept failed: %s", exc)
                self._pause_accepting(0.1)
                return
            self._tokens -= 1
            if len(self._conns) >= self.max_connections:
                self._make_room()
            try:
                sock.setblocking(False)
                if self.ssl_context is not None:
                    sock = self.ssl_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
            except OSError as exc:
                log.debug("metrics: connection from %s failed: %s", addr, exc)
                sock.close()
                continue
            conn = _Conn(sock, addr, time.monotonic())
            self._conns[conn.fd] = conn
            self._by_host.setdefault(conn.host, {})[conn.fd] = conn
            # A scraper's request is usually in already: answered without a trip through the
            # selector (each system call can cost the GIL's switch interval when the packet
            # loop is busy). A crowd's newcomers wait for the selector, behind everyone else,
            # and the crowd's own newer ones may push them out before they cost an answer.
            if self._crowded(conn):
                self._want(conn, selectors.EVENT_READ)
            else:
                self._service(conn)

    def _crowding(self, conn: _Conn) -> int:
        """Connections open from `conn`'s address."""
        return len(self._by_host.get(conn.host, ()))

    def _crowded(self, conn: _Conn) -> bool:
        """`conn`'s address holds over a quarter of max_connections."""
        return self._crowding(conn) > self.max_connections // 4

    def _make_room(self) -> None:
        """Close a connection of the client address that holds the most: its oldest one still
        sending its request, or else the one whose answer has gone longest without progress.

        Never the newcomer: it cannot be told from a scraper before its request is in (and
        turning a crowd's newcomers away at once only brings them back sooner)."""
        crowd = max(self._by_host.values(), key=len)
        victim = next((c for c in crowd.values() if c.phase == _READING), None)
        if victim is None:
            victim = min(crowd.values(), key=lambda c: c.mark)
        self._close(victim, "evicted")

    def _check(self, now: float) -> None:
        # After every wake-up (at least each _POLL): too slow is closed.
        limit = self.connection_timeout
        for conn in [c for c in self._conns.values() if now - c.since > limit]:
            self._close(conn, "timeout")
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._sel.register(self.socket, selectors.EVENT_READ, "accept")

    def _close(self, conn: _Conn, reason: str | None = None) -> None:
        """Close `conn`; when it is dropped (`reason` counted), with a reset: the kernel keeps
        neither its unsent answer nor a TIME_WAIT entry for it."""
        if self._conns.pop(conn.fd, None) is None:
            return
        own = self._by_host[conn.host]
        del own[conn.fd]
        if not own:
            del self._by_host[conn.host]
        if conn.events:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
        with contextlib.suppress(OSError):
            if reason is not None:
                self.stats.add(reason)
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
            conn.sock.close()

    def _want(self, conn: _Conn, events: int) -> None:
        if not conn.events:
            self._sel.register(conn.sock, events, conn)
        elif conn.events != events:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _service(self, conn: _Conn) -> None:
        try:
            if conn.phase == _READING:
                self._read(conn)
            else:
                self._write(conn)
        except OSError as exc:  # reset, TLS alert, a client speaking something else
            log.debug("metrics: connection from %s ended: %r", conn.addr, exc)
            self._close(conn)
        except Exception:
            log.debug("metrics: request from %s failed", conn.addr, exc_info=True)
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        sock = conn.sock
        if not conn.handshaken:
            assert isinstance(sock, ssl.SSLSocket)
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                self._want(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._want(conn, selectors.EVENT_WRITE)
                return
            conn.handshaken = True
        while True:
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                self._want(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._want(conn, selectors.EVENT_WRITE)
                return
            if not data:  # the client gave up
                self._close(conn)
                return
            buf = conn.inbuf
            start = max(0, len(buf) - 3)
            buf += data
            end = _head_end(buf, start)
            if end < 0 and len(buf) < MAX_REQUEST_BYTES:
                continue
            if end < 0 or end > MAX_REQUEST_BYTES:
                self._close(conn, "invalid")
                return
            self._answer(conn, bytes(buf[:end]))
            return

    def _answer(self, conn: _Conn, head: bytes) -> None:
        req = _parse_request(head)
        headers: list[tuple[str, str]]
        if req is None:
            self.stats.add("invalid")
            status, headers, body = "400 Bad Request", [], b"400 Bad Request\n"
        else:
            status, headers, body = self.app(req)
            self.stats.answered(status.split(" ", 1)[0])
        lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
        lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        head = "\r\n".join(lines).encode("latin-1")
        conn.out = [memoryview(b) for b in (head, body) if b]  # a ?name[] body may be empty
        conn.inbuf = bytearray()
        conn.phase = _WRITING
        conn.since = conn.mark = time.monotonic()
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        sock, out = conn.sock, conn.out
        plain = not isinstance(sock, ssl.SSLSocket)
        while out:
            try:
                if plain:  # head and body in one system call
                    n = sock.sendmsg([v[:WRITE_CHUNK] for v in out])
                else:
                    n = sock.send(out[0][:WRITE_CHUNK])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                self._want(conn, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._want(conn, selectors.EVENT_READ)
                return
            conn.mark = time.monotonic()
            while n and n >= len(out[0]):
                n -= len(out.pop(0))
            if n:
                out[0] = out[0][n:]
        self._close(conn)
