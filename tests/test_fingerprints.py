"""A device's set of JA4 fingerprints: new ones reported, bounded, least recently shown first."""

from __future__ import annotations

from sensor.fingerprints import MAX_PER_DEVICE, remember


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
