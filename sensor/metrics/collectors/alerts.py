"""``alerts`` (the alert stage's counters, per Alertmanager), ``placeholders`` and
``learning``: what detection and the alert stage count on their own."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sensor.alerts import RULES
from sensor.detect import placeholders
from sensor.metrics.cardinality import MAX_REASONS, UNKNOWN, fold_keys, safe_label
from sensor.metrics.families import Carries, Carry, Families, copy_items, gauge
from sensor.metrics.views import AlertStageView, DetectorView, PipelineView, PushSink


class AlertStats:
    """The alert stage and its `stats()`, read once per collection (two collectors use them; a
    sink whose stats fail is counted by each read)."""

    def __init__(self, stage: Callable[[], AlertStageView | None]) -> None:
        self.stage = stage
        self._memo: tuple[AlertStageView, Mapping[str, Any]] | None = None

    def forget(self) -> None:
        """A new collection begins (or ended): read the stats afresh."""
        self._memo = None

    def read(self) -> tuple[AlertStageView | None, Mapping[str, Any]]:
        stage = self.stage()
        if stage is None:
            return None, {}
        memo = self._memo
        if memo is None or memo[0] is not stage:
            memo = self._memo = (stage, stage.stats())
        return memo


def alert_stage_families(alerts: AlertStats, carries: Carries) -> Families:
    stage, stats = alerts.read()
    if stage is None:
        return
    carry = carries.of("alert_stage", stage)
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
    for sink, n in sorted(fold_keys(stats.get("sink_errors") or {}).items()):
        fam.add_metric([safe_label(sink)], carry.value(("sink_errors", sink), n))
    yield fam
    yield _dns_bypass_family(stats, carry)
    yield from _alertmanager_families(stage, stats, carry)


def _is_address(value: object) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def _dns_bypass_family(stats: Mapping[str, Any], carry: Carry) -> CounterMetricFamily:
    """DNS-bypass flows by resolver and protocol; the alert stage keeps the pairs bounded
    (`sensor.alerts.MAX_BYPASS_SERIES`, the rest under "other")."""
    fam = CounterMetricFamily(
        "phonehome_dns_bypass_flows",
        "Flows to a resolver the network did not hand out, by resolver and protocol",
        labels=["resolver", "protocol"],
    )
    bypass: dict[tuple[str, str], float] = {}
    for resolver, protocol, n in stats.get("dns_bypass_flows") or ():
        # A server's address is no identifier (safe_label would mask its digits).
        label = resolver if _is_address(resolver) else safe_label(resolver) or UNKNOWN
        series = (str(label), safe_label(protocol))
        n = carry.value(("dns_bypass", resolver, protocol), n)
        bypass[series] = bypass.get(series, 0.0) + n
    for labels, n in sorted(bypass.items()):
        fam.add_metric(list(labels), n)
    return fam


def _alertmanager_families(
    stage: AlertStageView, stats: Mapping[str, Any], carry: Carry
) -> Families:
    """Per Alertmanager the sensor pushes to (each of an HA pair has its own sender): alerts by
    outcome and the queue length, so one unreachable member shows."""
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
    for sink in list(stage.sinks)[:MAX_REASONS]:
        if not isinstance(sink, PushSink):
            continue
        st = sinks.get(sink.name)
        if not isinstance(sink.endpoint, str) or not isinstance(st, Mapping):
            continue
        am = safe_label(sink.endpoint)
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


def placeholder_families(
    detector: Callable[[], DetectorView | None],
    pipeline: Callable[[], PipelineView | None],
    carries: Carries,
) -> Families:
    fam = CounterMetricFamily(
        "phonehome_placeholders",
        "Placeholder values (sensor/data/placeholders.toml) dropped by reason: as an "
        "identifier finding (no alert) or as a device MAC (no device)",
        labels=["reason", "as"],
    )
    det, pipe = detector(), pipeline()
    reasons = placeholders.default().reasons  # the file's reasons: a bounded label
    for what, owner, counts in (
        ("identifier", det, det.placeholders_seen if det is not None else None),
        ("device", pipe, pipe.not_devices if pipe is not None else None),
    ):
        if owner is None or counts is None:
            continue
        seen = dict(copy_items(counts))
        carry = carries.of(f"placeholders_{what}", owner)
        for reason in reasons:
            n = float(seen.get(reason, 0))
            fam.add_metric([reason, what], carry.value((what, reason), n))
    yield fam


def learning_families(detector: Callable[[], DetectorView | None], carries: Carries) -> Families:
    """Identifiers learned from plaintext (`LearnedIdentifiers`): how many, how many wait to be
    searched for, and what a flood of new values made the sensor shed."""
    det = detector()
    learned = det.scanner.learned if det is not None else None
    if learned is None:
        return
    yield carries.counter(
        "learned_total",
        learned,
        "phonehome_identifiers_learned",
        "Identifiers learned from plaintext sightings (their encoded and hashed forms are "
        "searched for from then on)",
        learned.added,
    )
    yield gauge(
        "phonehome_identifiers_learned_in_memory",
        "Learned identifiers kept in memory now (at most detect.max_learned)",
        len(learned),
    )
    yield gauge(
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
    carry = carries.of("learned_shed", learned)
    for reason, n in sorted(dict(learned.shed).items()):
        shed.add_metric([reason], carry.value(("shed", reason), float(n)))
    yield shed
    yield carries.counter(
        "learned_compiles",
        learned,
        "phonehome_identifiers_learned_compiles",
        "Rebuilds of the learned identifiers' automaton",
        learned.compiles,
    )
    yield carries.counter(
        "learned_compile_seconds",
        learned,
        "phonehome_identifiers_learned_compile_seconds",
        "Seconds spent rebuilding the learned identifiers' automaton",
        learned.compile_seconds,
    )
