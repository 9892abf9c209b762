"""A LAN host spraying a new valid IMEI with every request cannot blind the sensor: learning
stays on, sheds what the sprayer teaches beyond its rate (counted in the metrics), and the
Redmi phone's own leak still alerts. `pytest -s` prints the figures (`make bench` too)."""

from __future__ import annotations

from pathlib import Path

from sensor.config import DetectConfig
from sensor.lab import Lab
from tests.lab.spray import ALERT_DEADLINE, run_spray


def test_imei_spray_does_not_blind_the_sensor(lab: Lab, tmp_path: Path) -> None:
    seconds = 6.0
    figures = run_spray(lab, tmp_path, seconds=seconds)
    print(f"\n{figures}")
    assert figures.alert_s < ALERT_DEADLINE  # run_spray fails first when it does not come
    # The spray reached the detector: its IMEIs were found and, past the sprayer's learning
    # rate, shed and counted. Learning is still on: the phone's own values were learned.
    d = DetectConfig()
    taught = d.learn_burst + d.learn_rate * (seconds + 30)
    assert figures.shed.get("rate", 0) > 200, figures
    assert 0 < figures.learned <= taught + 10, figures
