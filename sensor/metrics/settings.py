"""The ``[metrics]`` settings live in the config leaf (sensor.config.outputs); this module names
them for the metrics package and holds the endpoint's start-up error."""

from __future__ import annotations

from sensor.config.outputs import COLLECTORS as COLLECTORS
from sensor.config.outputs import DEFAULT_PORT as DEFAULT_PORT
from sensor.config.outputs import MetricsConfig as MetricsConfig


class MetricsError(Exception):
    """The endpoint cannot start (address in use, unreadable key or credential file)."""
