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
import heapq
import itertools
import json
import logging
import operator
import os
import selectors
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sensor import __version__
from sensor.config import Config, ConfigError, site_name
from sensor.files import errno_name, write_atomically
from sensor.fingerprints import STATE_NAME as FINGERPRINTS_NAME
from sensor.fingerprints import SavedSets
from sensor.metrics import Exporter, MetricsError, NflogRules, SensorView
from sensor.model import Alert, Device, DeviceRef, Flow
from sensor.pipeline import Pipeline
from sensor.report import device_record, flow_record
from sensor.service import Notifier
from sensor.sinks import AlertSink, EventLog, LogLimiter, make_sinks
from sensor.stages import Stages
from sensor.stages import build as build_stages
from sensor.validate import check_files, load_config, require_home_country

if TYPE_CHECKING:
    from sensor.enforce import Enforcer
    from sensor.kernel.conntrack import ConntrackMonitor
    from sensor.metrics.views import CaptureView, ConntrackView, PolicyView

log = logging.getLogger(__name__)

MAX_SNAPSHOT_FLOWS = 2000
SNAPSHOT_NAME = "flows.json"
MAX_READ = 512
"""Packets read from the source per wake-up before other work gets a turn."""
DUMP_SLICE = 1000
"""Conntrack entries accounted per loop turn while a dump is under way: a big table (a flood
of established connections) is taken in slices between packet batches, never in one go."""
RULES_CHECK = 2.0
"""Seconds between checks that our nftables table is still there (one netlink request): a
firewall reload that flushes the ruleset would otherwise leave NFLOG silent for good."""
MEMORY_CHECK = 0.2
"""Seconds between looks at our resident memory (one read of /proc/self/statm)."""
MEMORY_HIGH = 0.85
"""Share of daemon.memory_limit_mb above which flows are shed."""
MEMORY_LAST = 0.95
"""Share of the bound past which every check sheds, however small the flow table already is:
a shed seldom lowers the resident size (the freed memory is kept for reuse), so the steps
above 85% must end before the bound, not after it."""
MEMORY_KEEP = 0.7
"""Share of the flow table kept when shedding."""
DUMP_DUTY = 0.1
"""The share of time periodic dumps may take: after a dump that kept the loop busy for B
seconds, the next starts no sooner than B / DUMP_DUTY seconds later (conntrack_interval at
least)."""


class DaemonError(Exception):
    pass


class LiveOutput:
    """The daemon's record output: keeps recently ended flows for the snapshot (bounded) and
    hands them to the metrics exporter."""

    def __init__(self) -> None:
        self.ended: list[dict[str, Any]] = []
        self.metrics: Exporter | None = None

    def flow(self, flow: Flow) -> None:
        if self.metrics is not None:
            self.metrics.flow_ended(flow)
        self.ended.append(flow_record(flow))
        if len(self.ended) > MAX_SNAPSHOT_FLOWS:
            del self.ended[: len(self.ended) - MAX_SNAPSHOT_FLOWS]

    def device(self, device: Device) -> None:
        pass


