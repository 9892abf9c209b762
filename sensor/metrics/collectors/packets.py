"""``pipeline``, ``capture`` and ``conntrack``: the packet path's own counters (packets read,
decoded, skipped; the flow table; what the kernel dropped before the sensor saw it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sensor.metrics.cardinality import fold_keys, safe_label
from sensor.metrics.families import Carries, Families, gauge
from sensor.metrics.views import CaptureView, ConntrackView, NflogRules, PipelineView


def pipeline_families(pipeline: Callable[[], PipelineView | None], carries: Carries) -> Families:
    p = pipeline()
    if p is None:
        return
    carry = carries.of("pipeline", p)
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
        for reason, n in sorted(fold_keys(counts).items()):
            fam.add_metric([safe_label(reason)], carry.value((name, reason), n))
        yield fam
    flows = p.flows
    yield gauge("phonehome_flows_active", "Flows in the flow table", len(flows.entries))
    yield gauge("phonehome_flows_active_max", "The flow table's size cap", flows.cap)
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
    yield gauge("phonehome_dns_cache_entries", "Entries in the DNS name cache", len(p.dns))


def capture_families(
    capture: Callable[[], CaptureView | None],
    interfaces: Callable[[], Sequence[str]],
    nflog_rules: Callable[[], NflogRules | None],
    carries: Carries,
) -> Families:
    source = capture()
    if source is None:
        return
    stats = source.stats()
    carry = carries.of("capture", source)
    per_if = stats.get("interfaces")
    groups: dict[str, Mapping[str, object]]
    if isinstance(per_if, Mapping):
        groups = {str(k): v for k, v in per_if.items() if isinstance(v, Mapping)}
    else:
        groups = {",".join(interfaces()) or "all": stats}
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
    backlog = GaugeMetricFamily(
        "phonehome_capture_backlog_bytes",
        "Captured packets the kernel queued for the sensor that it has not read yet, in the "
        "kernel's buffer bytes: above 0 for long, the sensor is behind (after a flood)",
        labels=["interface"],
    )
    for ifname, st in sorted(groups.items()):
        iface = safe_label(ifname) or "all"

        def val(key: str, st: Mapping[str, object] = st, iface: str = iface) -> float:
            return carry.value((iface, key), _number(st.get(key)))

        recv.add_metric([iface], val("received"))
        deliv.add_metric([iface], val("delivered"))
        drop.add_metric([iface], val("drops") + val("lost"))
        for kind in ("malformed", "truncated", "overruns", "errors", "freeze", "over_budget"):
            if kind in st:
                errs.add_metric([iface, kind], val(kind))
        if "kernel_queue" in st:
            queue.add_metric([iface], _number(st["kernel_queue"]))
        if "backlog" in st:
            backlog.add_metric([iface], _number(st["backlog"]))
    yield from (recv, deliv, drop, errs, queue, backlog)
    rules = nflog_rules()
    if rules is not None:
        fam = CounterMetricFamily(
            "phonehome_capture_rules_restored",
            "Times the sensor found its nftables table gone (a firewall reload flushed the "
            "ruleset) and installed it again, by result (failed: the sensor samples nothing)",
            labels=["result"],
        )
        for result in ("ok", "failed"):
            fam.add_metric([result], float(rules.restored.get(result, 0)))
        yield fam
        missing = GaugeMetricFamily(
            "phonehome_capture_rules_missing",
            "1 while the sensor's nftables table is gone and nothing reaches it",
        )
        missing.add_metric([], 1.0 if rules.missing else 0.0)
        yield missing


def conntrack_families(
    conntrack: Callable[[], ConntrackView | None],
    updates: Callable[[], int | None],
    carries: Carries,
) -> Families:
    mon = conntrack()
    if mon is None:
        return
    carry = carries.of("conntrack", mon)
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
    waiting = mon.backlog()
    if waiting is not None:
        yield gauge(
            "phonehome_conntrack_backlog_bytes",
            "Conntrack events the kernel queued that the sensor has not read yet, in the "
            "kernel's buffer bytes: above 0 for long, the sensor is behind",
            waiting,
        )
    n = updates()
    if isinstance(n, int):
        fam = CounterMetricFamily(
            "phonehome_conntrack_updates", "Conntrack entries applied to flows"
        )
        fam.add_metric([], carry.value(("updates",), float(n)))
        yield fam


def _number(v: object) -> float:
    """A counter from a stats mapping (absent or None: 0)."""
    return float(v) if isinstance(v, int | float) else 0.0
