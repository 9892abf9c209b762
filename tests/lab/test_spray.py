"""A LAN host spraying a new valid IMEI with every request cannot blind the sensor: learning
stays on, sheds what it cannot afford (counted in the metrics), and the Redmi phone's own leak
still alerts. `pytest -s` prints the figures (`make bench` has them too)."""

from __future__ import annotations

from pathlib import Path

from sensor.lab import Lab
from tests.lab.spray import ALERT_DEADLINE, run_spray

MAX_LEARNED = 512
"""detect.max_learned's default: the spray teaches far more than fits."""


def test_imei_spray_does_not_blind_the_sensor(lab: Lab, tmp_path: Path) -> None:
    figures = run_spray(lab, tmp_path)
    print(f"\n{figures}")
    assert figures.alert_s < ALERT_DEADLINE  # run_spray fails first when it does not come
    # The spray reached the detector: its IMEIs were learned, far past what is kept, and what
    # was dropped is counted.
    assert figures.learned > MAX_LEARNED, figures
    assert sum(figures.shed.values()) >= figures.learned - MAX_LEARNED - 1, figures
