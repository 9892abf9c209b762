"""Prometheus metrics: what every stage knows, read at scrape time, served from a thread.

The package re-exports the names other modules import from `sensor.metrics`.
"""

from sensor.metrics.exporter import (
    _READING,
    _WRITING,
    ACCEPT_RATE,
    APPLY_SLICE,
    COLLECTORS,
    DEFAULT_PORT,
    MAX_NAME_HINTS,
    MAX_REASONS,
    MAX_REQUEST_BYTES,
    OTHER,
    UNKNOWN,
    WRITE_CHUNK,
    AlertCounter,
    Exporter,
    Families,
    MetricsConfig,
    MetricsError,
    Table,
    TopK,
    safe_label,
)

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
    "Table",
    "TopK",
    "safe_label",
]
