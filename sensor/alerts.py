"""Alert rules: the detectors' Observations in, Alerts out, handed to the sinks.

As in Zeek's notice framework, detectors (detect/) only say what they saw; this stage decides
what it means. It owns the rules and their named thresholds (settings section ``[alerts]``,
`AlertsConfig`), the suppression of repeats, a rate bound, and delivery to the sinks. Time is
the traffic's time (observation timestamps, `tick(now)`), so a replayed capture behaves like
live traffic. All state is bounded; what a bound pushes out is counted in `stats()`.

Rules
-----
``identifier_abroad`` (critical)
    An identifier (IMEI, phone number, e-mail address, ...) went out in cleartext to a server
    in another country than ``site.home_country`` (``Destination.abroad is True``).
``identifier_cleartext`` (warning)
    The same, to a server at home or of unknown country; the summary says which. In both
    rules an identifier in a DNS query name names only the domain it went to
    (`dns_name_text`): the name's other labels are the leaked data itself.
``new_party_upload`` (warning)
    A device uploaded at least ``new_party_bytes`` (default 1 MB) within one sliding
    ``upload_window`` (default one hour) to a party abroad, in a jurisdiction, that it had not
    sent a single byte to for ``new_party_unseen`` (default 7 days), and the upload began
    less than one ``upload_window`` ago. What changed is what alerts: the daily photo backup
    to the same cloud is not news, the first upload to a new company or country is. For
    ``new_party_learning`` (default one day) after the stage first sees a device, its parties
    are learned silently. The party is the destination's vendor, else its cloud provider,
    else its AS organisation, else its server name, else its address; upload state is kept
    per (device, party, jurisdiction). Fed by "upload" observations (the detector makes one
    with the bytes each flow abroad sent since the last one), whose ``bytes_up`` is taken as
    new bytes (`AlertStage.account_upload`).
``foreign_upload`` (warning, off unless ``foreign_upload_bytes`` is set)
    More than ``foreign_upload_bytes`` went from one device to one party abroad within a
    sliding ``upload_window`` (kept in ``UPLOAD_BUCKETS`` slices, so the window is exact to a
    twelfth). A fixed threshold fires every day for a household whose phones back up photos
    abroad, so it is off by default; setting the key turns it on.
``foreign_upload_anomaly`` (warning)
    The same counters summed per device over fixed periods of one ``upload_window``, against
    the device's own habit: an exponentially weighted mean *m* and standard deviation *s*
    (weight ``anomaly_alpha`` per period; idle periods count as zero; the device's first,
    partial period is left out) of its past periods' totals. It fires as soon as the current
    period's total exceeds all of ``m + anomaly_k * s``, ``anomaly_min_ratio * m`` and
    ``anomaly_floor_bytes`` and ``anomaly_peak_ratio * p``, once the device has
    ``anomaly_min_periods`` periods of history. *p* is the device's peak: the largest past
    period total, decaying with a half-life of ``anomaly_peak_halflife`` (default 7 days).
    Households upload in bursts (the evening photo backup, the daily video call), and a mean
    over hours cannot tell tomorrow's burst from a leak; the peak can: it alerts on an hour
    far above anything the device did lately.
    The ratio keeps a very regular device (s near 0) from alerting on small rises; the floor
    keeps near-silent devices from alerting on a few hundred kilobytes. It is a rule of its
    own (not a form of ``foreign_upload``) so it can be switched off and filtered alone.
``new_country`` (info)
    A device talked to a country for the first time (a "country" observation,
    `AlertStage.account_contact`). For ``new_country_learning`` seconds (default one hour) after the
    stage first sees a device, its countries are learned silently: long enough for a device's
    start-up and periodic check-ins, so a fresh install does not alert on every CDN; short
    enough that a new device is watched the same day. The home country (``abroad is False``)
    is learned but never alerted. Known pairs are remembered up to ``max_contacts``; one
    pushed out may alert again later.
``new_fingerprint`` (info)
    A device showed a JA4 TLS client fingerprint (`sensor.decode.ja4`) it had not shown
    before: a new app, a new OS version, or something new speaking for the device. The
    pipeline keeps each device's set (`Device.ja4`, the last 32) and tells this stage of a
    fingerprint new to it (`AlertStage.account_fingerprint`). For ``new_fingerprint_learning``
    seconds (default one day) after the stage first sees a device its fingerprints are learned
    silently: a phone runs dozens of apps in its first hours. The daemon keeps the sets and
    when their learning began across restarts (`sensor.fingerprints.SavedSets`), so neither
    starts again. Suppressed per (device, fingerprint).
``dns_bypass`` (info, ``dns_bypass_severity``)
    A device resolved names with a resolver the network did not hand out: DoT, DoQ, DoH to a
    listed public resolver, or plain DNS elsewhere (sensor.detect.bypass decides what a flow
    is; "dns_bypass" observations). Keyed per device and resolver.

Suppression and rate
--------------------
An alert is keyed by (device, rule, destination, jurisdiction, identifier kind), where the
destination is the vendor, else the server name, else the address (for the upload rules the
party, resp. the whole device; for ``new_country`` the country), and the jurisdiction is the
destination's country and, for a cloud provider's server, its region (`jurisdiction`): the
same identifier to the same vendor in a second country or region is a new alert, since where
the data went is what the owner needs to know. The first alert of a key is delivered and
opens a ``suppress_window`` (default one hour); repeats inside it are only counted, with the
encodings and servers they used (up to ``MAX_COVERED`` of each). When the window closes
(`tick`), sinks that have ``resolve`` are told, with the number of repeats and that
`Coverage`.
After suppression, a token bucket (``rate_per_second``, ``rate_burst``) bounds what reaches
the sinks, so an alert storm cannot flood the disk or the journal; what it drops is counted
per rule and does not open a window, so a later repeat can still get through.

Sinks are called in order; an exception from one is logged (at a bounded rate) and counted,
and the others still get the alert.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from sensor.config.outputs import AlertsConfig as AlertsConfig  # the [alerts] settings
from sensor.model import RULES as RULES
from sensor.model import Alert, Destination, DeviceRef, Observation
from sensor.model import Rule as Rule
from sensor.model import Severity as Severity
from sensor.names import dns_name_text
from sensor.sinks import AlertSink, Coverage, LogLimiter, ResolvingSink

log = logging.getLogger(__name__)

MAX_BYPASS_SERIES: Final = 64
"""(resolver, protocol) pairs counted for the DNS-bypass metric; more fold into "other"."""
UPLOAD_BUCKETS: Final = 12
"""Slices of the sliding upload window (5 minutes of a 1-hour window)."""
MAX_COVERED: Final = 16
"""Encodings, resp. servers, a suppression window remembers for its resolve record."""
MAX_IDLE_FOLD: Final = 1000
"""Idle periods folded into a baseline at most in one go (zeros; the mean has long decayed)."""

_REDACTED_OK = re.compile(r"…[^@]{0,5}|…@[^@\s]{1,253}|\d{1,6} numbers")
"""The redacted forms detectors produce: a short tail, an e-mail domain, a count."""


# --- state records ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    """An open suppression window."""

    alert: Alert
    until: float
    repeats: int = 0
    encodings: dict[str, None] = field(default_factory=dict)
    servers: dict[str, None] = field(default_factory=dict)
    left_out: int = 0
    """Encodings and servers of repeats not remembered (beyond MAX_COVERED)."""

    def __post_init__(self) -> None:
        self.cover(self.alert)

    def cover(self, alert: Alert) -> None:
        for seen, item in (
            (self.encodings, alert.encoding),
            (self.servers, alert.dst.server_name or alert.dst.ip),
        ):
            if item is None or item in seen:
                continue
            if len(seen) < MAX_COVERED:
                seen[item] = None
            else:
                self.left_out += 1

    def coverage(self) -> Coverage:
        return Coverage(tuple(self.encodings), tuple(self.servers), self.left_out)


@dataclass(slots=True)
class _Device:
    first_seen: float
    period: int
    """Index of the current anomaly period (ts // upload_window)."""
    partial: bool = True
    """The current period is the one the device was first seen in (left out of the baseline)."""
    current: int = 0
    """Bytes abroad in the current period."""
    mean: float = 0.0
    var: float = 0.0
    periods: int = 0
    """Completed periods folded into mean/var."""
    peak: float = 0.0
    """The largest completed period total, decayed by `decay` per period since."""

    def fold(self, x: float, alpha: float, decay: float = 1.0) -> None:
        self.peak = max(x, self.peak * decay)
        if self.periods == 0:
            self.mean, self.var = x, 0.0
        else:
            diff = x - self.mean
            incr = alpha * diff
            self.mean += incr
            self.var = (1 - alpha) * (self.var + diff * incr)
        self.periods += 1


@dataclass(slots=True)
class _Counter:
    """Bytes per slice of the sliding upload window: (slice index, bytes), oldest first."""

    slices: deque[list[int]] = field(default_factory=deque)
    total: int = 0

    def add(self, idx: int, nbytes: int) -> int:
        self.expire(idx)
        if self.slices and self.slices[-1][0] >= idx:
            self.slices[-1][1] += nbytes  # same slice (or an out-of-order timestamp)
        else:
            self.slices.append([idx, nbytes])
        self.total += nbytes
        return self.total

    def expire(self, idx: int) -> None:
        while self.slices and self.slices[0][0] <= idx - UPLOAD_BUCKETS:
            self.total -= self.slices.popleft()[1]


class TokenBucket:
    """`rate` tokens per second up to `burst`; time is whatever clock the caller passes."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is None or now < self.last:
            self.last = now  # first call, or the clock went back: no refill
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# --- text helpers -----------------------------------------------------------------------------


def device_key(dev: DeviceRef) -> str:
    return dev.mac or dev.ip


def jurisdiction(dst: Destination) -> str:
    """Whose law the destination is under, as far as known: its country, and for a cloud
    provider's server also the region ("SG/ap-southeast-1"); "" when the country is unknown.
    Part of every alert's suppression key."""
    if not dst.country:
        return ""
    return f"{dst.country}/{dst.region}" if dst.provider and dst.region else dst.country


def party(dst: Destination) -> str:
    """Whom upload counters are kept for: vendor, provider, AS organisation, name, address."""
    if dst.vendor or dst.provider or dst.asn_org or dst.server_name:
        return dst.vendor or dst.provider or dst.asn_org or dst.server_name or ""
    return dst.ip


def _device_text(dev: DeviceRef) -> str:
    ref = dev.mac or dev.ip
    return f"{dev.name} ({ref})" if dev.name else ref


def _dest_text(dst: Destination) -> str:
    host = dst.server_name or dst.ip
    owner = dst.vendor or dst.provider
    return f"{host} ({owner})" if owner and owner != host else host


def _where(dst: Destination) -> str:
    if dst.country:
        return dst.country + (f"/{dst.region}" if dst.region else "")
    return "an unknown country"


def format_bytes(n: float) -> str:
    """Decimal units, as the thresholds are written: 5000000 -> '5.0 MB'."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _span(seconds: float) -> str:
    """3600 -> 'an hour', 7200 -> '2 hours', 1800 -> '30 minutes'."""
    if seconds == 3600:
        return "an hour"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} hours"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} minutes"
    return f"{seconds:g} seconds"


def _days(seconds: float) -> str:
    """604800 -> '7 days', 86400 -> 'a day', 7200 -> '2 hours'."""
    if seconds == 86400:
        return "a day"
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)} days"
    return _span(seconds)


def _period(seconds: float) -> str:
    """3600 -> 'hour', 7200 -> '2-hour period'."""
    if seconds == 3600:
        return "hour"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}-hour period"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}-minute period"
    return f"{seconds:g}-second period"


# --- the stage --------------------------------------------------------------------------------


class AlertStage:
    """Rules, suppression, rate bound and delivery (see the module docstring)."""

    def __init__(self, cfg: AlertsConfig | None = None, sinks: Sequence[AlertSink] = ()) -> None:
        self.cfg = cfg or AlertsConfig()
        self.sinks: list[AlertSink] = list(sinks)
        self._disabled = frozenset(self.cfg.disabled_rules)
        self._bucket = TokenBucket(self.cfg.rate_per_second, self.cfg.rate_burst)
        self._slice = self.cfg.upload_window / UPLOAD_BUCKETS
        self._peak_decay = 0.5 ** (self.cfg.upload_window / self.cfg.anomaly_peak_halflife)
        self._windows: OrderedDict[tuple[str, str, str, str, str | None], _Window] = OrderedDict()
        self._devices: OrderedDict[str, _Device] = OrderedDict()
        self._contacts: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._counters: OrderedDict[tuple[str, str, str], _Counter] = OrderedDict()
        self._parties: OrderedDict[tuple[str, str, str], list[float]] = OrderedDict()
        """(device, party, jurisdiction) -> [start of the current run of uploads, last upload]"""
        self._limiter = LogLimiter(log)
        self.observations: Counter[str] = Counter()
        self.alerts: Counter[str] = Counter()
        self.suppressed: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.disabled: Counter[str] = Counter()
        self.sink_errors: Counter[str] = Counter()
        self.evicted: Counter[str] = Counter()
        self.bypass_flows: Counter[tuple[str, str]] = Counter()
        """DNS-bypass flows by (resolver, protocol), bounded: "other" past MAX_BYPASS_SERIES."""
        self.learned = 0
        self.learned_parties = 0
        self.learned_fingerprints = 0
        self.values_redacted = 0
        self.resolved = 0
        self._listeners: list[Callable[[Observation], object]] = []

    def add_listener(self, listener: Callable[[Observation], object]) -> None:
        """Have `listener` called with every Observation `observe` receives, before the rules,
        suppression and the rate bound (the metrics count exposures so). Adding one twice is
        a no-op; one that raises is logged at a bounded rate and the observation goes on."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    # --- inputs -------------------------------------------------------------------------------

    def observe(self, obs: Observation) -> Alert | None:
        """Apply the rules to one observation; the alert delivered, if any. The stage's one
        way in from the detectors (`sensor.stages` hands every Observation here)."""
        for listener in self._listeners:
            try:
                listener(obs)
            except Exception as exc:
                self._limiter.warning("listener", "alert stage listener failed: %r", exc)
        self.observations[obs.what] += 1
        if obs.what == "identifier":
            return self._identifier(obs)
        if obs.what == "upload":
            return self.account_upload(obs.ts, obs.device, obs.dst, obs.bytes_up, obs.flow_uid)
        if obs.what == "country":
            return self.account_contact(obs.ts, obs.device, obs.dst, obs.flow_uid)
        if obs.what == "fingerprint" and obs.fingerprint is not None:
            return self.account_fingerprint(
                obs.ts, obs.device, obs.dst, obs.fingerprint, obs.flow_uid, since=obs.since
            )
        if obs.what == "dns_bypass":
            return self._dns_bypass(obs)
        return None

    def account_upload(
        self,
        ts: float,
        device: DeviceRef,
        dst: Destination,
        nbytes: int,
        flow_uid: str | None = None,
    ) -> Alert | None:
        """Count `nbytes` a device sent to `dst` (new bytes since the last call for that
        flow). Only destinations abroad count. Returns the foreign_upload alert delivered,
        else the foreign_upload_anomaly one, else None (both are delivered if both fire)."""
        if nbytes <= 0 or dst.abroad is not True:
            return None
        dkey = device_key(device)
        dev = self._device(dkey, ts)
        who = party(dst)
        jur = jurisdiction(dst)
        ckey = (dkey, who, jur)
        counter = self._counters.get(ckey)
        if counter is None:
            counter = self._counters[ckey] = _Counter()
            if len(self._counters) > self.cfg.max_upload_counters:
                self._counters.popitem(last=False)
                self.evicted["upload_counters"] += 1
        else:
            self._counters.move_to_end(ckey)
        total = counter.add(int(ts // self._slice), nbytes)
        run_start = self._upload_run(ckey, ts)

        cfg = self.cfg
        first: Alert | None = None
        if (
            total >= cfg.new_party_bytes
            and ts - run_start < cfg.upload_window
            and self._may_fire(dkey, "new_party_upload", who, jur, ts)
        ):
            if ts - dev.first_seen < cfg.new_party_learning:
                self.learned_parties += 1
                self._parties[ckey][0] = ts - cfg.upload_window  # known now: no longer new
            else:
                summary = (
                    f"{_device_text(device)} sent {format_bytes(total)} to {who} in "
                    f"{_where(dst)} within {_span(cfg.upload_window)}, its first upload there "
                    f"in {_days(cfg.new_party_unseen)}"
                )
                first = self._emit(
                    self._alert("new_party_upload", ts, device, dst, summary, total, flow_uid),
                    who,
                    None,
                )
        limit = cfg.foreign_upload_bytes
        if (
            limit is not None
            and total > limit
            and self._may_fire(dkey, "foreign_upload", who, jur, ts)
        ):
            summary = (
                f"{_device_text(device)} sent {format_bytes(total)} to {who} in {_where(dst)} "
                f"within {_span(cfg.upload_window)} (threshold {format_bytes(limit)})"
            )
            fixed = self._emit(
                self._alert("foreign_upload", ts, device, dst, summary, total, flow_uid), who, None
            )
            first = first or fixed
        anomaly = self._anomaly(dev, ts, nbytes, device, dst, flow_uid)
        return first or anomaly

    def _upload_run(self, key: tuple[str, str, str], ts: float) -> float:
        """When the current run of uploads to `key` began; a run ends after new_party_unseen
        without a byte."""
        rec = self._parties.get(key)
        if rec is None or ts - rec[1] >= self.cfg.new_party_unseen:
            rec = self._parties[key] = [ts, ts]
            if len(self._parties) > self.cfg.max_upload_parties:
                self._parties.popitem(last=False)
                self.evicted["upload_parties"] += 1
        rec[1] = max(rec[1], ts)
        self._parties.move_to_end(key)
        return rec[0]

    def account_contact(
        self, ts: float, device: DeviceRef, dst: Destination, flow_uid: str | None = None
    ) -> Alert | None:
        """Note that a device talked to `dst`; new_country if its country is new for it."""
        country = dst.country
        if not country:
            return None
        dkey = device_key(device)
        dev = self._device(dkey, ts)
        pair = (dkey, country)
        if pair in self._contacts:
            self._contacts.move_to_end(pair)
            return None
        self._contacts[pair] = None
        if len(self._contacts) > self.cfg.max_contacts:
            self._contacts.popitem(last=False)
            self.evicted["contacts"] += 1
        if ts - dev.first_seen < self.cfg.new_country_learning or dst.abroad is False:
            self.learned += 1
            return None
        summary = (
            f"{_device_text(device)} talked to {country} for the first time ({_dest_text(dst)})"
        )
        return self._emit(
            self._alert("new_country", ts, device, dst, summary, 0, flow_uid), country, None
        )

    def account_fingerprint(
        self,
        ts: float,
        device: DeviceRef,
        dst: Destination,
        ja4: str,
        flow_uid: str | None = None,
        *,
        since: float | None = None,
    ) -> Alert | None:
        """A device showed `ja4`, a fingerprint not in its set; new_fingerprint unless the
        device is still in its learning period, which began when this stage first saw the
        device or at `since` if earlier (a set learned before a restart)."""
        dev = self._device(device_key(device), ts)
        start = dev.first_seen if since is None else min(dev.first_seen, since)
        if ts - start < self.cfg.new_fingerprint_learning:
            self.learned_fingerprints += 1
            return None
        summary = (
            f"{_device_text(device)} showed a new TLS client fingerprint {ja4} "
            f"({_dest_text(dst)})"
        )
        alert = self._alert("new_fingerprint", ts, device, dst, summary, 0, flow_uid)
        return self._emit(alert, ja4, None, "")

    def tick(self, now: float) -> None:
        """Close suppression windows that ended (telling sinks with ``resolve``) and drop
        upload counters that have been idle for a whole window. Call about once a second."""
        while self._windows:
            key, win = next(iter(self._windows.items()))
            if win.until > now:
                break  # windows are kept in opening order, all of the same length
            del self._windows[key]
            self._resolve(win, now)
        idx = int(now // self._slice)
        while self._counters:
            ckey, counter = next(iter(self._counters.items()))
            counter.expire(idx)
            if counter.slices:
                break  # least recently used first: the rest were used later
            del self._counters[ckey]
        while self._parties:
            pkey, rec = next(iter(self._parties.items()))
            if now - rec[1] < self.cfg.new_party_unseen:
                break  # least recently used first
            del self._parties[pkey]

    def close(self) -> None:
        """Close every sink (each failure logged, none propagated)."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                self.sink_errors[_sink_name(sink)] += 1
                log.exception("alert sink %s failed to close", _sink_name(sink))

    def stats(self) -> dict[str, Any]:
        """Counters and state sizes, for metrics and the status command."""
        sink_stats: dict[str, Any] = {}
        for sink in self.sinks:
            get = getattr(sink, "stats", None)
            if get is not None:
                try:
                    sink_stats[_sink_name(sink)] = get()
                except Exception:
                    self.sink_errors[_sink_name(sink)] += 1
        return {
            "observations": dict(self.observations),
            "alerts": dict(self.alerts),
            "suppressed": dict(self.suppressed),
            "dropped": dict(self.dropped),
            "disabled": dict(self.disabled),
            "sink_errors": dict(self.sink_errors),
            "evicted": dict(self.evicted),
            "dns_bypass_flows": [[r, p, n] for (r, p), n in self.bypass_flows.items()],
            "learned_contacts": self.learned,
            "learned_parties": self.learned_parties,
            "learned_fingerprints": self.learned_fingerprints,
            "values_redacted": self.values_redacted,
            "resolved": self.resolved,
            "state": {
                "suppression_windows": len(self._windows),
                "devices": len(self._devices),
                "contacts": len(self._contacts),
                "upload_counters": len(self._counters),
                "upload_parties": len(self._parties),
            },
            "sinks": sink_stats,
        }

    # --- rules --------------------------------------------------------------------------------

    def _identifier(self, obs: Observation) -> Alert | None:
        dst = obs.dst
        if obs.location == "dns" and dst.server_name:
            # The name *is* the message: its labels carry the identifier (hex, base32, plain).
            dst = dataclasses.replace(dst, server_name=dns_name_text(dst.server_name))
        self._device(device_key(obs.device), obs.ts)
        if dst.abroad is True:
            rule = "identifier_abroad"
            where = f"abroad in {_where(dst)}"
        else:
            rule = "identifier_cleartext"
            if dst.abroad is False:
                where = f"a server at home in {_where(dst)}"
            elif dst.country:
                where = f"a server in {dst.country} (home country not configured)"
            else:
                where = "a server of unknown country"
        value = self._safe_value(obs.value)
        what = obs.identifier or "an identifier"
        how = ", ".join(
            x for x in (obs.encoding, f"in {obs.location}" if obs.location else None) if x
        )
        summary = f"{_device_text(obs.device)} sent {what}"
        summary += f" {value}" if value else ""
        summary += f" in cleartext ({how})" if how else " in cleartext"
        summary += f" to {_dest_text(dst)}, {where}"
        alert = Alert(
            rule=rule,
            severity=RULES[rule].severity,
            ts=obs.ts,
            device=obs.device,
            dst=dst,
            summary=summary,
            identifier=obs.identifier,
            encoding=obs.encoding,
            location=obs.location,
            value=value,
            keyed_hash=obs.keyed_hash,
            flow_uid=obs.flow_uid,
        )
        dest = dst.vendor or dst.server_name or dst.ip
        return self._emit(alert, dest, obs.identifier)

    def _dns_bypass(self, obs: Observation) -> Alert | None:
        found = obs.bypass
        if found is None:
            return None
        key = (found.resolver, found.protocol)
        if key not in self.bypass_flows and len(self.bypass_flows) >= MAX_BYPASS_SERIES - 1:
            key = ("other", found.protocol)
        self.bypass_flows[key] += 1
        self._device(device_key(obs.device), obs.ts)
        how = {"dot": "DNS over TLS", "doq": "DNS over QUIC", "doh": "DNS over HTTPS"}
        summary = (
            f"{_device_text(obs.device)} resolves names with {found.resolver} "
            f"({how.get(found.protocol, 'plain DNS')}, {found.evidence}), not with the "
            "network's resolvers"
        )
        alert = dataclasses.replace(
            self._alert("dns_bypass", obs.ts, obs.device, obs.dst, summary, 0, obs.flow_uid),
            severity=cast(Severity, self.cfg.dns_bypass_severity),
        )
        return self._emit(alert, found.resolver, None, "")

    def _anomaly(
        self,
        dev: _Device,
        ts: float,
        nbytes: int,
        device: DeviceRef,
        dst: Destination,
        flow_uid: str | None,
    ) -> Alert | None:
        cfg = self.cfg
        period = int(ts // cfg.upload_window)
        if period > dev.period:
            if not dev.partial:
                dev.fold(dev.current, cfg.anomaly_alpha, self._peak_decay)
            else:  # too short for the mean, but a burst in it is the device's habit too
                dev.peak = max(dev.peak, float(dev.current))
            for _ in range(min(period - dev.period - 1, MAX_IDLE_FOLD)):
                dev.fold(0.0, cfg.anomaly_alpha, self._peak_decay)
            dev.period, dev.partial, dev.current = period, False, 0
        dev.current += nbytes  # an out-of-order timestamp counts in the current period
        if dev.periods < cfg.anomaly_min_periods:
            return None
        sigma = math.sqrt(max(dev.var, 0.0))
        limit = max(
            dev.mean + cfg.anomaly_k * sigma,
            cfg.anomaly_min_ratio * dev.mean,
            float(cfg.anomaly_floor_bytes),
            cfg.anomaly_peak_ratio * dev.peak,
        )
        if dev.current <= limit or not self._may_fire(
            device_key(device), "foreign_upload_anomaly", "*", "", ts
        ):
            return None
        summary = (
            f"{_device_text(device)} sent {format_bytes(dev.current)} abroad in the current "
            f"{_period(cfg.upload_window)}, against its usual {format_bytes(dev.mean)} "
            f"± {format_bytes(sigma)} (last to {_dest_text(dst)} in {_where(dst)})"
        )
        alert = self._alert(
            "foreign_upload_anomaly", ts, device, dst, summary, dev.current, flow_uid
        )
        return self._emit(alert, "*", None, "")

    def policy_event(
        self, rule_name: str, action: str, device: DeviceRef, packets: int, ts: float
    ) -> Alert | None:
        """Packets a policy rule matched (read from its nftables counter): `policy_block` for
        block and quarantine rules, `policy_would_block` for dry runs; one per rule and device
        per suppression window."""
        if action not in ("block", "quarantine", "alert"):
            return None
        rule = "policy_would_block" if action == "alert" else "policy_block"
        verb = "would have blocked" if action == "alert" else "blocked"
        alert = Alert(
            rule=rule,
            severity=RULES[rule].severity,
            ts=ts,
            device=device,
            dst=Destination(ip="", port=0),
            summary=f"policy rule {rule_name!r} {verb} {packets} packets",
        )
        return self._emit(alert, f"policy:{rule_name}", None)

    # --- plumbing -----------------------------------------------------------------------------

    def _alert(
        self,
        rule: str,
        ts: float,
        device: DeviceRef,
        dst: Destination,
        summary: str,
        nbytes: int,
        flow_uid: str | None,
    ) -> Alert:
        return Alert(
            rule=rule,
            severity=RULES[rule].severity,
            ts=ts,
            device=device,
            dst=dst,
            summary=summary,
            bytes_up=nbytes,
            flow_uid=flow_uid,
        )

    def _safe_value(self, value: str | None) -> str | None:
        """Detectors hand over redacted values only ("…1234", "…@example.com", "12
        numbers"). Anything else is cut down to a tail here, so a detector's mistake cannot
        put a whole identifier into a log."""
        if value is None or _REDACTED_OK.fullmatch(value):
            return value
        self.values_redacted += 1
        return "…" + value[-4:] if len(value) > 8 else "…"

    def _device(self, key: str, ts: float) -> _Device:
        dev = self._devices.get(key)
        if dev is None:
            dev = self._devices[key] = _Device(
                first_seen=ts, period=int(ts // self.cfg.upload_window)
            )
            if len(self._devices) > self.cfg.max_devices:
                self._devices.popitem(last=False)
                self.evicted["devices"] += 1
        else:
            self._devices.move_to_end(key)
        return dev

    def _may_fire(self, dkey: str, rule: str, dest: str, jur: str, ts: float) -> bool:
        """Cheap check before an alert is built on a hot path (uploads are accounted per
        packet batch): False, and counted, if the rule is off or the key is suppressed."""
        if rule in self._disabled:
            self.disabled[rule] += 1
            return False
        win = self._windows.get((dkey, rule, dest, jur, None))
        if win is not None and ts < win.until:
            win.repeats += 1
            self.suppressed[rule] += 1
            return False
        return True

    def _emit(
        self, alert: Alert, dest: str, ident: str | None, jur: str | None = None
    ) -> Alert | None:
        """Deliver `alert` unless suppressed or rate-bounded; `jur` defaults to the
        destination's `jurisdiction`."""
        rule = alert.rule
        if rule in self._disabled:
            self.disabled[rule] += 1
            return None
        if jur is None:
            jur = jurisdiction(alert.dst)
        key = (device_key(alert.device), rule, dest, jur, ident)
        win = self._windows.get(key)
        if win is not None:
            if alert.ts < win.until:
                win.repeats += 1
                win.cover(alert)
                self.suppressed[rule] += 1
                return None
            del self._windows[key]  # over, but tick() has not come round yet
            self._resolve(win, alert.ts)
        if not self._bucket.take(alert.ts):
            self.dropped[rule] += 1
            self._limiter.warning("rate", "alert rate limit reached; dropping alerts")
            return None
        self._windows[key] = _Window(alert, alert.ts + self.cfg.suppress_window)
        if len(self._windows) > self.cfg.max_suppressions:
            _, old = self._windows.popitem(last=False)
            self.evicted["suppression_windows"] += 1
            self._resolve(old, alert.ts)
        self.alerts[rule] += 1
        for sink in self.sinks:
            try:
                sink.send(alert)
            except Exception as exc:
                name = _sink_name(sink)
                self.sink_errors[name] += 1
                self._limiter.warning(f"sink:{name}", "alert sink %s failed: %r", name, exc)
        return alert

    def _resolve(self, win: _Window, ts: float) -> None:
        self.resolved += 1
        for sink in self.sinks:
            if not isinstance(sink, ResolvingSink):
                continue
            try:
                sink.resolve(win.alert, ts, win.repeats, win.coverage())
            except Exception as exc:
                name = _sink_name(sink)
                self.sink_errors[name] += 1
                self._limiter.warning(f"sink:{name}", "alert sink %s failed: %r", name, exc)


def _sink_name(sink: object) -> str:
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) else type(sink).__name__
