"""The daemon's memory bound (`Daemon._check_memory`): when it sheds flows, against a flow
table of known size and a resident size the test sets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from sensor import daemon as daemon_mod

MB = 1 << 20


class Table:
    """The flow table's size and cap, and what `shrink` was asked."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.cap = 200_000

    def __len__(self) -> int:
        return self.size

    def shrink(self, cap: int) -> int:
        self.cap = max(16, min(self.cap, cap))
        ended = max(0, self.size - self.cap)
        self.size -= ended
        return ended


def checker(table: Table, limit_mb: int = 128) -> Any:
    return SimpleNamespace(
        cfg=SimpleNamespace(daemon=SimpleNamespace(memory_limit_mb=limit_mb)),
        memory={"rss_bytes": 0, "sheds": 0, "flows_shed": 0},
        pipeline=SimpleNamespace(flows=table),
        _rss_at_shed=0,
    )


def check(d: Any, rss_mb: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_mod, "_rss_bytes", lambda: int(rss_mb * MB))
    daemon_mod.Daemon._check_memory(d)


def test_sheds_in_steps_then_never_past_the_last_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    table = Table(4000)
    d = checker(table)
    check(d, 100, monkeypatch)  # under 85% of 128 MB: nothing
    assert d.memory["sheds"] == 0 and len(table) == 4000
    check(d, 110, monkeypatch)  # over 85%: the oldest 30% end
    assert d.memory["sheds"] == 1 and len(table) == 2800
    check(d, 111, monkeypatch)  # a shed seldom lowers RSS: the next waits for 2% more growth
    assert d.memory["sheds"] == 1
    check(d, 113, monkeypatch)
    assert d.memory["sheds"] == 2 and len(table) == int(2800 * 0.7)
    check(d, 116, monkeypatch)
    check(d, 119, monkeypatch)
    assert d.memory["sheds"] == 4 and len(table) < 1024
    # Below 1,024 flows the steps stop, until the resident size reaches 95% of the bound:
    # from there every check sheds, down to the table's floor, so the creep ends before
    # the bound rather than past it.
    check(d, 121, monkeypatch)
    assert d.memory["sheds"] == 4
    shed = d.memory["sheds"]
    for _ in range(20):
        check(d, 122, monkeypatch)
    assert d.memory["sheds"] > shed
    assert len(table) < 32
    assert d.memory["flows_shed"] == 4000 - len(table)


def test_no_bound_no_shed(monkeypatch: pytest.MonkeyPatch) -> None:
    table = Table(100_000)
    d = checker(table, limit_mb=0)
    check(d, 10_000, monkeypatch)
    assert d.memory["sheds"] == 0 and len(table) == 100_000
