"""Bounded label tables: which label values get series of their own, the rest folded into
"other"; and label hygiene (no identifier ever becomes a label value).

Per family: at most `max_devices` devices (the rest are ``device="other"``), per device the top
`top_vendors` parties and `top_countries` countries by bytes (resp. by exposures; the rest are
``"other"``), and at most `max_series_per_device` label sets per device (beyond it, all labels
``"other"``). Membership is sticky: a value outside the top set collects weight as a candidate
and takes the place of the lightest member once it outweighs it. The member's series are then
no longer exported (stale to Prometheus, never a counter reset); what they counted since the
last scrape moves to the matching "other" series, so every byte appears in exactly one
series' increase; bytes already counted under "other" stay there. Unknown values are
``"unknown"``.

Device labels never carry identifiers: anything shaped like one (long digit runs, e-mail
addresses, long hex runs, UUIDs: Android's ``android-<android_id>`` host names) is masked.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final

OTHER: Final = "other"
UNKNOWN: Final = "unknown"
MAX_REASONS: Final = 64
"""Skip/weird reasons (and sinks, datasets) kept as labels; more fold into "other"."""

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


def vocab(value: str | None, allowed: frozenset[str]) -> str:
    if not value:
        return UNKNOWN
    return value if value in allowed else OTHER


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


def fold_keys(counts: Mapping[str, Any], limit: int = MAX_REASONS) -> dict[str, float]:
    """At most `limit` keys (the largest), the rest summed under "other"."""
    items = [(str(k), float(v)) for k, v in counts.items() if isinstance(v, int | float)]
    if len(items) <= limit:
        return dict(items)
    items.sort(key=lambda kv: -kv[1])
    out = dict(items[: limit - 1])
    out[OTHER] = out.get(OTHER, 0.0) + sum(v for _, v in items[limit - 1 :])
    return out
