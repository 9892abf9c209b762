"""The sinks the settings switch on, in delivery order."""

from __future__ import annotations

import os

from sensor.sinks.alertmanager import AlertmanagerSink
from sensor.sinks.base import AlertSink
from sensor.sinks.eventlog import EventLog
from sensor.sinks.journal import JournalSink
from sensor.sinks.settings import (
    AlertmanagerConfig,
    EventLogConfig,
    JournalConfig,
    am_endpoint,
)


def make_sinks(
    state_dir: str | os.PathLike[str],
    eventlog: EventLogConfig | None = None,
    journal: JournalConfig | None = None,
    alertmanager: AlertmanagerConfig | None = None,
    resolve_after: float = 3600.0,
    site: str | None = None,
) -> list[AlertSink]:
    """The sinks the settings switch on, in delivery order: the event log first, so that
    every other sink (and anything appended after these) only sees an alert once its record
    is on disk (see `EventLog`). `resolve_after` should be the alert stage's suppression
    window; `site` the site's name, labelled on every alert to Alertmanager.

    One `AlertmanagerSink` per Alertmanager URL (an HA cluster wants every alert at every
    member and deduplicates itself): each has its own queue, so a dead member only fills its
    own. Named ``alertmanager`` when there is one, ``alertmanager@host:port`` when several."""
    eventlog = eventlog or EventLogConfig()
    journal = journal or JournalConfig()
    alertmanager = alertmanager or AlertmanagerConfig()
    sinks: list[AlertSink] = []
    if eventlog.enabled:
        sinks.append(EventLog.from_config(eventlog, state_dir))
    if journal.enabled:
        sinks.append(JournalSink(journal))
    targets = alertmanager.targets
    for url in targets:
        name = "alertmanager" if len(targets) == 1 else f"alertmanager@{am_endpoint(url)}"
        sinks.append(AlertmanagerSink(alertmanager, resolve_after, url=url, site=site, name=name))
    return sinks
