"""The Alertmanager sink against a real prometheus-alertmanager on loopback: payload, labels,
queue, dead URLs. No output may hold an identifier in full."""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime
from pathlib import Path

import pytest

from sensor.alerts import AlertsConfig, AlertStage
from sensor.config import ConfigError, _build
from sensor.model import Observation
from sensor.sinks import (
    AlertmanagerConfig,
    AlertmanagerSink,
    EventLogConfig,
    JournalConfig,
    alertmanager_alert,
    alertname,
    make_sinks,
)
from tests.sinks.samples import (
    DST,
    FULL_IMEI,
    HASH,
    REDACTED,
    TV,
    free_port,
    http_get,
    make_alert,
    parse_native,
    read_lines,
)

IMEI_LABELS = {
    "site": "lab",
    "alertname": "PhonehomeIdentifierAbroad",
    "rule": "identifier_abroad",
    "severity": "critical",
    "device": TV.mac,
    "device_name": "Living-room TV",
    "identifier": "imei",
    "destination": "ExampleCorp",
    "vendor": "ExampleCorp",
    "dst_country": "CN",
}
"""The labels of `make_alert()`'s alert (site "lab"): no identifier value, hash or address."""


def test_alertname_and_payload() -> None:
    assert alertname("identifier_abroad") == "PhonehomeIdentifierAbroad"
    assert alertname("foreign_upload_anomaly") == "PhonehomeForeignUploadAnomaly"
    body = alertmanager_alert(make_alert(), 3600.0, {"site": "lab"}, "http://sensor.invalid/")
    assert body["labels"] == IMEI_LABELS
    assert body["annotations"]["value"] == REDACTED
    assert body["annotations"]["keyed_hash"] == HASH
    assert "dst_ip=203.0.113.7" in body["annotations"]["description"]
    assert body["startsAt"] == "2023-11-14T22:13:20.000Z"
    assert body["endsAt"] == "2023-11-14T23:13:20.000Z"
    assert body["generatorURL"] == "http://sensor.invalid/"
    labels = json.dumps(body["labels"])
    assert REDACTED not in labels and HASH not in labels and "203.0.113.7" not in labels


def test_alertmanager_config_validation() -> None:
    AlertmanagerConfig().validate()
    AlertmanagerConfig(url="http://127.0.0.1:9093", labels={"site": "x"}).validate()
    with pytest.raises(ValueError, match=r"^url: "):
        AlertmanagerConfig(url="ftp://x").validate()
    with pytest.raises(ValueError, match=r"^labels: "):
        AlertmanagerConfig(labels={"severity": "x"}).validate()
    with pytest.raises(ValueError, match=r"^labels: "):
        AlertmanagerConfig(labels={"bad-name": "x"}).validate()
    cfg = _build(
        AlertmanagerConfig,
        {"url": "http://127.0.0.1:9093", "labels": {"site": "home"}, "timeout": 2},
        "x.toml",
        "alertmanager",
    )
    assert cfg.labels == {"site": "home"} and cfg.timeout == 2.0
    with pytest.raises(ConfigError, match=r"alertmanager\.retries"):
        _build(AlertmanagerConfig, {"retries": -1}, "x.toml", "alertmanager")


def _rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_alertmanager_push_and_read_back(alertmanager: str) -> None:
    port = int(alertmanager.rsplit(":", 1)[1])
    sink = AlertmanagerSink(
        AlertmanagerConfig(url=alertmanager, labels={"site": "lab"}), resolve_after=3600.0
    )
    now = time.time()
    sink.send(make_alert(ts=now))
    sink.send(make_alert("foreign_upload", ts=now))
    assert sink.flush(15)
    sink.close()
    assert sink.stats()["sent"] == 2 and sink.stats()["failed"] == 0
    status, body = http_get(port, "/api/v2/alerts")
    assert status == 200
    assert FULL_IMEI.encode() not in body
    got = {a["labels"]["alertname"]: a for a in json.loads(body)}
    assert set(got) == {"PhonehomeIdentifierAbroad", "PhonehomeForeignUpload"}
    a = got["PhonehomeIdentifierAbroad"]
    assert a["labels"] == IMEI_LABELS
    assert a["annotations"]["value"] == REDACTED
    assert a["annotations"]["keyed_hash"] == HASH
    assert a["annotations"]["summary"].startswith("Living-room TV sent imei")
    assert a["status"]["state"] == "active"
    assert abs(_rfc3339(a["endsAt"]) - _rfc3339(a["startsAt"]) - 3600.0) < 0.01
    upload = got["PhonehomeForeignUpload"]
    assert upload["labels"]["severity"] == "warning"
    assert upload["annotations"]["bytes_up"] == "6000000"
    assert "identifier" not in upload["labels"] and "value" not in upload["annotations"]


