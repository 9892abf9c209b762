"""`phonehome analyze`: capture files through the pipeline into JSON Lines or a summary."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from sensor.capture import CaptureError, CaptureFile, read_captures
from sensor.config import ConfigError, load_config, site_name
from sensor.pipeline import Pipeline
from sensor.report import JsonLinesSink, SummarySink
from sensor.sinks import EventLogConfig, JournalConfig, Sink, make_sinks
from sensor.stages import ReportAlerts
from sensor.stages import build as build_stages

EXIT_OK = 0
EXIT_USAGE = 2


def analyze(
    paths: Sequence[str],
    config_path: str | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        err.write(f"phonehome: config error: {exc}\n")
        return EXIT_USAGE
    files: list[CaptureFile] = []
    try:
        for p in paths:
            files.append(CaptureFile(p))
    except CaptureError as exc:
        err.write(f"phonehome: {exc}\n")
        return EXIT_USAGE
    sink = JsonLinesSink(out) if as_json else SummarySink(out)
    # Alerts go into the report, and into the event log when the state directory exists
    # (a router's; `analyze` run by a user on a laptop must not create /var/lib/phonehome),
    # and to Alertmanager when one is configured. Never to the journal from here.
    alert_sinks: list[Sink] = [ReportAlerts(sink)]
    alert_sinks += make_sinks(
        cfg.paths.state_dir,
        cfg.eventlog if Path(cfg.paths.state_dir).is_dir() else EventLogConfig(enabled=False),
        JournalConfig(enabled=False),
        cfg.alertmanager,
        resolve_after=cfg.alerts.suppress_window,
        site=site_name(cfg),
    )
    try:
        stages = build_stages(cfg, sink, alert_sinks)
    except (OSError, ValueError) as exc:
        err.write(f"phonehome: cannot load data files: {exc}\n")
        return EXIT_USAGE
    pipeline = Pipeline(cfg, stages, stages)
    stages.devices = pipeline.devices
    try:
        pipeline.run(read_captures(files))
        pipeline.finish()
    finally:
        stages.close()
    stats = pipeline.stats()
    if stages.detector is not None:
        stats["detect"] = stages.detector.stats()
        stats["alerts"] = stages.detector.alerts.stats()
    warnings = [w for f in files for w in f.warnings]
    stats["files"] = [{"path": f.path, "format": f.format, "packets": f.packets} for f in files]
    stats["warnings"] = warnings
    for w in warnings:
        err.write(f"phonehome: warning: {w}\n")
    sink.stats(stats)
    out.flush()
    return EXIT_OK
