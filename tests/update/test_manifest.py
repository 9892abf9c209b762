"""The data manifest's one reader: its shape, and its one rule for times (a zone-less time is
UTC, whatever the local zone), which `check` and the metrics both follow."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.check import _check_data
from sensor.config import parse_config
from sensor.update import manifest

MIDNIGHT = 1_753_315_200.0
"""2025-07-24T00:00:00Z."""


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local zone nine hours off UTC, so reading as local time would show."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_zone_less_time_is_utc_not_local_time(tokyo: None) -> None:
    assert time.localtime(MIDNIGHT).tm_gmtoff == 9 * 3600  # the zone really is in force
    assert manifest.parse_time("2025-07-24T00:00:00") == MIDNIGHT
    assert manifest.parse_time("2025-07-24T00:00:00Z") == MIDNIGHT
    assert manifest.parse_time("2025-07-24T00:00:00+00:00") == MIDNIGHT
    assert manifest.parse_time("2025-07-24T09:00:00+09:00") == MIDNIGHT
    assert manifest.parse_time("2025-07-24") == MIDNIGHT


def test_numbers_are_unix_seconds_and_anything_else_is_no_time() -> None:
    assert manifest.parse_time(MIDNIGHT) == MIDNIGHT
    assert manifest.parse_time(1_753_315_200) == MIDNIGHT
    for bad in (None, True, "", "yesterday", "2025-13-01T00:00:00Z", math.nan, [], {}):
        assert manifest.parse_time(bad) is None, bad


def test_written_times_read_back() -> None:
    text = manifest.format_time(MIDNIGHT + 0.75)
    assert text == "2025-07-24T00:00:00Z"
    assert manifest.parse_time(text) == MIDNIGHT


def test_shape(tmp_path: Path) -> None:
    path = tmp_path / manifest.MANIFEST
    manifest.write(path, {"b": {"records": 2}, "a": {"records": 1}})
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and list(doc["sources"]) == ["a", "b"]
    assert manifest.parse_time(doc["updated"]) is not None
    assert manifest.load(path) == {"a": {"records": 1}, "b": {"records": 2}}

    path.write_text('{"sources": {"aws": {"records": 1}, "junk": 3}}')
    assert manifest.load(path) == {"aws": {"records": 1}}  # entries not objects: skipped
    path.write_text('{"version": 1}')
    assert manifest.load(path) == {}
    for broken, reason in (('{"sources": ["aws"]}', "no sources table"), ("[]", "not a JSON")):
        path.write_text(broken)
        with pytest.raises(manifest.ManifestError, match=reason):
            manifest.load(path)
        assert manifest.read(path) == {}
    path.write_text("{")
    with pytest.raises(ValueError):
        manifest.load(path)
    assert manifest.read(path) == {}
    assert manifest.read(tmp_path / "missing.json") == {}
    with pytest.raises(FileNotFoundError):
        manifest.load(tmp_path / "missing.json")


def test_check_reads_a_zone_less_time_as_utc(tmp_path: Path, tokyo: None) -> None:
    """`check` used to read a zone-less time as local time: 9 hours off in Tokyo."""
    data = tmp_path / "state" / "data"
    data.mkdir(parents=True)
    now = MIDNIGHT + 10 * 3600
    (data / manifest.MANIFEST).write_text(
        json.dumps({"sources": {"aws": {"fetched": "2025-07-24T00:00:00", "records": 7}}})
    )
    cfg = parse_config({"site": {"home_country": "DE"}, "paths": {"state_dir": str(data.parent)}})
    out = io.StringIO()
    _check_data(cfg, out, now)
    assert "  data aws: 7 records, 10 h old\n" in out.getvalue()
