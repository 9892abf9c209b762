"""sensor.enforce without a kernel: an `nft` stand-in records what it is asked (the lab tests
run the real one)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from sensor.config import parse_config
from sensor.enforce import EnforceError, Enforcer
from sensor.policy import compile_policy
from tests.test_policy import DEVICES, REDMI, Data

FAKE_NFT = """#!/bin/sh
# Records each call's arguments and stdin; answers `-j list counters` from counters.json.
dir=$(dirname "$0")
echo "ARGS $*" >> "$dir/calls"
case "$*" in
  *"list counters"*) cat "$dir/counters.json" ;;
  *"list table"*) [ -e "$dir/present" ] ;;
  *) cat >> "$dir/calls"; [ ! -e "$dir/fail" ] ;;
esac
"""


@pytest.fixture
def nft(tmp_path: Path) -> Path:
    path = tmp_path / "nft"
    path.write_text(FAKE_NFT)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "counters.json").write_text('{"nftables": []}')
    return path


def enforcer(nft: Path, clock: list[float], **rule: object) -> Enforcer:
    base = {"name": "r", "action": "block", "devices": ["Redmi"]}
    cfg = parse_config({"devices": DEVICES, "policy": {"rules": [base | rule]}})
    compiled = compile_policy(cfg.policy, cfg.devices, ["br-lan"], Data(), 0.0)
    return Enforcer(
        compiled,
        resolvers=["192.168.1.1"],
        abroad_expiry=600,
        abroad_max=2,
        nft=str(nft),
        now=lambda: clock[0],
    )


def calls(nft: Path) -> str:
    path = nft.parent / "calls"
    return path.read_text() if path.exists() else ""


def test_dns_answers_only_from_trusted_resolvers_with_clamped_ttls(nft: Path) -> None:
    e = enforcer(nft, [100.0], domains=["xiaomi.com"])
    assert e.dns_answer("203.0.113.99", "api.xiaomi.com", "198.51.100.7", 300) == 0
    assert e.stats.dns_ignored == 1 and "198.51.100.7" not in calls(nft)
    assert e.dns_answer("192.168.1.1", "example.com", "198.51.100.7", 300) == 0
    assert e.dns_answer("192.168.1.1", "api.xiaomi.com", "198.51.100.7", 5) == 1
    assert "r0_dns_4 { 198.51.100.7 timeout 30s }" in calls(nft)
    assert e.dns_answer("192.168.1.1", "API.Xiaomi.com.", "2001:db8::7", 10**6) == 1
    assert "r0_dns_6 { 2001:db8::7 timeout 86400s }" in calls(nft)
    # A repeat while the element is fresh costs no nft call; a longer TTL refreshes it.
    assert e.dns_answer("192.168.1.1", "api.xiaomi.com", "198.51.100.7", 5) == 0
    assert e.dns_answer("192.168.1.1", "api.xiaomi.com", "198.51.100.7", 300) == 1
    assert "delete element inet phonehome_policy r0_dns_4 { 198.51.100.7 }" in calls(nft)


def test_identifier_abroad_blocks_are_capped_and_expire(nft: Path) -> None:
    clock = [1000.0]
    e = enforcer(nft, clock, identifier_abroad=True)
    assert e.identifier_abroad("00:11:22:33:44:55", "192.168.1.9", "203.0.113.1") == 0  # not Redmi
    assert e.identifier_abroad(REDMI, "192.168.1.5", "203.0.113.1") == 1
    assert "r0_abroad_4 { 192.168.1.5 . 203.0.113.1 timeout 600s }" in calls(nft)
    assert e.identifier_abroad(REDMI, "192.168.1.5", "203.0.113.2") == 1
    assert e.identifier_abroad(REDMI, "192.168.1.5", "203.0.113.3") == 0
    assert e.stats.abroad_capped == 1 and e.abroad_blocks() == 2
    clock[0] += 601
    assert e.abroad_blocks() == 0
    assert e.identifier_abroad(REDMI, "fd00::5", "2001:db8::3") == 1
    assert "r0_abroad_6 { fd00::5 . 2001:db8::3 timeout 600s }" in calls(nft)


def test_reinstall_puts_dynamic_elements_back(nft: Path) -> None:
    clock = [0.0]
    e = enforcer(nft, clock, domains=["xiaomi.com"], identifier_abroad=True)
    e.learn_neighbour("192.168.1.5", REDMI)
    e.learn_neighbour("192.168.1.6", "00:11:22:33:44:55")  # the TV: no rule names it
    e.dns_answer("192.168.1.1", "api.xiaomi.com", "198.51.100.7", 300)
    e.identifier_abroad(REDMI, "192.168.1.5", "203.0.113.1")
    (nft.parent / "calls").unlink()
    assert e.check() is True  # the table is gone: loaded again
    again = calls(nft)
    assert "table inet phonehome_policy {" in again
    assert "to_dev_4 { 192.168.1.5 : goto down4_d0 }" in again and "192.168.1.6" not in again
    assert "r0_dns_4 { 198.51.100.7 timeout 300s }" in again
    assert "r0_abroad_4 { 192.168.1.5 . 203.0.113.1 timeout 600s }" in again
    assert e.stats.restored["ok"] == 1
    (nft.parent / "present").touch()
    assert e.check() is False


def test_a_refused_policy_leaves_the_old_one(nft: Path) -> None:
    e = enforcer(nft, [0.0], countries=["CN"])
    old = e.compiled
    (nft.parent / "fail").touch()
    cfg = parse_config(
        {"devices": DEVICES, "policy": {"rules": [{"name": "x", "countries": ["RU"]}]}}
    )
    new = compile_policy(cfg.policy, cfg.devices, ["br-lan"], Data(), 0.0)
    with pytest.raises(EnforceError):
        e.replace(new)
    assert e.compiled is old and e.stats.loads["failed"] == 1


def test_counters_become_events_and_survive_a_reload(nft: Path) -> None:
    e = enforcer(nft, [0.0], countries=["CN"])
    counters = nft.parent / "counters.json"

    def kernel(packets: int) -> None:
        item = {
            "counter": {
                "family": "inet",
                "name": "r0_d0",
                "packets": packets,
                "bytes": 100 * packets,
            }
        }
        counters.write_text(json.dumps({"nftables": [{"metainfo": {}}, item]}))

    kernel(5)
    (ev,) = e.poll_counters()
    assert (ev.rule, ev.action, ev.device, ev.packets) == ("r", "block", REDMI, 5)
    assert e.poll_counters() == []  # nothing new
    kernel(2)  # the table was loaded again: its counters start over
    (ev,) = e.poll_counters()
    assert ev.packets == 2 and e.totals["r0_d0"] == (7, 700)


def test_an_address_that_moves_to_another_device_is_remapped(nft: Path) -> None:
    cfg = parse_config(
        {
            "devices": DEVICES,
            "policy": {
                "rules": [{"name": "r", "devices": ["Redmi", "Telly"], "countries": ["CN"]}]
            },
        }
    )
    compiled = compile_policy(cfg.policy, cfg.devices, ["br-lan"], Data(), 0.0)
    e = Enforcer(compiled, resolvers=(), abroad_expiry=60, abroad_max=1, nft=str(nft))
    e.learn_neighbour("192.168.1.5", REDMI)
    e.learn_neighbour("192.168.1.5", "00:11:22:33:44:55")
    text = calls(nft)
    assert text.index("delete element inet phonehome_policy to_dev_4 { 192.168.1.5 }") < text.index(
        "to_dev_4 { 192.168.1.5 : goto down4_d1 }"
    )
    assert e.neighbours == {REDMI: {}, "00:11:22:33:44:55": {"192.168.1.5": None}}
