"""The owner reloads the gateway's firewall while the daemon runs: `nft -f` of a ruleset file
that begins with `flush ruleset` (what a restart of nftables.service does) takes the sensor's
table with it. The daemon must notice, put its table back, say so, and alert again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.daemon import RULES_CHECK
from sensor.kernel.nftables import NFT_TABLE
from sensor.lab import Lab
from tests.lab.test_daemon import Daemon
from tests.lab.test_floods import ALERTS, SUPPRESS, leak_raises_alert, metric_series


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(lab, tmp_path, extra=ALERTS)
    try:
        d.wait_notify("READY=1")
        yield d
    finally:
        d.stop()


def _owners_ruleset(lab: Lab) -> str:
    """The gateway's firewall as its owner's file would hold it: every table but ours (the
    lab's NAT and filter), after a `flush ruleset`."""
    tables = lab.gw_exec(["nft", "list", "tables"], check=True).stdout.split("\n")
    script = ["flush ruleset"]
    for line in tables:
        words = line.split()
        if len(words) == 3 and words[0] == "table" and words[2] != NFT_TABLE:
            listed = lab.gw_exec(["nft", "list", "table", words[1], words[2]], check=True)
            script.append(listed.stdout)
    assert len(script) > 1, tables  # the lab's NAT is there to be reloaded
    return "\n".join(script) + "\n"


def _table_present(lab: Lab) -> bool:
    return lab.gw_exec(["nft", "list", "table", "inet", NFT_TABLE]).returncode == 0


def test_a_firewall_reload_does_not_blind_the_sensor(lab: Lab, daemon: Daemon) -> None:
    leak_raises_alert(daemon, lab)
    warm = time.monotonic()
    assert _table_present(lab)
    reload = _owners_ruleset(lab)
    lab.gw_exec(["nft", "-f", "-"], input=reload, text=True, check=True)
    flushed = time.monotonic()
    while not _table_present(lab):
        assert time.monotonic() - flushed < RULES_CHECK + 10, "the table was not put back"
        daemon.pump(0.05)
    back = time.monotonic() - flushed
    # The owner's tables are untouched: the phone still reaches the internet through NAT.
    daemon.pump(max(0.0, warm + SUPPRESS + 0.1 - time.monotonic()))
    alert_s = leak_raises_alert(daemon, lab)
    series = metric_series(lab)
    assert series['phonehome_capture_rules_restored_total{result="ok"}'] == 1
    assert series['phonehome_capture_rules_restored_total{result="failed"}'] == 0
    assert series["phonehome_capture_rules_missing"] == 0
    out = daemon.output()
    assert "is gone" in out and "installed again" in out, out
    print(f"\ntable back {back:.2f} s after the reload; leak alerted {alert_s:.2f} s after it")
