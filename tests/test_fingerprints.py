"""A device's set of JA4 fingerprints: new ones reported, bounded, least recently shown first."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sensor.fingerprints import (
    MAX_PER_DEVICE,
    MAX_SAVED_DEVICES,
    STATE_NAME,
    SavedSets,
    remember,
)
from sensor.model import Device

MAC = "64:09:80:12:34:56"


def test_new_and_known() -> None:
    seen: list[str] = []
    assert remember(seen, "a")
    assert remember(seen, "b")
    assert not remember(seen, "a")
    assert seen == ["b", "a"]  # "a" shown last


def test_bounded_least_recently_shown_first() -> None:
    seen: list[str] = []
    for i in range(MAX_PER_DEVICE + 5):
        assert remember(seen, f"fp{i}")
    assert len(seen) == MAX_PER_DEVICE
    assert seen[0] == "fp5"
    assert not remember(seen, "fp5")
    assert remember(seen, "fp0")  # pushed out earlier: new again
    assert len(seen) == MAX_PER_DEVICE and "fp6" not in seen


# --- the daemon's saved sets (fingerprints.json) ------------------------------------------------


def _device(mac: str, *ja4: str, first: float = 1000.0, last: float = 2000.0) -> Device:
    return Device(mac=mac, first_seen=first, last_seen=last, ja4=list(ja4))


def _roundtrip(sets: SavedSets, devices: list[Device], path: Path) -> SavedSets:
    path.write_bytes(sets.encode(devices))
    return SavedSets.read(path)


def test_saved_set_is_adopted_once_and_keeps_its_learning_start(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    before = _device(MAC, "fp_a", "fp_b", first=100.0)
    before.ja4_since = 100.0
    after = _roundtrip(SavedSets(), [before], path)
    assert set(after.saved) == {MAC}
    # Restarted: the device's first hello after the restart shows fpB, known from before.
    dev = _device(MAC, "fp_b", first=5000.0)
    assert after.adopt(dev, "fp_b")
    assert dev.ja4 == ["fp_a", "fp_b"] and dev.ja4_since == 100.0
    assert not after.saved  # once per device and run
    # A device without a saved set starts learning now.
    other = _device("02:aa:bb:cc:dd:ee", "fp_c", first=6000.0)
    assert not after.adopt(other, "fp_c")
    assert other.ja4_since == 6000.0


def test_not_seen_again_is_still_saved(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    first = _roundtrip(SavedSets(), [_device(MAC, "fp_a")], path)
    second = _roundtrip(first, [_device("02:aa:bb:cc:dd:ee", "fp_c")], path)
    assert set(second.saved) == {MAC, "02:aa:bb:cc:dd:ee"}
    assert second.saved[MAC].ja4 == ["fp_a"]


def test_bounded_per_device_and_in_devices(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    many = [
        _device(f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", f"fp{i}", last=float(i))
        for i in range(MAX_SAVED_DEVICES + 10)
    ]
    big = _device(MAC, *(f"fp{i}" for i in range(MAX_PER_DEVICE)), last=1e9)
    back = _roundtrip(SavedSets(), [*many, big], path)
    assert len(back.saved) == MAX_SAVED_DEVICES
    assert MAC in back.saved and "02:00:00:00:00:00" not in back.saved  # seen longest ago
    # A file edited to hold more than a device's bound keeps the most recent ones.
    doc = json.loads(path.read_text())
    doc["devices"][0]["ja4"] = [f"x{i}" for i in range(MAX_PER_DEVICE + 8)]
    path.write_text(json.dumps(doc))
    (row,) = [s for s in SavedSets.read(path).saved.values() if s.ja4[0].startswith("x")]
    assert row.ja4 == [f"x{i}" for i in range(8, MAX_PER_DEVICE + 8)]


@pytest.mark.parametrize(
    "content",
    [
        b'{"version": 1, "devices": [{"mac": "02:aa:bb:cc:dd',  # truncated by a crash
        b"\x00\x00\x00",
        b'{"version": 99, "devices": []}',
        b"[]",
    ],
)
def test_unreadable_file_warns_is_kept_aside_and_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / STATE_NAME
    path.write_bytes(content)
    other = tmp_path / "learned.json"
    other.write_text("[]")
    with caplog.at_level(logging.WARNING, logger="sensor.fingerprints"):
        sets = SavedSets.read(path)
    assert sets.saved == {}
    assert "start afresh" in caplog.text and str(path) in caplog.text
    assert path.with_name(STATE_NAME + ".bad").read_bytes() == content  # nothing lost
    assert not path.exists() and other.read_text() == "[]"  # nothing else touched


def test_malformed_entries_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / STATE_NAME
    good = {"mac": MAC, "since": 1.0, "seen": 2.0, "ja4": ["t13d1516h2_8daaf6152771_e5627efa2ab1"]}
    rows = [
        good,
        {"mac": "not a mac", "since": 1.0, "seen": 2.0, "ja4": []},
        {"mac": "02:aa:bb:cc:dd:ee", "since": "yesterday", "seen": 2.0, "ja4": []},
        {"mac": "02:aa:bb:cc:dd:ef", "since": 1.0, "seen": 2.0, "ja4": ["<script>"]},
        {"mac": "02:aa:bb:cc:dd:f0", "since": True, "seen": 2.0, "ja4": []},
        "junk",
    ]
    path.write_text(json.dumps({"version": 1, "devices": rows}))
    with caplog.at_level(logging.WARNING, logger="sensor.fingerprints"):
        sets = SavedSets.read(path)
    assert list(sets.saved) == [MAC] and sets.saved[MAC].ja4 == good["ja4"]
    assert "5 malformed device entries skipped" in caplog.text