def test_alert_stage_delivers_to_all_sinks(
    alertmanager: str, tmp_path: Path, journal_socket: tuple[str, socket.socket]
) -> None:
    port = int(alertmanager.rsplit(":", 1)[1])
    jpath, jsock = journal_socket
    cfg = AlertsConfig(suppress_window=600.0)
    out = make_sinks(
        tmp_path,
        EventLogConfig(),
        JournalConfig(socket_path=jpath),
        AlertmanagerConfig(url=alertmanager),
        resolve_after=cfg.suppress_window,
    )
    stage = AlertStage(cfg, out)
    now = time.time()
    obs = Observation(
        what="identifier",
        ts=now,
        device=TV,
        dst=DST,
        identifier="email",
        encoding="base64",
        location="body",
        value="…@example.org",
        keyed_hash=HASH,
    )
    assert stage.observe(obs) is not None
    assert stage.observe(obs) is None  # suppressed
    am = out[2]
    assert isinstance(am, AlertmanagerSink) and am.flush(15)
    stage.tick(now + 600)
    stage.close()
    records = read_lines(tmp_path / "events.jsonl")
    assert [r["type"] for r in records] == ["alert", "resolved"]
    assert records[0]["value"] == "…@example.org" and records[1]["repeats"] == 1
    assert parse_native(jsock.recv(65536))["PHONEHOME_IDENTIFIER"] == "email"
    (a,) = json.loads(http_get(port, "/api/v2/alerts")[1])
    assert a["labels"]["identifier"] == "email"
    assert abs(_rfc3339(a["endsAt"]) - _rfc3339(a["startsAt"]) - 600.0) < 0.01
    s = stage.stats()
    assert s["sink_errors"] == {} and s["sinks"]["alertmanager"]["sent"] == 1
    assert s["sinks"]["eventlog"]["written"] == 1 and s["sinks"]["journal"]["sent"] == 1


def test_alertmanager_dead_url_neither_blocks_nor_raises() -> None:
    port = free_port()  # nothing listens there: connections are refused
    sink = AlertmanagerSink(
        AlertmanagerConfig(url=f"http://127.0.0.1:{port}", timeout=1.0, retries=2, backoff=0.05)
    )
    for i in range(5):  # send() queues, it never waits for a POST
        sink.send(make_alert(ts=1_700_000_000.0 + i))
    assert sink.flush(10)
    s = sink.stats()
    assert s["sent"] == 0 and s["failed"] == 5 and s["retries"] >= 2
    sink.close()
    assert not sink._thread.is_alive()  # close() ended the sender thread
    sink.send(make_alert())  # after close: counted, not raised
    assert sink.stats()["dropped_closed"] == 1


def test_alertmanager_queue_full_drops_and_counts() -> None:
    # a listener that never answers: the sender thread hangs in its first POST until timeout
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        sink = AlertmanagerSink(
            AlertmanagerConfig(
                url=f"http://127.0.0.1:{port}", timeout=0.5, retries=0, queue_size=2, batch_size=1
            )
        )
        for i in range(10):
            sink.send(make_alert(ts=1_700_000_000.0 + i))
            time.sleep(0.01)
        # send() never waited for the hanging POST: the queue filled and the rest was dropped.
        s = sink.stats()
        assert 7 <= s["dropped_queue_full"] <= 8
        assert s["queued"] + s["dropped_queue_full"] == 10
        sink.close()
        assert not sink._thread.is_alive()  # close() ended the sender thread
        s = sink.stats()
        assert s["sent"] == 0
        assert s["failed"] + s["unsent_at_close"] == s["queued"]
