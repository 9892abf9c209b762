"""sensor.policy: rules from the configuration, compiled nftables text, explanations."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from sensor.config import ConfigError, parse_config
from sensor.enrich.geo import merge_intervals, subtract_intervals
from sensor.policy import DestinationFacts, compile_policy, explain

REDMI = "64:09:80:00:00:01"
TV = "00:11:22:33:44:55"
DEVICES = [
    {"mac": REDMI, "name": "Redmi", "kind": "phone"},
    {"mac": TV, "name": "Telly", "kind": "tv"},
]


def cfg(*rules: dict[str, object], **policy: object):  # type: ignore[no-untyped-def]
    return parse_config({"devices": DEVICES, "policy": {**policy, "rules": list(rules)}}, "p.toml")


class Data:
    """Fixed ranges: CN is 203.0.113.0/24 and 2001:db8:203::/48."""

    def ranges(self, kind: str, value: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        if (kind, value) == ("country", "CN"):
            v6 = 0x20010DB80203 << 80
            return [(0xCB007100, 0xCB0071FF)], [(v6, v6 + (1 << 80) - 1)]
        return [], []

    def party_domains(self, party: str) -> list[str]:
        return ["xiaomi.com", "miui.com"] if party == "Xiaomi" else []


def test_worked_example_compiles() -> None:
    c = cfg({"name": "no-cn", "action": "block", "devices": ["Redmi"], "countries": ["CN"]})
    out = compile_policy(c.policy, c.devices, ["br-lan"], Data(), 0.0)
    s = out.script
    assert s.startswith("table inet phonehome_policy\ndelete table inet phonehome_policy\n")
    assert "type filter hook forward priority filter - 5; policy accept;" in s
    assert "elements = { 203.0.113.0/24 }" in s or "203.0.113.0-203.0.113.255" in s
    # Packets from the Redmi go to its own chains (by MAC), packets to it by its addresses.
    assert f"ether saddr vmap {{ {REDMI} : goto up4_d0 }}" in s
    assert "chain up4_d0 {\n        ip daddr @country_CN_4 counter name r0_d0 jump refuse\n" in s
    assert "chain down6_d0 {\n        ip6 saddr @country_CN_6 counter name r0_d0 drop\n" in s
    assert "chain up4_all {\n    }" in s  # other devices walk no rule
    assert "ip daddr vmap @to_dev_4" in s and out.device_sets == {REDMI: ("down4_d0", "down6_d0")}
    assert "meta l4proto tcp reject with tcp reset" in s
    assert out.counters == {"r0_d0": ("no-cn", "Redmi")}
    assert TV not in s


def test_classes_are_shared_and_alert_is_default() -> None:
    c = cfg(
        {"name": "a", "devices": ["phone"], "countries": ["CN"]},
        {"name": "b", "action": "allow", "devices": ["*"], "countries": ["CN"]},
    )
    out = compile_policy(c.policy, c.devices, ["br-lan"], Data(), 0.0)
    assert out.script.count("set country_CN_4 {") == 1
    assert c.policy.rules[0].action == "alert"
    assert "ip daddr @country_CN_4 counter name r0_d0\n" in out.script
    # The rule over every device is in each device's chain, after that device's own rules.
    assert (
        "chain up4_d0 {\n        ip daddr @country_CN_4 counter name r0_d0\n"
        "        ip daddr @country_CN_4 counter name r1_all accept\n    }"
    ) in out.script
    assert (
        "chain up4_all {\n        ip daddr @country_CN_4 counter name r1_all accept\n" in out.script
    )


def test_expired_rule_is_left_out() -> None:
    c = cfg(
        {"name": "old", "action": "block", "countries": ["CN"], "expires": "2020-01-01T00:00:00Z"}
    )
    out = compile_policy(c.policy, c.devices, ["br-lan"], Data(), 1.9e9)
    assert "r0_all" not in out.script and out.rules[0].expired


def test_quarantine_allows_lan_only() -> None:
    c = cfg({"name": "q", "action": "quarantine", "devices": [TV]})
    s = compile_policy(c.policy, c.devices, ["br-lan"], Data(), 0.0).script
    assert 'chain up6_d0 {\n        oifname != { "br-lan" } counter name r0_d0 jump refuse' in s
    assert 'chain down4_d0 {\n        iifname != { "br-lan" } counter name r0_d0 drop' in s


@pytest.mark.parametrize(
    ("rule", "key", "reason"),
    [
        ({"name": "x", "action": "deny", "countries": ["CN"]}, "policy.rules[0].action", "one of"),
        ({"name": "x", "countries": ["cn"]}, "policy.rules[0].countries", "upper-case"),
        ({"name": "x", "action": "block"}, "policy.rules[0]", "needs a destination"),
        (
            {"name": "x", "devices": ["Nokia"], "countries": ["CN"]},
            "policy.rules[0].devices",
            "Nokia",
        ),
        ({"name": "x", "action": "quarantine"}, "policy.rules[0].devices", "every device"),
        ({"name": "x", "countries": ["CN"], "expires": "soon"}, "policy.rules[0].expires", "ISO"),
        ({"name": "x", "countries": ["CN"], "colour": 1}, "policy.rules[0].colour", "unknown key"),
    ],
)
def test_bad_rules_name_file_key_reason(rule: dict[str, object], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(rule)
    assert err.value.source == "p.toml" and err.value.key == key and reason in err.value.reason


def test_bad_policy_keys() -> None:
    with pytest.raises(ConfigError, match=r"policy\.fail: must be open or closed"):
        cfg(fail="maybe")
    with pytest.raises(ConfigError, match="used by an earlier rule"):
        cfg({"name": "a", "countries": ["CN"]}, {"name": "a", "countries": ["RU"]})


def test_explain_first_deciding_rule_wins() -> None:
    c = cfg(
        {"name": "dry", "devices": ["Redmi"], "parties": ["Xiaomi"]},
        {"name": "allow-sg", "action": "allow", "devices": ["*"], "clouds": ["aws:ap-southeast-1"]},
        {"name": "no-cn", "action": "block", "devices": ["Redmi"], "countries": ["CN"]},
    )
    party = {"Xiaomi": Data().party_domains("Xiaomi")}
    cn = DestinationFacts(ip="203.0.113.10", name="api.account.xiaomi.com", country="CN")
    e = explain(c.policy, c.devices, REDMI, cn, 0.0, party)
    assert e.action == "block" and e.rule is not None and e.rule.name == "no-cn"
    assert e.would_block == ("dry",)
    assert any("country CN" in line for line in e.lines)
    assert explain(c.policy, c.devices, TV, cn, 0.0, party).action == "pass"
    sg = DestinationFacts(ip="198.51.100.20", country="SG", provider="aws", region="ap-southeast-1")
    assert explain(c.policy, c.devices, REDMI, sg, 0.0, party).action == "allow"


def test_interval_arithmetic() -> None:
    assert merge_intervals([(5, 9), (1, 3), (4, 4), (20, 30)]) == [(1, 9), (20, 30)]
    assert subtract_intervals([(0, 100)], [(10, 19), (50, 200)]) == [(0, 9), (20, 49)]
    assert subtract_intervals([(0, 5)], []) == [(0, 5)]


def test_check_names_rules_that_can_never_match(tmp_path: Path) -> None:
    from sensor.check import _check_policy

    c = parse_config(
        {
            "paths": {"state_dir": str(tmp_path)},
            "devices": DEVICES,
            "policy": {
                "rules": [
                    {"name": "ok", "action": "block", "devices": ["Redmi"], "countries": ["CN"]},
                    {"name": "nobody", "parties": ["Nokla"], "asns": [4134]},
                ]
            },
        }
    )
    out = io.StringIO()
    assert _check_policy(c, out) == 2
    text = out.getvalue()
    assert "policy: 2 rules, enforced, fail open" in text
    assert "party 'Nokla': not in vendors.toml" in text and "asn_4134: no addresses" in text
