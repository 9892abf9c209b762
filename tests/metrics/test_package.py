"""sensor.metrics as a package: every name it exported as a module is still there, and the
settings load without the exporter (config.py imports them)."""

from __future__ import annotations

import subprocess
import sys

import sensor.metrics


def test_every_exported_name_resolves() -> None:
    for name in sensor.metrics.__all__:
        assert getattr(sensor.metrics, name) is not None, name
    assert set(sensor.metrics.__all__) == set(sensor.metrics._EXPORTS)


def test_the_settings_load_without_the_exporter() -> None:
    probe = (
        "import sys; import sensor.config; "
        "print('prometheus_client' in sys.modules, 'sensor.metrics.exporter' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False"]
