"""``data`` and ``state``: the sensor's files. How old the data files are (from update-data's
manifest), and which writes of the event log and state files failed."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sensor.metrics.cardinality import MAX_REASONS, fold_keys, safe_label
from sensor.metrics.collectors.alerts import AlertStats
from sensor.metrics.families import Carries, Families, copy_items
from sensor.metrics.views import DetectorView
from sensor.update import manifest

if TYPE_CHECKING:
    from sensor.config import Config


class DataFiles:
    """``data``: each data file's age, records and update trouble, from
    ``<state_dir>/data/manifest.json`` (read again only when it changed)."""

    def __init__(self, config: Callable[[], Config | None]) -> None:
        self.config = config
        self._manifest: tuple[float, dict[str, Any]] | None = None

    def collect(self) -> Families:
        cfg = self.config()
        state = cfg.paths.state_dir if cfg is not None else None
        if not state:
            return
        sources = self._read_manifest(Path(state) / "data" / manifest.MANIFEST)
        now = time.time()
        age = GaugeMetricFamily(
            "phonehome_data_age_seconds",
            "Seconds since a data file was last fetched successfully",
            labels=["dataset"],
        )
        stamp = GaugeMetricFamily(
            "phonehome_data_timestamp_seconds",
            "When a data file was last fetched successfully (Unix time)",
            labels=["dataset"],
        )
        records = GaugeMetricFamily(
            "phonehome_data_records", "Records (prefixes) in a data file", labels=["dataset"]
        )
        failing = GaugeMetricFamily(
            "phonehome_data_update_failing",
            "1 when the last update of a data file failed (the previous copy is in use)",
            labels=["dataset"],
        )
        for name, entry in sorted(sources.items())[:MAX_REASONS]:
            ds = safe_label(name)
            fetched = manifest.parse_time(entry.get("fetched"))
            if fetched is not None:
                age.add_metric([ds], max(0.0, now - fetched))
                stamp.add_metric([ds], fetched)
            if isinstance(entry.get("records"), int):
                records.add_metric([ds], float(entry["records"]))
            attempt = manifest.parse_time(entry.get("last_attempt"))
            bad = bool(entry.get("last_error")) and (
                fetched is None or attempt is None or attempt >= fetched
            )
            failing.add_metric([ds], 1.0 if bad else 0.0)
        yield from (age, stamp, records, failing)

    def _read_manifest(self, path: Path) -> dict[str, Any]:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return {}
        if self._manifest is not None and self._manifest[0] == mtime:
            return self._manifest[1]
        try:
            sources = manifest.load(path)
        except (OSError, ValueError):
            return {}
        self._manifest = (mtime, sources)
        return sources


def state_families(
    alerts: AlertStats,
    detector: Callable[[], DetectorView | None],
    write_errors: Callable[[], Mapping[tuple[str, str], int]],
    carries: Carries,
) -> Families:
    """``state``: failed writes to the disk: the event log's (its sink counts them by errno
    name; carried over a reload's new sink), learned.json's (the detector's) and the sensor's
    own state files ({(file, reason): n})."""
    fam = CounterMetricFamily(
        "phonehome_state_write_errors",
        "Writes of the event log and state files that failed, by file and errno name "
        "(ENOSPC: disk full; EROFS, EACCES: not writable)",
        labels=["file", "reason"],
    )
    stage, stats = alerts.read()
    if stage is not None:
        sinks = stats.get("sinks") or {}
        counts = {
            k.removeprefix("errors_"): v
            for k, v in (sinks.get("eventlog") or {}).items()
            if k.startswith("errors_")
        }
        carry = carries.of("eventlog", stage)
        for reason, n in sorted(fold_keys(counts).items()):
            fam.add_metric(
                ["events.jsonl", safe_label(reason)], carry.value(("eventlog", reason), n)
            )
    det = detector()
    if det is not None:
        carry = carries.of("learned", det)
        for reason, n in sorted(fold_keys(dict(copy_items(det.write_errors))).items()):
            fam.add_metric(
                ["learned.json", safe_label(reason)], carry.value(("learned", reason), n)
            )
    own = write_errors()
    if own:
        for (name, reason), n in sorted(copy_items(own))[:MAX_REASONS]:
            fam.add_metric([safe_label(name), safe_label(reason)], float(n))
    yield fam

