"""``policy``: the policy's nftables counters per rule and device, and its own bookkeeping."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sensor.metrics.cardinality import safe_label
from sensor.metrics.families import Families
from sensor.metrics.views import PolicyView


def policy_families(policy: Callable[[], PolicyView | None]) -> Families:
    """The policy's nftables counters, per rule and device (configured rules x configured
    devices, so bounded), and its own bookkeeping. Nothing without a policy."""
    enf = policy()
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
        "identifier_abroad blocks not made because the rule's cap (policy.abroad_max) was reached",
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
