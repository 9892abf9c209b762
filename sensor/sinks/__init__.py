"""Where alerts go: the event log, the systemd journal and Alertmanager.

Every sink has the one-method-and-close shape of `AlertSink`. A sink never raises on delivery
trouble: it counts the failure (`stats()`), logs it at a bounded rate and carries on, so a full
disk or a dead Alertmanager cannot stop the packet loop or the other sinks. (The alert stage
guards against sinks that break this promise anyway.)

Identifiers are our users' secrets. An `Alert` only carries the redacted `value` (e.g.
``"…1234"``) and the `keyed_hash`; sinks write exactly those and nothing else about the
identifier. Alertmanager gets neither in its labels (labels are for grouping and must stay
low-cardinality); the redacted value and hash go into annotations.

Modules: `base` (the `AlertSink` protocol, the flat alert record, the log limiter), `settings`
(``[eventlog]``, ``[journal]``, ``[alertmanager]``, registered by config.py), `eventlog`,
`journal`, `alertmanager` (one sink each) and `configured` (`make_sinks`: the set the settings
switch on). This package re-exports their public names, so ``from sensor.sinks import X``
works for all of them.
"""

from sensor.sinks.alertmanager import AlertmanagerSink, alertmanager_alert, alertname
from sensor.sinks.base import (
    AlertSink,
    Coverage,
    LogLimiter,
    ResolvingSink,
    alert_fields,
    destination_label,
)
from sensor.sinks.configured import make_sinks
from sensor.sinks.eventlog import EVENTLOG_NAME, EventLog
from sensor.sinks.journal import (
    MESSAGE_ID_OTHER,
    MESSAGE_IDS,
    PRIORITY,
    JournalSink,
    encode_native,
    journal_fields,
)
from sensor.sinks.settings import (
    AM_BUILTIN_LABELS,
    DEFAULT_JOURNAL_SOCKET,
    AlertmanagerConfig,
    EventLogConfig,
    JournalConfig,
)

__all__ = [
    "AM_BUILTIN_LABELS",
    "DEFAULT_JOURNAL_SOCKET",
    "EVENTLOG_NAME",
    "MESSAGE_IDS",
    "MESSAGE_ID_OTHER",
    "PRIORITY",
    "AlertSink",
    "AlertmanagerConfig",
    "AlertmanagerSink",
    "Coverage",
    "EventLog",
    "EventLogConfig",
    "JournalConfig",
    "JournalSink",
    "LogLimiter",
    "ResolvingSink",
    "alert_fields",
    "alertmanager_alert",
    "alertname",
    "destination_label",
    "encode_native",
    "journal_fields",
    "make_sinks",
]
