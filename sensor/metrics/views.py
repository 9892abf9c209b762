"""What the collectors read of a running sensor: small typed interfaces, one per object read.

The daemon builds a `SensorView` of accessors (`sensor.daemon.Daemon.metrics_view`); each
accessor is called at scrape time, so a reload's new stages are seen, and returns None while
the feature is absent (no policy, no conntrack, a capture file), which is not an error. The
protocols name only what a collector reads, so renaming an attribute the metrics rely on is a
type error (mypy) where the view is built, not a silently missing metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # the concrete records; config.py imports this package, so not at run time
    from sensor.config import Config
    from sensor.detect.identifiers import LearnedIdentifiers
    from sensor.enforce import EnforcerStats
    from sensor.enrich.device import DeviceIdentity
    from sensor.flows import FlowEntry
    from sensor.model import Destination, Device, Flow
    from sensor.policy import CompiledPolicy
    from sensor.sinks import AlertSink


# --- the packet path ----------------------------------------------------------------------------


class FlowTableView(Protocol):
    """The flow table (sensor.flows.FlowTable)."""

    @property
    def entries(self) -> Mapping[bytes, FlowEntry]: ...
    @property
    def cap(self) -> int: ...
    @property
    def created(self) -> int: ...
    @property
    def evicted_idle(self) -> int: ...
    @property
    def evicted_cap(self) -> int: ...


class PipelineView(Protocol):
    """The pipeline's counters and tables (sensor.pipeline.Pipeline)."""

    @property
    def flows(self) -> FlowTableView: ...
    @property
    def devices(self) -> Mapping[str, Device]: ...
    @property
    def devices_dropped(self) -> int: ...
    @property
    def packets_read(self) -> int: ...
    @property
    def packets_decoded(self) -> int: ...
    @property
    def skipped(self) -> Mapping[str, int]: ...
    @property
    def weird(self) -> Mapping[str, int]: ...
    @property
    def quic_unnamed(self) -> Mapping[str, int]: ...
    @property
    def not_devices(self) -> Mapping[str, int]:
        """Placeholder MACs not taken for devices, by reason."""

    @property
    def dns(self) -> Sized: ...


class CaptureView(Protocol):
    """A live capture source (sensor.sources): kernel and ring counters; per interface
    under ``"interfaces"`` when it has them."""

    def stats(self) -> Mapping[str, object]: ...


@dataclass(frozen=True, slots=True)
class NflogRules:
    """The NFLOG capture's nftables table: how often it was put back, and whether it is gone."""

    restored: Mapping[str, int]
    missing: bool


class ConntrackView(Protocol):
    """The conntrack event monitor (sensor.kernel.conntrack.ConntrackMonitor)."""

    @property
    def received(self) -> int: ...
    @property
    def lost_overruns(self) -> int: ...
    @property
    def decode_errors(self) -> int: ...
    def backlog(self) -> int | None: ...


# --- enrichment, detection, alerts --------------------------------------------------------------


class DeviceIdentifierView(Protocol):
    def identify(self, device: Device) -> DeviceIdentity: ...


class EnricherView(Protocol):
    """The enrichment stage (sensor.enrich.stage.Enricher): where a destination is (from its
    own cache, the one the packet loop fills), what a device is."""

    def destination(self, ip: str, port: int, server_name: str | None) -> Destination: ...
    @property
    def devices(self) -> DeviceIdentifierView | None: ...
    def visibility(self, flow: Flow) -> str | None:
        """A live flow's visibility class (sensor.visibility); None: it stays on the site."""


class ScannerView(Protocol):
    @property
    def learned(self) -> LearnedIdentifiers | None: ...


class DetectorView(Protocol):
    """The detector (sensor.detect.stage.Detector)."""

    @property
    def write_errors(self) -> Mapping[str, int]:
        """Failed writes of learned.json by errno name."""

    @property
    def placeholders_seen(self) -> Mapping[str, int]: ...
    @property
    def scanner(self) -> ScannerView: ...


@runtime_checkable
class PushSink(Protocol):
    """An alert sink that pushes to a remote receiver (sensor.sinks.AlertmanagerSink): its
    stats are exported per `endpoint`."""

    @property
    def endpoint(self) -> str:
        """``host:port/path``, no credentials."""

    @property
    def name(self) -> str:
        """The key of its stats in the alert stage's ``stats()["sinks"]``."""


class AlertStageView(Protocol):
    """The alert stage (sensor.alerts.AlertStage): its counters and its sinks."""

    @property
    def sinks(self) -> Sequence[AlertSink]: ...
    def stats(self) -> Mapping[str, Any]: ...


# --- policy -------------------------------------------------------------------------------------


class PolicyView(Protocol):
    """The policy in force (sensor.enforce.Enforcer)."""

    @property
    def compiled(self) -> CompiledPolicy: ...
    @property
    def totals(self) -> Mapping[str, tuple[int, int]]: ...
    @property
    def stats(self) -> EnforcerStats: ...
    @property
    def missing(self) -> bool: ...
    def abroad_blocks(self) -> int: ...


# --- the whole sensor ---------------------------------------------------------------------------


def _absent() -> None:
    return None


def _no_interfaces() -> Sequence[str]:
    return ()


def _no_write_errors() -> Mapping[tuple[str, str], int]:
    return {}


@dataclass(frozen=True, slots=True)
class SensorView:
    """Accessors for everything the exporter reads, each called at scrape time (the default:
    absent). The daemon fills every one; tests and benchmarks what they have."""

    config: Callable[[], Config | None] = _absent
    """Site, alert thresholds, the state directory (data files' manifest)."""
    pipeline: Callable[[], PipelineView | None] = _absent
    enricher: Callable[[], EnricherView | None] = _absent
    detector: Callable[[], DetectorView | None] = _absent
    alert_stage: Callable[[], AlertStageView | None] = _absent
    capture: Callable[[], CaptureView | None] = _absent
    interfaces: Callable[[], Sequence[str]] = _no_interfaces
    """The LAN interfaces (the capture's label when it does not count per interface)."""
    nflog_rules: Callable[[], NflogRules | None] = _absent
    """Only while capturing through NFLOG."""
    conntrack: Callable[[], ConntrackView | None] = _absent
    conntrack_updates: Callable[[], int | None] = _absent
    """Conntrack entries applied to flows."""
    policy: Callable[[], PolicyView | None] = _absent
    write_errors: Callable[[], Mapping[tuple[str, str], int]] = _no_write_errors
    """Failed writes of the sensor's own state files, by (file, errno name)."""
