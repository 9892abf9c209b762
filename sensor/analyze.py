"""`phonehome analyze`: capture files through the pipeline into JSON Lines or a summary."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from sensor.capture import CaptureError, CaptureFile, read_captures
from sensor.config import ConfigError, load_config
from sensor.enrich.stage import Enricher
from sensor.pipeline import Pipeline
from sensor.report import JsonLinesSink, SummarySink
from sensor.stages import Stages

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
    try:
        enricher = Enricher.load(cfg)
    except (OSError, ValueError) as exc:
        err.write(f"phonehome: cannot load data files: {exc}\n")
        return EXIT_USAGE
    stages = Stages(enricher, sink)
    pipeline = Pipeline(cfg, stages, stages)
    pipeline.run(read_captures(files))
    pipeline.finish()
    stats = pipeline.stats()
    warnings = [w for f in files for w in f.warnings]
    stats["files"] = [{"path": f.path, "format": f.format, "packets": f.packets} for f in files]
    stats["warnings"] = warnings
    for w in warnings:
        err.write(f"phonehome: warning: {w}\n")
    sink.stats(stats)
    out.flush()
    return EXIT_OK
