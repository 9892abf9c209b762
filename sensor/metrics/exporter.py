"""The exporter: the registry and its collectors, the hooks the packet loop calls, and the
endpoint's life (start, serve, reconfigure, stop).

The only place the collectors are wired: each reads what it needs through the accessors of a
`sensor.metrics.views.SensorView`; nothing is updated per packet except by the hooks, which
carry what the stages' state forgets: `Exporter.flow_ended` (the bytes of flows that left the
table), `Exporter.observation` (identifier exposures, before suppression: a listener on the
alert stage) and `Exporter.alert` / `alert_sink` (delivered alerts).

Each collector is wrapped: one that raises shows ``phonehome_scrape_collector_success 0`` and
the scrape carries on (node_exporter's convention). Identifiers never appear in a label.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import threading
import time

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from sensor.metrics.auth import Auth, tls_context
from sensor.metrics.collectors.alerts import (
    AlertStats,
    alert_stage_families,
    learning_families,
    placeholder_families,
)
from sensor.metrics.collectors.devices import Devices
from sensor.metrics.collectors.files import DataFiles, state_families
from sensor.metrics.collectors.info import info_families
from sensor.metrics.collectors.packets import (
    capture_families,
    conntrack_families,
    pipeline_families,
)
from sensor.metrics.collectors.policy import policy_families
from sensor.metrics.collectors.traffic import Accounting
from sensor.metrics.families import Carries, Collect, Families, Guarded
from sensor.metrics.server import App, EndpointStats, Server, Snapshot, endpoint_families
from sensor.metrics.settings import MetricsConfig, MetricsError
from sensor.metrics.views import SensorView
from sensor.model import Alert, Flow, Observation
from sensor.sinks import LogLimiter

log = logging.getLogger(__name__)


class Exporter:
    """The metrics of one running sensor, read through `sensor` at every scrape."""

    def __init__(self, cfg: MetricsConfig, sensor: SensorView) -> None:
        self.cfg = cfg
        self.sensor = sensor
        self.registry = CollectorRegistry(auto_describe=False)
        self._scrape_lock = threading.Lock()
        """One collection at a time (they share carry-over state)."""
        self._snapshot: Snapshot | None = None
        """The last collection, reused by scrapes within `MetricsConfig.min_interval`."""
        self._endpoint = EndpointStats()
        self._limiter = LogLimiter(log)
        self._devices = Devices(sensor.pipeline, sensor.enricher)
        self._accounting = Accounting(
            cfg, sensor.pipeline, sensor.enricher, self._devices, self._limiter
        )
        self._alert_stats = AlertStats(sensor.alert_stage)
        self._started = False
        """start() was called (and stop() was not): reconfigure() restarts the endpoint."""
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.registry.register(
            Guarded(
                [(n, fn) for n, fn in self._collectors().items()
                 if n not in cfg.disabled_collectors],
                self._limiter,
            )
        )  # fmt: skip

    def _collectors(self) -> dict[str, Collect]:
        """Every collector by name (`sensor.metrics.settings.COLLECTORS`), in scrape order."""
        s, carries, acct = self.sensor, Carries(), self._accounting
        data = DataFiles(s.config)
        process = ProcessCollector(registry=None)

        def alerts() -> Families:
            return itertools.chain(
                acct.alert_families(), alert_stage_families(self._alert_stats, carries)
            )

        return {
            "info": lambda: info_families(s.config),
            "traffic": acct.traffic_families,
            "exposures": acct.exposure_families,
            "alerts": alerts,
            "placeholders": lambda: placeholder_families(s.detector, s.pipeline, carries),
            # after the tables it lists the devices of
            "devices": lambda: self._devices.families(acct.macs(), carries),
            "pipeline": lambda: pipeline_families(s.pipeline, carries),
            "capture": lambda: capture_families(s.capture, s.interfaces, s.nflog_rules, carries),
            "conntrack": lambda: conntrack_families(s.conntrack, s.conntrack_updates, carries),
            "data": data.collect,
            "state": lambda: state_families(self._alert_stats, s.detector, s.write_errors, carries),
            "learning": lambda: learning_families(s.detector, carries),
            "endpoint": lambda: endpoint_families(
                self._endpoint, self._server, self.cfg.max_connections
            ),
            "process": process.collect,
            "policy": lambda: policy_families(s.policy),
        }

    # --- hooks (called on the packet loop) ----------------------------------------------------

    def flow_ended(self, flow: Flow) -> None:
        """A flow left the table (idle, evicted, ended): count what it sent since the last
        scrape. Call with the enriched record (the daemon's output sink). Never raises."""
        self._accounting.flow_ended(flow)

    def observation(self, obs: Observation) -> None:
        """Every Observation the alert stage receives, before suppression and the rate bound
        (add it as the stage's listener): identifier ones are counted as exposures. Never
        raises."""
        self._accounting.observation(obs)

    def alert(self, alert: Alert) -> None:
        """An alert delivered to the sinks. Never raises."""
        self._accounting.alert(alert)

    def alert_sink(self) -> AlertCounter:
        """An alert sink (`sensor.sinks.AlertSink`) that counts delivered alerts here: add it to the
        alert stage's sinks."""
        return AlertCounter(self)

    # --- the endpoint -------------------------------------------------------------------------

    def start(self, serve: bool = True) -> None:
        """Listen and serve from a daemon thread; with `serve` false, serve only once `serve`
        is called. Read TLS keys and credential files here (before the daemon drops
        privileges). MetricsError if it cannot."""
        self._started = True
        if not self.cfg.enabled or self._server is not None:
            return
        auth = Auth.from_config(self.cfg)
        ctx = tls_context(self.cfg)
        try:
            server = Server(
                (self.cfg.address, self.cfg.port),
                ctx,
                self.cfg,
                self._endpoint,
                App(self._serve_collection, auth),
                self._limiter,
            )
        except OSError as exc:
            raise MetricsError(
                f"metrics: cannot listen on {self.cfg.address} port {self.cfg.port}: "
                f"{exc.strerror or exc}"
            ) from None
        self._server = server
        if serve:
            self.serve()
        if not ipaddress.ip_address(self.cfg.address).is_loopback and ctx is None and auth:
            log.warning("metrics: credentials travel in clear without tls_cert_file")
        log.info("metrics on %s", self.url)

    def serve(self) -> None:
        """Serve what `start(serve=False)` opened, from a daemon thread. The daemon opens the
        endpoint as root and serves after dropping privileges: a thread made before the drop
        would keep the whole capability bounding set (it is per thread)."""
        if self._server is None or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (waits for the serving thread, at most a few seconds)."""
        self._started = False
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        if thread is None:  # opened, never served
            server.close()
            return
        server.shutdown()
        thread.join(timeout=5)

    def reconfigure(self, cfg: MetricsConfig) -> None:
        """New settings (SIGHUP): a started endpoint restarts if its settings changed
        (MetricsError if it cannot). Series bounds and disabled collectors keep their
        start-up values until the daemon restarts."""
        endpoint = (
            "enabled", "address", "port", "tls_cert_file", "tls_key_file", "basic_auth_user",
            "basic_auth_password_sha256", "basic_auth_password_file", "bearer_token_file",
            "scrape_timeout", "max_connections", "connection_timeout",
        )  # fmt: skip
        changed = any(getattr(cfg, k) != getattr(self.cfg, k) for k in endpoint)
        started = self._started
        self.cfg = cfg
        if changed and started:
            self.stop()
            self.start()

    @property
    def url(self) -> str:
        """Where the endpoint listens (the real port when 0 was asked)."""
        host, port = self.cfg.address, self.cfg.port
        if self._server is not None:
            port = self._server.server_address[1]
        scheme = "https" if self.cfg.tls_cert_file else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def render(self) -> bytes:
        """A fresh collection in the text format (tests, `phonehome check`)."""
        snap = self.collection(None, None)
        assert snap is not None  # waited as long as it took
        return snap.body(generate_latest, CONTENT_TYPE_PLAIN_0_0_4, gzipped=False)

    def _serve_collection(self) -> Snapshot | None:
        """What the endpoint answers from (the settings as they are now)."""
        return self.collection(self.cfg.min_interval, self.cfg.scrape_timeout)

    def collection(self, max_age: float | None, wait: float | None) -> Snapshot | None:
        """The last collection while it is fresh (`Snapshot.fresh` for `max_age` seconds),
        else a new one: after the one under way, which is shared if it started after the call
        or is fresh by then. `max_age` None: a new one. None when the one under way did not
        finish within `wait` seconds (None: as long as it takes)."""
        asked = time.monotonic()
        snap = self._snapshot
        if max_age is not None and snap is not None and snap.fresh(max_age, asked):
            return snap
        if not self._scrape_lock.acquire(timeout=-1 if wait is None else wait):
            return None
        try:
            snap = self._snapshot
            if snap is not None and (
                snap.started >= asked
                or (max_age is not None and snap.fresh(max_age, time.monotonic()))
            ):
                return snap
            self._endpoint.add("collections")
            started = time.monotonic()
            self._alert_stats.forget()  # one stats() per collection, however many read it
            try:
                families = list(self.registry.collect())
            finally:
                self._alert_stats.forget()
            snap = self._snapshot = Snapshot(started, time.monotonic(), families)
            return snap
        finally:
            self._scrape_lock.release()


class AlertCounter:
    """An alert sink counting delivered alerts into an `Exporter`."""

    name = "metrics"

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def send(self, alert: Alert) -> None:
        self.exporter.alert(alert)

    def close(self) -> None:
        pass
