"""`phonehome run`: the live sensor on a gateway.

Lifecycle and signals live here. The packet loop is one thread around a selector:

- packets from the live source (nfnetlink_log fed by an nftables rule that hands over each
  connection's first packets, or an AF_PACKET socket with a BPF filter) go through the same
  pipeline as `analyze` (decode -> flows -> enrich -> detect -> alerts);
- conntrack NEW/DESTROY events and periodic counter dumps give every forwarded flow's bytes
  (the kernel counts them; Python never sees the bulk);
- neighbour events keep IP -> MAC current;
- between events: flow-table sweeps, the watchdog ping (only from this loop, so a hung loop
  stops pinging), STATUS lines, and a snapshot of live flows in `<state_dir>/flows.json`.

SIGHUP reloads configuration and data files (validated first; on error the old ones stay and
the log says why). SIGTERM and SIGINT stop cleanly: flows are flushed through the stages, the
event log is closed, the nftables rules are removed.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sensor import __version__
from sensor.config import Config, ConfigError, load_config
from sensor.metrics import Exporter, MetricsError
from sensor.model import Device, Flow
from sensor.pipeline import Pipeline
from sensor.report import device_record, flow_record
from sensor.service import Notifier
from sensor.sinks import Sink, make_sinks
from sensor.stages import Stages
from sensor.stages import build as build_stages

log = logging.getLogger(__name__)

MAX_SNAPSHOT_FLOWS = 2000
MAX_READ = 512
"""Packets read from the source per wake-up before other work gets a turn."""


class DaemonError(Exception):
    pass


class LiveOutput:
    """The daemon's record output: keeps recently ended flows for the snapshot (bounded) and
    hands them to the metrics exporter."""

    def __init__(self) -> None:
        self.ended: list[dict[str, Any]] = []
        self.flows_ended = 0
        self.metrics: Exporter | None = None

    def flow(self, flow: Flow) -> None:
        self.flows_ended += 1
        if self.metrics is not None:
            self.metrics.flow_ended(flow)
        self.ended.append(flow_record(flow))
        if len(self.ended) > MAX_SNAPSHOT_FLOWS:
            del self.ended[: len(self.ended) - MAX_SNAPSHOT_FLOWS]

    def device(self, device: Device) -> None:
        pass


class Daemon:
    def __init__(self, config_path: str | None, cfg: Config) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.notifier = Notifier()
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self.reload_requested = False
        self.output = LiveOutput()
        self.source: Any = None
        self.conntrack: Any = None
        self.neigh: Any = None
        self.rules_installed = False
        self.accounting = "capture"
        self.capture_mode = "packet"
        self.interfaces: list[str] = []
        self.stages: Stages
        self.pipeline: Pipeline
        self.metrics: Exporter
        self.started = time.time()
        self._next_dump = 0.0
        self._next_snapshot = 0.0
        self._next_status = 0.0
        self.conntrack_updates = 0
        self.loop_iterations = 0

    # --- start --------------------------------------------------------------------------------

    def start(self) -> None:
        from sensor import netlink

        cfg = self.cfg
        self.interfaces = list(cfg.daemon.interfaces) or netlink.interfaces_for_prefixes(
            cfg.site.lan_networks
        )
        if not self.interfaces:
            raise DaemonError(
                "no LAN interface: none holds an address in site.lan_networks; "
                "set daemon.interfaces"
            )
        acct = netlink.accounting_enabled()
        if acct is False:
            result = netlink.enable_accounting()
            if result:
                acct = True
            else:
                log.warning(
                    "conntrack accounting (net.netfilter.nf_conntrack_acct) is off and cannot "
                    "be turned on (%s): flows counted from captured packets only",
                    result.reason,
                )
        want = cfg.daemon.accounting
        if want == "conntrack" and not acct:
            raise DaemonError("accounting = conntrack, but conntrack accounting is unavailable")
        self.accounting = (
            "conntrack" if want == "conntrack" or (want == "auto" and acct) else ("capture")
        )
        capture = cfg.daemon.capture
        if capture == "auto":
            capture = "nflog" if self.accounting == "conntrack" else "packet"
        self.capture_mode = capture
        self.metrics = Exporter(cfg.metrics, self)
        self.output.metrics = self.metrics
        self._open_source()
        if self.accounting == "conntrack":
            self.conntrack = netlink.ConntrackMonitor()
            self.sel.register(self.conntrack, selectors.EVENT_READ, self._on_conntrack)
        self.neigh = netlink.NeighbourMonitor()
        self.sel.register(self.neigh, selectors.EVENT_READ, self._on_neighbours)
        self._build_stages()
        for ip, mac in netlink.neighbours(interfaces=self.interfaces).items():
            self.pipeline.ip_mac[ip] = mac
        if cfg.metrics.enabled:
            self.metrics.start()  # before dropping root: it may read key and credential files
            log.info("metrics at %s", self.metrics.url)
        self._drop_privileges()
        self.notifier.ready(self.status_line())
        log.info(
            "phonehome %s running on %s: capture %s, accounting %s",
            __version__,
            ",".join(self.interfaces),
            self.capture_mode,
            self.accounting,
        )

    def _open_source(self) -> None:
        from sensor import livecapture

        d = self.cfg.daemon
        if self.capture_mode == "nflog":
            self.rules_installed = True  # removing an absent table is harmless
            livecapture.install_rules(
                d.nflog_group, self.interfaces, first_packets=d.first_packets, snaplen=d.snaplen
            )
            self.source = livecapture.NflogSource(d.nflog_group)
        else:
            self.source = livecapture.PacketSocketSource(
                self.interfaces, wide=self.accounting == "capture"
            )
        self.sel.register(self.source, selectors.EVENT_READ, self._on_packets)

    def _sinks(self, cfg: Config) -> list[Sink]:
        sinks = make_sinks(
            cfg.paths.state_dir,
            cfg.eventlog,
            cfg.journal,
            cfg.alertmanager,
            resolve_after=cfg.alerts.suppress_window,
        )
        sinks.append(self.metrics.alert_sink())
        return sinks

    def _build_stages(self) -> None:
        Path(self.cfg.paths.state_dir).mkdir(parents=True, exist_ok=True)
        self.stages = build_stages(self.cfg, self.output, self._sinks(self.cfg))
        self.pipeline = Pipeline(self.cfg, self.stages, self.stages)
        self.pipeline.live_accounting = self.accounting == "conntrack"
        self.stages.devices = self.pipeline.devices
        if self.stages.detector is not None:
            self.metrics.tap(self.stages.detector.alerts)

    def _drop_privileges(self) -> None:
        from sensor import privileges

        if os.geteuid() != 0:
            return
        user = self.cfg.daemon.user
        if user and privileges.user_exists(user):
            # The state directory was made as root: the service user keeps writing there.
            privileges.chown_tree(Path(self.cfg.paths.state_dir), user)
            privileges.drop_to(user)
            log.info("dropped to user %s with CAP_NET_RAW and CAP_NET_ADMIN", user)
        elif self.cfg.daemon.allow_root:
            log.warning("running as root (daemon.allow_root)")
        else:
            raise DaemonError(
                f"refusing to run as root: user {user!r} does not exist "
                "(create it, or set daemon.allow_root = true)"
            )

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            while not self.stopping:
                self.loop_once(timeout=0.5)
        finally:
            self.stop()
        return 0

    def loop_once(self, timeout: float) -> None:
        self.loop_iterations += 1
        for key, _ in self.sel.select(timeout):
            handler: Callable[[], None] = key.data
            try:
                handler()
            except Exception:  # one failing source must not stop the loop
                log.exception("event handler failed")
        now = time.time()
        if self.reload_requested:
            self.reload_requested = False
            self.reload()
        if self.accounting == "conntrack" and now >= self._next_dump:
            self._next_dump = now + self.cfg.daemon.conntrack_interval
            self._dump_conntrack(now)
        self.pipeline.advance(now)
        if now >= self._next_snapshot:
            self._next_snapshot = now + self.cfg.daemon.snapshot_interval
            self.write_snapshot(now)
        if now >= self._next_status:
            self._next_status = now + 10
            self.notifier.status(self.status_line())
        self.notifier.watchdog(time.monotonic())

    def _on_packets(self) -> None:
        packets = self.source.read(MAX_READ)
        if packets:
            self.pipeline.run_packets(packets)

    def _on_conntrack(self) -> None:
        for ev in self.conntrack.read_events():
            self._account(ev.entry, time.time(), final=ev.kind == "destroy")

    def _dump_conntrack(self, now: float) -> None:
        from sensor import netlink

        try:
            entries = netlink.dump()
        except OSError as exc:
            log.warning("conntrack dump failed: %s", exc)
            return
        for e in entries:
            self._account(e, now)

    def _account(self, e: Any, now: float, final: bool = False) -> None:
        """One conntrack entry's counters (original tuple: the LAN side) into its flow."""
        self.pipeline.account_conntrack(
            e.proto, e.orig_src, e.orig_sport, e.orig_dst, e.orig_dport,
            e.bytes_orig, e.packets_orig, e.bytes_reply, e.packets_reply,
            now, final=final,
        )  # fmt: skip
        self.conntrack_updates += 1

    def _on_neighbours(self) -> None:
        for ev in self.neigh.read_neighbour_events():
            if ev.kind == "new" and ev.mac:
                self.pipeline.ip_mac[ev.ip] = ev.mac
        for link in self.neigh.read_link_events():
            if link.ifname in self.interfaces:
                log.info("LAN interface %s is %s", link.ifname, "up" if link.up else "down")

    # --- signals, reload, stop ------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload_requested = True

    def reload(self) -> bool:
        """Validate the new configuration and data first; keep the old ones on any error."""
        self.notifier.reloading()
        try:
            cfg = load_config(self.config_path)
            stages = build_stages(cfg, self.output, self._sinks(cfg))
            self.metrics.reconfigure(cfg.metrics)
        except (ConfigError, OSError, ValueError, MetricsError) as exc:
            log.error("reload failed, still running on the old configuration: %s", exc)
            self.notifier.notify(f"READY=1\nSTATUS=reload failed: {exc}")
            return False
        old = self.stages
        self.cfg = cfg
        self.stages = stages
        stages.devices = self.pipeline.devices
        if stages.detector is not None:
            self.metrics.tap(stages.detector.alerts)
        self.pipeline.retarget(cfg, stages, stages)
        try:
            old.close()
        except Exception:
            log.exception("closing the old stages failed")
        log.info("configuration and data reloaded from %s", self.config_path)
        self.notifier.notify(f"READY=1\nSTATUS={self.status_line()}")
        return True

    def stop(self) -> None:
        self.notifier.stopping()
        try:
            self.pipeline.finish()
        except Exception:
            log.exception("flushing flows failed")
        try:
            self.stages.close()
        except Exception:
            log.exception("closing the stages failed")
        self.write_snapshot(time.time())
        self.metrics.stop()
        for obj in (self.source, self.conntrack, self.neigh):
            if obj is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(obj)
                obj.close()
        if self.rules_installed:
            from sensor import livecapture

            try:
                livecapture.remove_rules()
            except Exception as exc:
                log.warning("removing the nftables rules failed: %s", exc)
        log.info("stopped")

    # --- what we say about ourselves --------------------------------------------------------------

    def status_line(self) -> str:
        p = self.pipeline if hasattr(self, "pipeline") else None
        if p is None:
            return "starting"
        src = self.source.stats() if self.source is not None else {}
        drops = src.get("kernel_drops", src.get("drops", 0))
        return (
            f"{len(p.flows)} flows, {len(p.devices)} devices, {p.packets_read} packets decoded, "
            f"{drops} kernel drops, {self.conntrack_updates} conntrack updates"
        )

    def snapshot(self, now: float) -> dict[str, Any]:
        p = self.pipeline
        live = [flow_record(e.sync()) for e in list(p.flows.entries.values())]
        for rec in live:
            rec.update(_destination_fields(self.stages, rec))
        live.sort(key=lambda r: -float(r["last_seen"]))
        stats: dict[str, Any] = dict(p.stats())
        stats["source"] = self.source.stats() if self.source is not None else {}
        if self.conntrack is not None:
            stats["conntrack"] = getattr(self.conntrack, "stats", dict)()
        if self.stages.detector is not None:
            stats["detect"] = self.stages.detector.stats()
            stats["alerts"] = self.stages.detector.alerts.stats()
        return {
            "ts": now,
            "version": __version__,
            "interfaces": self.interfaces,
            "capture": self.capture_mode,
            "accounting": self.accounting,
            "flows": live[:MAX_SNAPSHOT_FLOWS],
            "ended": list(reversed(self.output.ended[-200:])),
            "devices": [self._device_record(d) for d in list(p.devices.values())],
            "stats": stats,
        }

    def _device_record(self, dev: Device) -> dict[str, Any]:
        if self.stages.enricher is not None:
            self.stages.enricher.annotate_device(dev)
        return device_record(dev)

    def write_snapshot(self, now: float) -> None:
        path = Path(self.cfg.paths.state_dir) / "flows.json"
        tmp = path.with_name(".flows.json.tmp")
        try:
            data = json.dumps(self.snapshot(now), default=str).encode()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)


def _destination_fields(stages: Stages, rec: dict[str, Any]) -> dict[str, Any]:
    if stages.enricher is None:
        return {}
    from sensor.enrich.stage import destination_fields

    d = stages.enricher.destination(rec["dst_ip"], rec["dst_port"], rec["server_name"])
    return destination_fields(d)


def main(config_path: str | None) -> int:
    from sensor.service import setup_logging

    setup_logging(logging.INFO)
    # `kill -USR1` prints every thread's stack to stderr: a hung daemon explains itself.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return 2
    daemon = Daemon(config_path, cfg)
    try:
        daemon.start()
    except (DaemonError, OSError, MetricsError) as exc:
        log.error("cannot start: %s", exc)
        if daemon.rules_installed:
            from sensor import livecapture

            livecapture.remove_rules()
        return 1
    return daemon.run()
