"""learned.json: identifiers learned in clear are saved while the sensor runs (a crash loses at
most LEARNED_SAVE_INTERVAL of learning), and a failing save is counted by errno name, logged
when it starts failing, and retried."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from sensor.config import parse_config
from sensor.detect import stage
from tests.test_metrics import Wired, parse, sample_capture, values


def _wired(state: Path) -> Wired:
    # No configured identifiers: the phone's IMEI and number are learned from the capture.
    return Wired(parse_config({"site": {"home_country": "ID"}, "paths": {"state_dir": str(state)}}))


def test_learned_identifiers_are_saved_while_running(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    w = _wired(state)
    try:
        w.feed(sample_capture(tmp_path / "home.pcap"))
        assert w.stages.detector is not None
        assert w.stages.detector.learned > 0
        w.pipeline.advance(time.time())  # the daemon's loop, once a sweep is due
        # Before any close: what a kill -9 now would leave.
        rows = json.loads((state / "learned.json").read_text())
        assert {r["kind"] for r in rows} >= {"imei"}
        assert all(set(r) == {"kind", "keyed_hash"} for r in rows)  # never a value
        assert (state / "learned.json").stat().st_mode & 0o777 == 0o600
    finally:
        w.close()


def test_a_failing_save_is_counted_logged_once_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(stage, "LEARNED_SAVE_INTERVAL", 0.0)
    state = tmp_path / "state"
    state.mkdir()
    blocker = state / ".learned.json.tmp"  # where the atomic write puts its temporary file
    blocker.mkdir()
    w = _wired(state)
    try:
        caplog.set_level(logging.INFO, logger="sensor")
        w.feed(sample_capture(tmp_path / "home.pcap"))
        detector = w.stages.detector
        assert detector is not None and detector.learned > 0
        detector.tick(0.0)
        detector.tick(0.0)  # a second failed try
        failed = detector.write_errors["EISDIR"]
        assert failed >= 2 and not (state / "learned.json").exists()
        warnings = [r for r in caplog.records if "cannot save learned" in r.getMessage()]
        assert len(warnings) == 1
        series = parse(w.exporter.render())
        got = values(
            series, "phonehome_state_write_errors_total", file="learned.json", reason="EISDIR"
        )
        assert got == [float(failed)]
        blocker.rmdir()  # space, permission, whatever it was: fixed
        detector.tick(0.0)
        assert json.loads((state / "learned.json").read_text())
        assert any("written again" in r.getMessage() for r in caplog.records)
        detector.tick(0.0)
        assert detector.write_errors["EISDIR"] == failed  # saved: no more tries
    finally:
        w.close()
