"""Prometheus metrics: what every stage knows, read at scrape time, served from a thread.

The only package importing prometheus_client. Laid out by job:

- `settings`: the ``[metrics]`` settings as the config leaf parses them (`MetricsConfig`, from
  sensor.config.outputs) and the endpoint's start-up error;
- `views`: the small typed interfaces the collectors read the sensor through (`SensorView`,
  built by the daemon);
- `collectors/`: one module per part of the sensor read (traffic and exposures, devices, the
  packet path, alerts and detection, files, policy, info);
- `cardinality`: bounded label tables (the rest folds into "other") and label hygiene;
- `families`: the contained collector runner, counters carried over a reload;
- `exporter`: the registry, the hooks the packet loop calls, the endpoint's life;
- `server` and `auth`: the HTTP/HTTPS endpoint, its limits and its credentials.

This module re-exports the names other modules import from `sensor.metrics`, each loaded when
first used: reading `MetricsConfig` or `SensorView` does not load the exporter (and
prometheus_client) behind it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sensor.metrics.cardinality import OTHER, TopK, safe_label
    from sensor.metrics.exporter import Exporter
    from sensor.metrics.server import ACCEPT_RATE
    from sensor.metrics.settings import COLLECTORS, DEFAULT_PORT, MetricsConfig, MetricsError
    from sensor.metrics.views import NflogRules, SensorView

_EXPORTS: dict[str, str] = {
    "ACCEPT_RATE": "server",
    "COLLECTORS": "settings",
    "DEFAULT_PORT": "settings",
    "OTHER": "cardinality",
    "Exporter": "exporter",
    "MetricsConfig": "settings",
    "MetricsError": "settings",
    "NflogRules": "views",
    "SensorView": "views",
    "TopK": "cardinality",
    "safe_label": "cardinality",
}
"""Name -> the module under sensor.metrics that defines it."""

__all__ = [
    "ACCEPT_RATE",
    "COLLECTORS",
    "DEFAULT_PORT",
    "OTHER",
    "Exporter",
    "MetricsConfig",
    "MetricsError",
    "NflogRules",
    "SensorView",
    "TopK",
    "safe_label",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # looked up once
    return value
