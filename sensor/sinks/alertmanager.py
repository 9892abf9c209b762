"""Alerts pushed to Alertmanager's v2 API from a background thread, batched and retried."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import queue
import random
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any, Final

from sensor.model import Alert
from sensor.sinks.base import LogLimiter, alert_fields, destination_label
from sensor.sinks.settings import AlertmanagerConfig, am_endpoint

log = logging.getLogger(__name__)


_AM_DESCRIPTION_FIELDS: Final = (
    "device_ip",
    "device_vendor",
    "device_kind",
    "encoding",
    "location",
    "dst_ip",
    "dst_port",
    "server_name",
    "provider",
    "region",
    "asn",
    "flow_uid",
)


def alertname(rule: str) -> str:
    """``identifier_abroad`` -> ``PhonehomeIdentifierAbroad``: Prometheus' CamelCase naming
    for alerts, prefixed so they stand apart in a shared Alertmanager. The snake-case rule
    name is kept in the ``rule`` label for joins with the event log and journal."""
    return "Phonehome" + "".join(part.capitalize() for part in rule.split("_"))


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def alertmanager_alert(
    alert: Alert,
    resolve_after: float,
    static_labels: dict[str, str] | None = None,
    generator_url: str | None = None,
) -> dict[str, Any]:
    """One element of the ``POST /api/v2/alerts`` body.

    Labels identify and group (low-cardinality only: no values, hashes, addresses of the far
    side or byte counts); annotations carry the rest. Everything in the alert stage's
    suppression key is a label (device, rule, destination, country and cloud region,
    identifier kind), so Alertmanager keeps apart what the stage reported apart.
    ``endsAt`` is ``startsAt + resolve_after`` (the alert stage's suppression window): the
    alert resolves by itself unless the stage sends it again after the window."""
    labels = dict(static_labels or {})
    labels["alertname"] = alertname(alert.rule)
    labels["rule"] = alert.rule
    labels["severity"] = alert.severity
    labels["device"] = alert.device.mac or alert.device.ip
    if alert.device.name:
        labels["device_name"] = alert.device.name
    if alert.identifier:
        labels["identifier"] = alert.identifier
    labels["destination"] = destination_label(alert)
    if alert.dst.vendor or alert.dst.provider:
        labels["vendor"] = alert.dst.vendor or alert.dst.provider or ""
    if alert.dst.country:
        labels["dst_country"] = alert.dst.country
        if alert.dst.provider and alert.dst.region:
            # Part of the alert stage's key (`alerts.jurisdiction`): without it Alertmanager
            # would merge the alerts for two regions of one cloud into one again.
            labels["dst_region"] = alert.dst.region

    rec = alert_fields(alert)
    desc = ", ".join(f"{k}={rec[k]}" for k in _AM_DESCRIPTION_FIELDS if rec[k] is not None)
    annotations = {"summary": alert.summary, "description": desc}
    if alert.value is not None:
        annotations["value"] = alert.value
    if alert.keyed_hash is not None:
        annotations["keyed_hash"] = alert.keyed_hash
    if alert.bytes_up:
        annotations["bytes_up"] = str(alert.bytes_up)
    out: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": _rfc3339(alert.ts),
        "endsAt": _rfc3339(alert.ts + resolve_after),
    }
    if generator_url:
        out["generatorURL"] = generator_url
    return out


class _Stop:
    pass


class AlertmanagerSink:
    """Pushes alerts to Alertmanager's v2 API from a background thread.

    `send` only puts the alert on a bounded queue (dropped and counted when full), so the
    packet loop never waits for the network. The sender thread posts batches, retries failed
    ones (connection errors, HTTP 5xx, 429) with exponential backoff and jitter, and drops a
    batch after `retries` further attempts; 4xx answers are not retried (``rejected``).
    `close` gives the queue one last attempt within about `timeout` seconds, then gives up
    (``unsent``) rather than hang the shutdown."""

    name = "alertmanager"

    def __init__(
        self,
        cfg: AlertmanagerConfig,
        resolve_after: float = 3600.0,
        *,
        url: str | None = None,
        site: str | None = None,
        name: str | None = None,
    ) -> None:
        """One Alertmanager: `url` (default: the configured one, when there is only one).
        `site` becomes the ``site`` label of every alert unless ``labels.site`` is set (which
        config validation keeps equal to `site.name`). `name` keys its stats."""
        if url is None:
            if len(cfg.targets) != 1:
                raise ValueError("url: Alertmanager sink needs one URL")
            url = cfg.targets[0]
        self.cfg = cfg
        self.resolve_after = resolve_after
        self.endpoint = am_endpoint(url)
        """``host:port/path``, no credentials."""
        if name is not None:
            self.name = name
        self._labels = dict(cfg.labels)
        if site:
            self._labels.setdefault("site", site)
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path.rstrip("/") + "/api/v2/alerts"
        self._headers = {"Content-Type": "application/json", "User-Agent": "phonehome"}
        if parts.username is not None:
            cred = f"{urllib.parse.unquote(parts.username)}:"
            cred += urllib.parse.unquote(parts.password or "")
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        self._queue: queue.Queue[dict[str, Any] | _Stop] = queue.Queue(cfg.queue_size)
        self._stop = threading.Event()
        self._rng = random.Random()
        self._limiter = LogLimiter(log)
        self.queued = 0
        self.sent = 0
        self.dropped_full = 0
        self.dropped_closed = 0
        self.failed = 0
        self.rejected = 0
        self.retried = 0
        self.unsent = 0
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"phonehome-am-{self.endpoint}"[:60], daemon=True
        )
        self._thread.start()

    # -- AlertSink

    def send(self, alert: Alert) -> None:
        if self._closed:
            self.dropped_closed += 1
            return
        item = alertmanager_alert(alert, self.resolve_after, self._labels, self.cfg.generator_url)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped_full += 1
            self._limiter.warning(
                "full", "alertmanager %s: queue full, alert dropped", self.endpoint
            )
            return
        self.queued += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_Stop())
        self._thread.join(timeout=2 * self.cfg.timeout + 1.0)
        # whatever the thread could not send in time
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, _Stop):
                self.unsent += 1

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is empty and nothing is in flight (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def stats(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "sent": self.sent,
            "dropped_queue_full": self.dropped_full,
            "dropped_closed": self.dropped_closed,
            "failed": self.failed,
            "rejected": self.rejected,
            "retries": self.retried,
            "unsent_at_close": self.unsent,
            "queue_length": self._queue.qsize(),
        }

    # -- the sender thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = self._take_batch(first)
            if batch:
                self._send_batch(batch, retry=True)
        self._final_flush()

    def _take_batch(self, first: dict[str, Any] | _Stop | None) -> list[dict[str, Any]]:
        """`first` (if any) and what else is queued, up to batch_size; the stop marker only
        wakes the thread and is dropped here."""
        batch: list[dict[str, Any]] = []
        item = first
        while True:
            if isinstance(item, _Stop):
                self._queue.task_done()
            elif item is not None:
                batch.append(item)
            if len(batch) >= self.cfg.batch_size:
                return batch
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch

    def _send_batch(self, batch: list[dict[str, Any]], retry: bool) -> str:
        try:
            outcome = self._deliver(batch, retry)
            if outcome == "ok":
                self.sent += len(batch)
            elif outcome == "rejected":
                self.rejected += len(batch)
            elif outcome == "failed" and retry:
                self.failed += len(batch)
            else:
                self.unsent += len(batch)
            return outcome
        finally:
            for _ in batch:
                self._queue.task_done()

    def _final_flush(self) -> None:
        """One attempt for what is still queued, within about one timeout."""
        deadline = time.monotonic() + self.cfg.timeout
        while time.monotonic() < deadline:
            batch = self._take_batch(None)
            if not batch:
                return
            if self._send_batch(batch, retry=False) != "ok":
                return

    def _deliver(self, batch: list[dict[str, Any]], retry: bool) -> str:
        """POST the batch, with retries and backoff when `retry`: "ok", "rejected", "failed"
        or "stopped" (closing interrupted the backoff)."""
        body = json.dumps(batch, ensure_ascii=False).encode()
        attempts = 1 + (self.cfg.retries if retry else 0)
        for attempt in range(attempts):
            if attempt:
                delay = min(self.cfg.backoff_max, self.cfg.backoff * (2 ** (attempt - 1)))
                if self._stop.wait(delay * self._rng.uniform(0.5, 1.0)):
                    return "stopped"  # closing: give up on this batch, unsent
                self.retried += 1
            outcome = self._post(body)
            if outcome != "retry":
                return outcome
        return "failed"

    def _post(self, body: bytes) -> str:
        """One POST: "ok", "rejected" (4xx but 429: retrying cannot help) or "retry"."""
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.cfg.timeout)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.cfg.timeout)
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            resp = conn.getresponse()
            detail = resp.read(512)
        except (OSError, http.client.HTTPException) as exc:
            self._limiter.warning(
                "post", "alertmanager %s:%s: %s", self._host, self._port, exc or type(exc)
            )
            return "retry"
        finally:
            conn.close()
        if 200 <= resp.status < 300:
            return "ok"
        self._limiter.warning(
            f"http{resp.status}",
            "alertmanager %s:%s: HTTP %d %r",
            self._host,
            self._port,
            resp.status,
            detail[:200],
        )
        if 400 <= resp.status < 500 and resp.status != 429:
            return "rejected"
        return "retry"