class Wiring(Protocol):
    """What `sensor_view` reads: the daemon's wiring (tests wire the same attributes)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def stages(self) -> Stages: ...
    @property
    def source(self) -> CaptureView | None: ...
    @property
    def interfaces(self) -> Sequence[str]: ...
    @property
    def capture_mode(self) -> str: ...
    @property
    def rules_restored(self) -> Mapping[str, int]: ...
    @property
    def rules_missing(self) -> bool: ...
    @property
    def conntrack(self) -> ConntrackView | None: ...
    @property
    def conntrack_updates(self) -> int: ...
    @property
    def enforcer(self) -> PolicyView | None: ...
    @property
    def write_errors(self) -> Mapping[tuple[str, str], int]: ...


def sensor_view(w: Wiring) -> SensorView:
    """The metrics' accessors onto `w`'s attributes, each read at scrape time."""

    def nflog_rules() -> NflogRules | None:
        if w.capture_mode != "nflog":
            return None
        return NflogRules(restored=w.rules_restored, missing=w.rules_missing)

    return SensorView(
        config=lambda: w.cfg,
        pipeline=lambda: w.pipeline,
        enricher=lambda: w.stages.enricher,
        detector=lambda: w.stages.detector,
        alert_stage=lambda: w.stages.alerts,
        capture=lambda: w.source,
        interfaces=lambda: w.interfaces,
        nflog_rules=nflog_rules,
        conntrack=lambda: w.conntrack,
        conntrack_updates=lambda: w.conntrack_updates,
        policy=lambda: w.enforcer,
        write_errors=lambda: w.write_errors,
    )


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
        self.conntrack: ConntrackMonitor | None = None
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
        self._dump_iter: Generator[Any, None, None] | None = None
        self._dump_busy = 0.0
        self._dump_entries = 0
        self.dump_stats: dict[str, float] = {"dumps": 0, "last_entries": 0, "last_busy_s": 0.0}
        self._next_snapshot = 0.0
        self._next_status = 0.0
        self._next_memory = 0.0
        self._next_rules = 0.0
        self.rules_restored: Counter[str] = Counter()
        """Reinstalls of the nftables rules after they vanished, by result ("ok", "failed")."""
        self.rules_missing = False
        self._rss_at_shed = 0
        self.memory = {"rss_bytes": 0, "sheds": 0, "flows_shed": 0}
        self.write_errors: Counter[tuple[str, str]] = Counter()
        """Failed writes of the daemon's own state files, by (file, errno name); the event
        log counts its own. Exported as phonehome_state_write_errors_total."""
        self.write_trouble: dict[str, str] = {}
        """file -> why its last write failed, while it keeps failing (the STATUS line)."""
        self._write_limiter = LogLimiter(log)
        self.conntrack_updates = 0
        self.fingerprints = SavedSets()
        """The devices' JA4 sets, read from the state directory at start, saved with the
        snapshot when one changed and at stop."""
        self.enforcer: Enforcer | None = None
        """sensor.enforce.Enforcer while a policy is loaded."""

    def metrics_view(self) -> SensorView:
        """What the metrics read of the daemon, each read at scrape time (so a reload's new
        stages and policy are seen). Read only once the stages exist: the endpoint serves
        after `_build_stages`, and flows end only through them."""
        return sensor_view(self)

    # --- start --------------------------------------------------------------------------------

    def start(self) -> None:
        from sensor import privileges
        from sensor.kernel import conntrack, links

        cfg = self.cfg
        self.interfaces = list(cfg.daemon.interfaces) or links.interfaces_for_prefixes(
            cfg.site.lan_networks
        )
        if not self.interfaces:
            raise DaemonError(
                "no LAN interface: none holds an address in site.lan_networks; "
                "set daemon.interfaces"
            )
        acct = conntrack.accounting_enabled()
        if acct is False:
            result = conntrack.enable_accounting()
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
        self.metrics = Exporter(cfg.metrics, self.metrics_view())
        self.output.metrics = self.metrics
        self._open_source()
        if self.accounting == "conntrack":
            # DESTROY only: a NEW event carries no byte counts worth having (the first packets
            # come through the capture), and a SYN flood makes one per packet.
            self.conntrack = conntrack.ConntrackMonitor(new=False)
            self.sel.register(self.conntrack, selectors.EVENT_READ, self._on_conntrack)
        self.neigh = links.NeighbourMonitor()
        self.sel.register(self.neigh, selectors.EVENT_READ, self._on_neighbours)
        if self._service_user() is not None:
            # Before the first thread (the Alertmanager sender): threads inherit the bounding
            # set, but cutting it later reaches only the thread that does it.
            privileges.cut_bounding_set()
        self._build_stages()
        # Conntrack's counters are cumulative: flows ended while their connection is still
        # open are remembered from the first (sensor.flows.OpenEnded), before any dump.
        self.pipeline.flows.remember_open = self.conntrack is not None
        self._note_own_addresses()
        self._start_policy()
        for ip, mac in links.neighbours(interfaces=self.interfaces).items():
            self.pipeline.learn_neighbour(ip, mac)
            if self.enforcer is not None:
                self.enforcer.learn_neighbour(ip, mac)
        if cfg.metrics.enabled:
            # Opened as root (it may read key and credential files), served after the drop.
            self.metrics.start(serve=False)
        self._drop_privileges()
        if cfg.metrics.enabled:
            self.metrics.serve()
            log.info("metrics at %s", self.metrics.url)
        self._probe_state_dir()
        self.notifier.ready(self.status_line())
        log.info(
            "phonehome %s running on %s: capture %s, accounting %s",
            __version__,
            ",".join(self.interfaces),
            self.capture_mode,
            self.accounting,
        )

    def _open_source(self) -> None:
        from sensor.kernel.nftables import NFT_TABLE
        from sensor.sources.nflog import NflogSource
        from sensor.sources.packet import PacketSocketSource

        d = self.cfg.daemon
        if self.capture_mode == "nflog":
            self.rules_installed = True  # removing an absent table is harmless
            self._install_rules()
            self.source = NflogSource(d.nflog_group, budget_table=NFT_TABLE)
        else:
            self.source = PacketSocketSource(self.interfaces, wide=self.accounting == "capture")
        self.sel.register(self.source, selectors.EVENT_READ, self._on_packets)

    def _install_rules(self) -> None:
        from sensor.kernel.nftables import install_rules

        d = self.cfg.daemon
        install_rules(
            d.nflog_group,
            self.interfaces,
            first_packets=d.first_packets,
            snaplen=d.snaplen,
            host_rate=d.host_sample_rate,
            host_burst=d.host_sample_burst,
            lan_prefixes=self.cfg.site.lan_networks,
        )

    def _check_rules(self) -> None:
        """Puts our nftables table back when it has vanished (a firewall reload that flushes
        the whole ruleset): until then no packet reaches NFLOG and the sensor is blind. `nft`
        needs CAP_NET_ADMIN: ambient under the systemd unit. After a drop to the service user
        by hand (`privileges.drop_to`, nothing ambient) it fails: counted as "failed", logged,
        and `rules_missing` stays set (STATUS, phonehome_capture_rules_missing)."""
        from sensor.kernel.nftables import NFT_TABLE, NftError

        missing = self.source.rules_missing()
        if missing:
            if not self.rules_missing:
                log.warning(
                    "the nftables table inet %s is gone (a firewall reload flushed the "
                    "ruleset?): no packets are sampled; installing it again",
                    NFT_TABLE,
                )
            try:
                self._install_rules()
            except NftError as exc:
                self.rules_restored["failed"] += 1
                self._write_limiter.warning("rules", "cannot install the nftables rules: %s", exc)
            else:
                self.rules_restored["ok"] += 1
                missing = False
                log.info("nftables table inet %s installed again", NFT_TABLE)
        if missing != self.rules_missing:
            self.rules_missing = missing
            self._next_status = 0.0  # say so now, not at the next periodic STATUS

    # --- policy -------------------------------------------------------------------------------

    def _compile_policy(self, cfg: Config, stages: Stages) -> Any:
        """The compiled policy of `cfg`, or None when there is nothing to enforce."""
        from sensor.enforce import EnricherData
        from sensor.policy import compile_policy

        if not cfg.policy.enabled or not cfg.policy.rules or stages.enricher is None:
            return None
        return compile_policy(
            cfg.policy, cfg.devices, self.interfaces, EnricherData(stages.enricher), time.time()
        )

    def _start_policy(self) -> None:
        """Loads the policy table (rules checked by `compile_policy` and by the kernel's
        all-or-nothing transaction: a bad policy changes nothing and stops the start)."""
        from sensor import enforce
        from sensor.kernel import links

        compiled = self._compile_policy(self.cfg, self.stages)
        if compiled is None:
            return
        p = self.cfg.policy
        resolvers = list(p.resolvers) or links.addresses(self.interfaces)
        enforcer = enforce.Enforcer(
            compiled,
            resolvers=resolvers,
            abroad_expiry=p.abroad_expiry,
            abroad_max=p.abroad_max,
        )
        try:
            enforcer.install()
        except enforce.EnforceError as exc:
            raise DaemonError(f"cannot load the policy: {exc}") from None
        self.enforcer = enforcer
        self.pipeline.on_dns_answer = enforcer.dns_answer
        log.info(
            "policy: %d rules loaded into table inet %s (fail %s); DNS answers trusted from %s",
            len(compiled.rules),
            compiled.table,
            p.fail,
            ", ".join(resolvers) or "nowhere",
        )

    def _check_policy(self, now: float) -> None:
        enforcer = self.enforcer
        if enforcer is None:
            return
        nxt = enforcer.compiled.next_expiry
        if nxt is not None and now >= nxt:
            try:
                compiled = self._compile_policy(self.cfg, self.stages)
                if compiled is not None:
                    enforcer.replace(compiled)
                    log.info("policy: a rule expired; table loaded again")
            except (OSError, ValueError) as exc:
                log.warning("policy: reloading after an expiry failed: %s", exc)
        enforcer.check()
        alerts = self.stages.alerts
        for ev in enforcer.poll_counters():
            if alerts is None or ev.action == "allow":
                continue
            mac = None if ev.device == "*" else ev.device
            dev = self.pipeline.devices.get(mac) if mac is not None else None
            ip = min(dev.ips) if dev is not None and dev.ips else ""
            enricher = self.stages.enricher
            ref = enricher.device_ref(dev, mac, ip) if enricher else DeviceRef(mac=mac, ip=ip)
            alerts.policy_event(ev.rule, ev.action, ref, ev.packets, now)

    def _reload_policy(self, cfg: Config, stages: Stages) -> None:
        """The new configuration's policy replaces the old one in one transaction; OSError
        (nft refused it) or ValueError (it does not compile) leave the old one in force."""
        compiled = self._compile_policy(cfg, stages)
        if self.enforcer is None:
            if compiled is not None:
                old_cfg, old_stages = self.cfg, self.stages
                self.cfg, self.stages = cfg, stages
                try:
                    self._start_policy()
                except DaemonError as exc:
                    raise OSError(str(exc)) from None
                finally:
                    self.cfg, self.stages = old_cfg, old_stages
            return
        if compiled is None:
            self.enforcer.remove()
            self.enforcer = None
            self.pipeline.on_dns_answer = None
            return
        self.enforcer.replace(compiled)

    def _remove_policy(self) -> None:
        if self.enforcer is None:
            return
        if self.cfg.policy.fail == "closed":
            log.info("policy: fail closed: table inet %s stays", self.enforcer.compiled.table)
            return
        try:
            self.enforcer.remove()
        except OSError as exc:
            log.warning("removing the policy table failed: %s", exc)

    def _sinks(self, cfg: Config) -> list[AlertSink]:
        sinks = make_sinks(
            cfg.paths.state_dir,
            cfg.eventlog,
            cfg.journal,
            cfg.alertmanager,
            resolve_after=cfg.alerts.suppress_window,
            site=site_name(cfg),
        )
        sinks.append(self.metrics.alert_sink())
        sinks.append(_PolicySink(self))
        return sinks

    def _build_stages(self) -> None:
        Path(self.cfg.paths.state_dir).mkdir(parents=True, exist_ok=True)
        self.stages = build_stages(self.cfg, self.output, self._sinks(self.cfg))
        self.pipeline = Pipeline(self.cfg, self.stages, self.stages)
        self.stages.devices = self.pipeline.devices
        self.fingerprints = SavedSets.read(Path(self.cfg.paths.state_dir) / FINGERPRINTS_NAME)
        self.stages.fingerprints = self.fingerprints
        if self.stages.alerts is not None:
            self.stages.alerts.add_listener(self.metrics.observation)

    def _note_own_addresses(self) -> None:
        """The gateway's own addresses, so that its own connections (conntrack sees them all)
        are not taken for a LAN device's."""
        from sensor.kernel import links

        try:
            self.pipeline.set_gateway_addresses(links.addresses())
        except OSError as exc:
            log.warning("cannot list the gateway's own addresses: %s", exc)

    def _service_user(self) -> str | None:
        """The user to drop to: daemon.user, when we are root and it exists."""
        from sensor import privileges

        user = self.cfg.daemon.user
        if os.geteuid() == 0 and user and privileges.user_exists(user):
            return user
        return None

    def _drop_privileges(self) -> None:
        from sensor import privileges

        if os.geteuid() != 0:
            return
        user = self._service_user()
        if user is not None:
            # The state directory was made as root: the service user keeps writing there.
            privileges.chown_tree(Path(self.cfg.paths.state_dir), user)
            privileges.drop_to(user)
            log.info("dropped to user %s with CAP_NET_RAW and CAP_NET_ADMIN", user)
        elif self.cfg.daemon.allow_root:
            log.warning("running as root (daemon.allow_root)")
        else:
            raise DaemonError(
                f"refusing to run as root: user {self.cfg.daemon.user!r} does not exist "
                "(create it, or set daemon.allow_root = true)"
            )

    def _probe_state_dir(self) -> None:
        """Say at start, plainly, when the state directory cannot be written (read-only
        file system, wrong owner). The sensor runs anyway: detection, the journal and the
        metrics do not need the disk, and the event log and flows.json are written as soon
        as the directory is writable again."""
        state = Path(self.cfg.paths.state_dir)
        try:
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=state)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            why = f"{errno_name(exc)} ({exc.strerror or exc})"
            self.write_trouble["state_dir"] = f"{state}: {why}"
            log.error(
                "state directory %s is not writable by uid %d: %s; running without the "
                "event log and %s until it is (alerts still go to the journal and metrics)",
                state,
                os.geteuid(),
                why,
                SNAPSHOT_NAME,
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
        held = self.source is not None and self.source.pending() > 0
        if self._dump_iter is not None or held:
            # A dump is under way (its next slice comes right after the events), or the
            # source holds packets it already took from the kernel: its descriptor will not
            # turn readable for them, so they must not wait for the next packet to arrive.
            timeout = 0
        fired = False
        for key, _ in self.sel.select(timeout):
            handler: Callable[[], None] = key.data
            fired |= handler == self._on_packets
            try:
                handler()
            except Exception:  # one failing source must not stop the loop
                log.exception("event handler failed")
        if held and not fired:
            try:
                self._on_packets()
            except Exception:
                log.exception("event handler failed")
        now = time.time()
        if self.reload_requested:
            self.reload_requested = False
            self.reload()
        if self.accounting == "conntrack":
            if self._dump_iter is None and now >= self._next_dump:
                self._start_dump()
            if self._dump_iter is not None:
                self._dump_slice(now)
        self.pipeline.advance(now)
        if now >= self._next_memory:
            self._next_memory = now + MEMORY_CHECK
            self._check_memory()
        if now >= self._next_rules:
            self._next_rules = now + RULES_CHECK
            if self.capture_mode == "nflog":
                self._check_rules()
            self._check_policy(now)
        if now >= self._next_snapshot:
            self._next_snapshot = now + self.cfg.daemon.snapshot_interval
            self.write_snapshot(now)
            if self.fingerprints.changed:
                self.save_fingerprints()
        if now >= self._next_status:
            self._next_status = now + 10
            self.notifier.status(self.status_line())
        self.notifier.watchdog(time.monotonic())

    def _check_memory(self) -> None:
        """Keeps the resident set under daemon.memory_limit_mb: flows are what grows under a
        flood (about 1.5 KB each with their decoder state), so above MEMORY_HIGH of the bound
        the oldest are ended, reported as evicted, and the table's cap stays at what fits.
        (Python seldom gives memory back to the system; what the shed flows held is reused.
        After a 30,000-SYN flood in the lab the resident size stayed 15-20 MB up while live
        objects had grown by 2 MB: the flood's short-lived objects took new 1 MiB allocator
        arenas, and the few flows and table entries made meanwhile keep each one in use. So
        the size creeps a few MB past each shed, and past MEMORY_LAST every check sheds.)"""
        limit = self.cfg.daemon.memory_limit_mb << 20
        if not limit:
            return
        rss = self.memory["rss_bytes"] = _rss_bytes()
        flows = self.pipeline.flows
        # After a shed the resident size stays where it was (the freed memory is kept for
        # new flows): shed again only when it grows past that level once more.
        last = limit * MEMORY_LAST
        high = min(max(limit * MEMORY_HIGH, self._rss_at_shed + limit * 0.02), last)
        if rss < high or len(flows) < (1024 if rss < last else 32):
            return
        ended = flows.shrink(int(len(flows) * MEMORY_KEEP))
        self._rss_at_shed = rss
        self.memory["sheds"] += 1
        self.memory["flows_shed"] += ended
        log.warning(
            "memory: %d MB resident of the %d MB bound: ended the %d oldest flows, "
            "flow table capped at %d",
            rss >> 20,
            limit >> 20,
            ended,
            flows.cap,
        )

    def _on_packets(self) -> None:
        packets = self.source.read(MAX_READ)
        if packets:
            self.pipeline.run_packets(packets)

    def _on_conntrack(self) -> None:
        assert self.conntrack is not None  # registered with the selector only once opened
        for ev in self.conntrack.read_events():
            self._account(ev.entry, time.time(), final=ev.kind == "destroy")

    def _start_dump(self) -> None:
        """Begins a periodic dump of the assured conntrack entries (long-lived connections
        whose counters grow without packets reaching us); `_dump_slice` takes it in parts."""
        from sensor.kernel import conntrack

        self._dump_iter = conntrack.iter_dump(assured_only=True)
        self._dump_busy = 0.0
        self._dump_entries = 0

    def _dump_slice(self, now: float) -> None:
        it = self._dump_iter
        assert it is not None
        t0 = time.monotonic()
        taken = 0
        done = False
        try:
            for e in itertools.islice(it, DUMP_SLICE):
                self._account(e, now)
                taken += 1
            done = taken < DUMP_SLICE
        except OSError as exc:
            log.warning("conntrack dump failed: %s", exc)
            done = True
        self._dump_entries += taken
        self._dump_busy += time.monotonic() - t0
        if done:
            self._finish_dump(now)

    def _close_dump(self) -> None:
        if self._dump_iter is not None:
            self._dump_iter.close()  # releases its netlink socket
            self._dump_iter = None

    def _finish_dump(self, now: float) -> None:
        self._close_dump()
        busy = self._dump_busy
        self._next_dump = now + max(self.cfg.daemon.conntrack_interval, busy / DUMP_DUTY)
        self.dump_stats["dumps"] += 1
        self.dump_stats["last_entries"] = self._dump_entries
        self.dump_stats["last_busy_s"] = round(busy, 4)

    def _account(self, e: Any, now: float, final: bool = False) -> None:
        """One conntrack entry's counters (original tuple: the LAN side) into its flow."""
        self.pipeline.account_conntrack(
            e.proto, e.orig_src, e.orig_sport, e.orig_dst, e.orig_dport,
            e.bytes_orig, e.packets_orig, e.bytes_reply, e.packets_reply,
            now, final=final, ct_id=e.id,
        )  # fmt: skip
        self.conntrack_updates += 1

    def _on_neighbours(self) -> None:
        for ev in self.neigh.read_neighbour_events():
            if ev.kind == "new" and ev.mac:
                self.pipeline.learn_neighbour(ev.ip, ev.mac)
                if self.enforcer is not None:
                    self.enforcer.learn_neighbour(ev.ip, ev.mac)
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
        sinks: list[AlertSink] = []
        try:
            cfg = load_config(self.config_path)
            require_home_country(cfg)
            # Metrics credentials are read at start, as root: after the privilege drop only
            # new ones are checked (and must then be readable by the service user).
            check_files(cfg, metrics_files=cfg.metrics != self.cfg.metrics)
            sinks = self._sinks(cfg)
            stages = build_stages(cfg, self.output, sinks)
            self.metrics.reconfigure(cfg.metrics)
        except (ConfigError, OSError, ValueError, MetricsError) as exc:
            for sink in sinks:  # the new event log handle, the new Alertmanager sender thread
                with contextlib.suppress(Exception):
                    sink.close()
            if isinstance(exc, MetricsError):  # the endpoint may be down: back to the old one
                try:
                    self.metrics.reconfigure(self.cfg.metrics)
                except MetricsError as again:
                    log.error("metrics endpoint not restored: %s", again)
            log.error("reload failed, still running on the old configuration: %s", exc)
            self.notifier.notify(f"READY=1\nSTATUS=reload failed: {exc}")
            return False
        try:
            self._reload_policy(cfg, stages)
        except (OSError, ValueError) as exc:
            stages.close()
            log.error("reload failed, still running on the old configuration: %s", exc)
            self.notifier.notify(f"READY=1\nSTATUS=reload failed: {exc}")
            return False
        old = self.stages
        self.cfg = cfg
        self.stages = stages
        stages.devices = self.pipeline.devices
        stages.fingerprints = self.fingerprints
        if stages.alerts is not None:
            stages.alerts.add_listener(self.metrics.observation)
        if stages.bypass is not None and old.bypass is not None:
            stages.bypass.resolvers.adopt(old.bypass.resolvers)  # what DHCP handed out
        self.pipeline.retarget(cfg, stages, stages)
        self._note_own_addresses()
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
        self._close_dump()
        self.write_snapshot(time.time())
        self.save_fingerprints()
        self.metrics.stop()
        for obj in (self.source, self.conntrack, self.neigh):
            if obj is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(obj)
                obj.close()
        if self.rules_installed:
            from sensor.kernel.nftables import remove_rules

            try:
                remove_rules()
            except Exception as exc:
                log.warning("removing the nftables rules failed: %s", exc)
        self._remove_policy()
        log.info("stopped")

    # --- what we say about ourselves --------------------------------------------------------------

    def status_line(self) -> str:
        p = self.pipeline if hasattr(self, "pipeline") else None
        if p is None:
            return "starting"
        src = self.source.stats() if self.source is not None else {}
        drops = src.get("drops", 0)
        line = (
            f"{len(p.flows)} flows, {len(p.devices)} devices, {p.packets_read} packets decoded, "
            f"{drops} kernel drops, {self.conntrack_updates} conntrack updates"
        )
        trouble = dict(self.write_trouble)
        eventlog = self._event_log()
        if eventlog is not None and eventlog.failing is not None:
            trouble["eventlog"] = f"{eventlog.path}: {eventlog.failing}"
        if trouble:
            line += "; cannot write " + ", ".join(trouble.values())
        if self.rules_missing:
            line += "; nftables rules missing, nothing sampled"
        return line

    def _event_log(self) -> EventLog | None:
        alerts = self.stages.alerts
        sinks = alerts.sinks if alerts is not None else ()
        return next((s for s in sinks if isinstance(s, EventLog)), None)

    def snapshot(self, now: float) -> dict[str, Any]:
        p = self.pipeline
        # The most recently active flows only: under a flood the table holds hundreds of
        # thousands, and records (with their enrichment) are built for the few written.
        recent = heapq.nlargest(MAX_SNAPSHOT_FLOWS, p.flows.entries.values(), key=_last_seen)
        live = []
        for e in recent:
            flow = e.sync()
            rec = flow_record(flow)
            rec.update(_destination_fields(self.stages, flow))
            live.append(rec)
        stats: dict[str, Any] = dict(p.stats())
        stats["source"] = self.source.stats() if self.source is not None else {}
        if self.conntrack is not None:
            stats["conntrack"] = self.conntrack.stats()
            stats["conntrack_dumps"] = dict(self.dump_stats)
        stats["memory"] = dict(self.memory, flow_cap=p.flows.cap)
        if self.stages.detector is not None:
            stats["detect"] = self.stages.detector.stats()
        if self.stages.alerts is not None:
            stats["alerts"] = self.stages.alerts.stats()
        if self.stages.bypass is not None:
            stats["dns_bypass"] = self.stages.bypass.stats()
        return {
            "ts": now,
            "version": __version__,
            "interfaces": self.interfaces,
            "capture": self.capture_mode,
            "accounting": self.accounting,
            "flows": live,
            "ended": list(reversed(self.output.ended[-200:])),
            "devices": [self._device_record(d) for d in list(p.devices.values())],
            "stats": stats,
        }

    def _device_record(self, dev: Device) -> dict[str, Any]:
        if self.stages.enricher is not None:
            self.stages.enricher.annotate_device(dev)
        return device_record(dev)

    def write_snapshot(self, now: float) -> None:
        """`<state_dir>/flows.json`, replaced atomically (`write_atomically`): a reader, a
        crash or a full disk never leaves half a snapshot, and a failed write keeps the
        previous one. Failures are counted (`write_errors`), logged once a minute per kind
        and shown in STATUS; they never stop the loop."""
        path = Path(self.cfg.paths.state_dir) / SNAPSHOT_NAME
        try:
            data = json.dumps(self.snapshot(now), default=str).encode()
        except Exception as exc:  # a bug in a record must not stop the packet loop
            self._write_failed(path, "encode", repr(exc))
            return
        try:
            write_atomically(path, data)
        except OSError as exc:
            self._write_failed(path, errno_name(exc), exc.strerror or str(exc))
            return
        if self.write_trouble.pop(SNAPSHOT_NAME, None) is not None:
            log.info("%s written again", path)
            self._next_status = 0.0  # say so now, not at the next periodic STATUS
        self.write_trouble.pop("state_dir", None)  # evidently writable now

    def save_fingerprints(self) -> None:
        """`<state_dir>/fingerprints.json` (the devices' JA4 sets, `SavedSets`), replaced
        atomically; failures are counted and logged like the snapshot's."""
        path = Path(self.cfg.paths.state_dir) / FINGERPRINTS_NAME
        try:
            data = self.fingerprints.encode(list(self.pipeline.devices.values()))
            write_atomically(path, data)
        except OSError as exc:
            self._write_failed(path, errno_name(exc), exc.strerror or str(exc))
            return
        except Exception as exc:  # a bug in a record must not stop the packet loop
            self._write_failed(path, "encode", repr(exc))
            return
        self.fingerprints.changed = False
        if self.write_trouble.pop(FINGERPRINTS_NAME, None) is not None:
            log.info("%s written again", path)

    def _write_failed(self, path: Path, reason: str, why: str) -> None:
        self.write_errors[(path.name, reason)] += 1
        if path.name not in self.write_trouble:
            self._next_status = 0.0  # say so now, not at the next periodic STATUS
        self.write_trouble[path.name] = f"{path}: {reason}"
        self._write_limiter.warning(
            f"{path.name}:{reason}",
            "cannot write %s: %s (%s); the previous copy stays, detection carries on",
            path,
            reason,
            why,
        )


class _PolicySink:
    """Hands identifier_abroad alerts to the policy (rules with identifier_abroad block that
    device → server pair). Looks the enforcer up at each alert: it is made after the sinks."""

    name = "policy"

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def send(self, alert: Alert) -> None:
        enforcer = self.daemon.enforcer
        if enforcer is None or alert.rule != "identifier_abroad" or not alert.dst.ip:
            return
        enforcer.identifier_abroad(alert.device.mac, alert.device.ip, alert.dst.ip)

    def close(self) -> None:
        pass


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE")


_last_seen = operator.attrgetter("last_seen")


def _destination_fields(stages: Stages, flow: Flow) -> dict[str, Any]:
    """What enrichment will write into a live flow's record when it ends: the destination, and
    the relay and visibility class as they stand now."""
    enricher = stages.enricher
    if enricher is None:
        return {}
    from sensor.enrich.stage import destination_fields

    fields = destination_fields(enricher.place(flow))
    relay = flow.relay or enricher.relays.match(flow)
    if relay is not None:
        fields["relay"] = relay
    vis = enricher.visibility(flow)
    if vis is not None:
        fields["visibility"] = vis
    return fields


def main(config_path: str | None) -> int:
    from sensor.service import setup_logging

    os.umask(0o077)  # what it writes is the service user's alone, also when started by hand
    # `phonehome -v run` has set DEBUG already: keep it.
    setup_logging(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
    # `kill -USR1` prints every thread's stack to stderr: a hung daemon explains itself.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        cfg = load_config(config_path)
        require_home_country(cfg)
        check_files(cfg)
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return 2
    daemon = Daemon(config_path, cfg)
    try:
        daemon.start()
    except (DaemonError, OSError, MetricsError) as exc:
        log.error("cannot start: %s", exc)
        if daemon.rules_installed:
            from sensor.kernel.nftables import remove_rules

            remove_rules()
        daemon._remove_policy()
        return 1
    return daemon.run()
