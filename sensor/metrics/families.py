"""What every collector shares: the contained runner that reports each collector's success
(node_exporter's convention: one that raises shows ``phonehome_scrape_collector_success 0``
and the scrape carries on), counters carried over a reload, and copies of tables the packet
loop changes while a scrape reads them.

Custom families never carry ``created`` timestamps, so there are no ``*_created`` series,
without touching prometheus_client's process-wide switch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sensor.sinks import LogLimiter

Families = Iterable[Metric]
Collect = Callable[[], Families]
"""A collector: builds its families fresh at every scrape."""


class Carry:
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


class Carries:
    """One `Carry` per name (a collector's counters read from one object)."""

    def __init__(self) -> None:
        self._carry: dict[str, Carry] = {}

    def of(self, name: str, owner: object) -> Carry:
        carry = self._carry.get(name)
        if carry is None:
            carry = self._carry[name] = Carry()
        carry.owner(owner)
        return carry

    def counter(
        self, carry: str, owner: object, name: str, doc: str, value: float
    ) -> CounterMetricFamily:
        fam = CounterMetricFamily(name, doc)
        fam.add_metric([], self.of(carry, owner).value((name,), float(value)))
        return fam


class Guarded:
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


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def str_of(v: object) -> str:
    return v if isinstance(v, str) else ""


def copy_values(od: Mapping[Any, Any]) -> list[Any]:
    """The table's values, copied while the packet loop may change it: `list()` of a dict
    view runs in C under the GIL; a size change in between is retried."""
    for _ in range(5):
        try:
            return list(od.values())
        except RuntimeError:
            continue
    return list(dict(od).values())


def copy_items(d: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    for _ in range(5):
        try:
            return list(d.items())
        except RuntimeError:
            continue
    return list(dict(d).items())
