"""`make_sinks`: the configured set of sinks, one Alertmanager sink per URL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sensor.alerts import AlertsConfig, AlertStage
from sensor.model import Observation
from sensor.sinks import (
    AlertmanagerConfig,
    AlertmanagerSink,
    EventLog,
    EventLogConfig,
    JournalConfig,
    JournalSink,
    make_sinks,
)
from tests.sinks.samples import (
    DST,
    HASH,
    TV,
    free_port,
    http_get,
)


def test_make_sinks(tmp_path: Path) -> None:
    no_journal = JournalConfig(socket_path=str(tmp_path / "none"))
    out = make_sinks(tmp_path, EventLogConfig(), no_journal, AlertmanagerConfig())
    assert [type(s) for s in out] == [EventLog, JournalSink]
    for s in out:
        s.close()
    out = make_sinks(
        tmp_path,
        EventLogConfig(enabled=False),
        JournalConfig(enabled=False),
        AlertmanagerConfig(url=f"http://127.0.0.1:{free_port()}"),
    )
    assert [type(s) for s in out] == [AlertmanagerSink]
    for s in out:
        s.close()


def test_every_alertmanager_gets_every_alert_and_a_dead_one_holds_none_back(
    alertmanager: str, tmp_path: Path
) -> None:
    """An HA pair where one member is down: the live one has each alert (with the site
    label) while the dead one's own queue retries; each has its own counters."""
    port = int(alertmanager.rsplit(":", 1)[1])
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = AlertmanagerConfig(urls=(dead, alertmanager), timeout=1.0, retries=50, backoff=0.2)
    out = make_sinks(
        tmp_path, EventLogConfig(enabled=False), JournalConfig(enabled=False), cfg, site="home-1"
    )
    names = [getattr(s, "name", "") for s in out]
    assert names == [
        f"alertmanager@127.0.0.1:{dead.rsplit(':', 1)[1]}",
        f"alertmanager@127.0.0.1:{port}",
    ]
    stage = AlertStage(AlertsConfig(), out)
    now = time.time()
    for i, kind in enumerate(("imei", "email")):
        obs = Observation(
            what="identifier",
            ts=now + i,
            device=TV,
            dst=DST,
            identifier=kind,
            encoding="plain",
            location="body",
            value="…1234",
            keyed_hash=HASH,
        )
        assert stage.observe(obs) is not None
    live, down = out[1], out[0]
    assert isinstance(live, AlertmanagerSink) and isinstance(down, AlertmanagerSink)
    assert live.flush(15)  # not held back by the dead member's retries
    got = json.loads(http_get(port, "/api/v2/alerts")[1])
    assert sorted(a["labels"]["identifier"] for a in got) == ["email", "imei"]
    assert {a["labels"]["site"] for a in got} == {"home-1"}
    s = stage.stats()["sinks"]
    assert s[live.name]["sent"] == 2 and s[live.name]["failed"] == 0
    assert s[down.name]["sent"] == 0 and s[down.name]["queued"] == 2
    stage.close()


def test_site_label_from_site_name_unless_labels_set_it() -> None:
    cfg = AlertmanagerConfig(url="http://127.0.0.1:9")
    sink = AlertmanagerSink(cfg, site="cabin")
    try:
        assert sink._labels == {"site": "cabin"}
    finally:
        sink.close()
    # the older `labels.site` (config validation keeps it equal to site.name) wins
    sink = AlertmanagerSink(
        AlertmanagerConfig(url="http://127.0.0.1:9", labels={"site": "Old Home"}), site="x"
    )
    try:
        assert sink._labels == {"site": "Old Home"}
    finally:
        sink.close()


def test_alertmanager_urls_validation() -> None:
    AlertmanagerConfig(urls=("http://a:9093", "https://b:9093/am")).validate()
    assert AlertmanagerConfig(url="http://a:9093").targets == ("http://a:9093",)
    assert AlertmanagerConfig(urls=("http://a", "http://b")).targets == ("http://a", "http://b")
    assert AlertmanagerConfig().targets == ()
    with pytest.raises(ValueError, match=r"^urls: set either url or urls"):
        AlertmanagerConfig(url="http://a:9093", urls=("http://b:9093",)).validate()
    with pytest.raises(ValueError, match=r"^urls\[1\]: must be an http"):
        AlertmanagerConfig(urls=("http://a:9093", "a:9093")).validate()
    with pytest.raises(ValueError, match=r"^urls: the same Alertmanager twice"):
        AlertmanagerConfig(urls=("http://a:80", "http://user:pw@a/")).validate()
    with pytest.raises(ValueError, match=r"^url: bad port"):
        AlertmanagerConfig(url="http://a:99999").validate()
