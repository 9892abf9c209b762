"""Settings of the sinks: ``[eventlog]`` `EventLogConfig`, ``[journal]`` `JournalConfig`,
``[alertmanager]`` `AlertmanagerConfig`. They live in the config leaf (sensor.config.outputs);
this module names them for the sinks package."""

from __future__ import annotations

from sensor.config.outputs import AM_BUILTIN_LABELS as AM_BUILTIN_LABELS
from sensor.config.outputs import DEFAULT_JOURNAL_SOCKET as DEFAULT_JOURNAL_SOCKET
from sensor.config.outputs import AlertmanagerConfig as AlertmanagerConfig
from sensor.config.outputs import EventLogConfig as EventLogConfig
from sensor.config.outputs import JournalConfig as JournalConfig
from sensor.config.outputs import am_endpoint as am_endpoint
