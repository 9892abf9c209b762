"""Prometheus metrics: what every stage knows, read at scrape time, served from a thread.

The only package importing prometheus_client. Laid out by job:

- `settings`: the ``[metrics]`` settings (`MetricsConfig`), standard library only;
- `views`: the small typed interfaces the collectors read the sensor through (`SensorView`,
  built by the daemon);
- `collectors/`: one module per part of the sensor read (traffic and exposures, devices, the
  packet path, alerts and detection, files, policy, info);
- `cardinality`: bounded label tables (the rest folds into "other") and label hygiene;
- `families`: the contained collector runner, counters carried over a reload;
- `exporter`: the registry, the hooks the packet loop calls, the endpoint's life;
- `server` and `auth`: the HTTP/HTTPS endpoint, its limits and its credentials.

This module re-exports the names other modules import from `sensor.metrics`, each loaded when
first used: config.py reads `MetricsConfig` without loading the exporter (and
prometheus_client) behind it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sensor.metrics.cardinality import MAX_REASONS, OTHER, UNKNOWN, Table, TopK, safe_label
    from sensor.metrics.collectors.devices import MAX_NAME_HINTS
    from sensor.metrics.collectors.traffic import APPLY_SLICE
    from sensor.metrics.exporter import AlertCounter, Exporter
    from sensor.metrics.families import Families
    from sensor.metrics.server import (
        _READING,
        _WRITING,
        ACCEPT_RATE,
        MAX_REQUEST_BYTES,
        WRITE_CHUNK,
    )
    from sensor.metrics.settings import COLLECTORS, DEFAULT_PORT, MetricsConfig, MetricsError
    from sensor.metrics.views import NflogRules, SensorView

_EXPORTS: dict[str, str] = {
    "ACCEPT_RATE": "server",
    "APPLY_SLICE": "collectors.traffic",
    "COLLECTORS": "settings",
    "DEFAULT_PORT": "settings",
    "MAX_NAME_HINTS": "collectors.devices",
    "MAX_REASONS": "cardinality",
    "MAX_REQUEST_BYTES": "server",
    "OTHER": "cardinality",
    "UNKNOWN": "cardinality",
    "WRITE_CHUNK": "server",
    "_READING": "server",
    "_WRITING": "server",
    "AlertCounter": "exporter",
    "Exporter": "exporter",
    "Families": "families",
    "MetricsConfig": "settings",
    "MetricsError": "settings",
    "NflogRules": "views",
    "SensorView": "views",
    "Table": "cardinality",
    "TopK": "cardinality",
    "safe_label": "cardinality",
}
"""Name -> the module under sensor.metrics that defines it."""

__all__ = [
    "ACCEPT_RATE",
    "APPLY_SLICE",
    "COLLECTORS",
    "DEFAULT_PORT",
    "MAX_NAME_HINTS",
    "MAX_REASONS",
    "MAX_REQUEST_BYTES",
    "OTHER",
    "UNKNOWN",
    "WRITE_CHUNK",
    "_READING",
    "_WRITING",
    "AlertCounter",
    "Exporter",
    "Families",
    "MetricsConfig",
    "MetricsError",
    "NflogRules",
    "SensorView",
    "Table",
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
