"""`phonehome analyze`: capture files through the pipeline into a summary, JSON Lines or CSV.

Read-only unless asked: without `record` the alerts appear in the output only. No event log,
journal or Alertmanager hears of them, and nothing in the state directory (identity key,
learned identifiers, geo cache) is created or changed. Looking at an old capture must never
page the owner or rewrite the daemon's history.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sensor.config import (
    MAX_CONFIG_BYTES,
    Config,
    ConfigError,
    IdentifiersConfig,
    parse_config,
    site_name,
)
from sensor.config import load_config as parse_config_file
from sensor.decode.link import SUPPORTED_LINKTYPES, linktype_label
from sensor.model import VALUE_KINDS
from sensor.pipeline import Pipeline
from sensor.report import (
    DEFAULT_TOP,
    CsvSink,
    DeviceFilter,
    JsonLinesSink,
    Progress,
    Report,
    Scope,
    SummarySink,
)
from sensor.sinks import AlertSink, EventLogConfig, JournalConfig, make_sinks
from sensor.sources.pcap import CaptureError, CaptureFile, read_captures
from sensor.stages import ReportAlerts
from sensor.stages import build as build_stages
from sensor.validate import check_identifiers, country_problem, validate

EXIT_OK = 0
EXIT_USAGE = 2

DEFAULT_CONFIG = "/etc/phonehome/phonehome.toml"
"""The configuration `run` and `check` read; `analyze` reads it too when it exists."""
CONFIG_ENV = "PHONEHOME_CONFIG"
"""Names another default configuration for `analyze` (tests, a second install)."""

@dataclass(frozen=True, slots=True)
class Options:
    config_path: str | None = None
    """The configuration; None for the built-in defaults."""
    config_is_default: bool = False
    """`config_path` was not asked for: a missing or unreadable file means the defaults."""
    fmt: str = "text"
    record: bool = False
    """Deliver alerts to the event log and Alertmanager, and keep state (key, learned)."""
    home_country: str | None = None
    identifiers_file: str | None = None
    top: int | None = DEFAULT_TOP
    """Rows per device and table in the summary; None for all."""
    device: str | None = None
    alerts_only: bool = False
    color: bool | None = None
    """None: colour when the output is a terminal and NO_COLOR is not set."""
    progress: bool | None = None
    """None: a progress line when stderr is a terminal."""


def default_config_path() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def check_country(code: str) -> str:
    """`code` (any case) as an ISO 3166-1 alpha-2 code; ValueError saying why not, with a
    suggestion where one fits ("did you mean GB?" for UK). The one validator decides."""
    cc = code.strip().upper()
    problem = country_problem(cc)
    if problem:
        raise ValueError(f"{code!r}: {problem}")
    return cc


def load_identifiers_file(path: str) -> IdentifiersConfig:
    """The identifiers in a private TOML file: lists per kind at the top or in an
    [identifiers] table. ConfigError when it is readable by group or others, or malformed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, "", "cannot read: not a regular file")
        if st.st_mode & 0o044:
            raise ConfigError(
                path,
                "",
                f"readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"identifiers are secrets: chmod 600 {path}",
            )
        raw = b""
        while len(raw) <= MAX_CONFIG_BYTES and (chunk := os.read(fd, MAX_CONFIG_BYTES + 1)):
            raw += chunk
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(path, "", f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # The message may quote the file's text: say where, never what.
        at = re.search(r"\(at (line \d+, column \d+|end of document)\)", str(exc))
        where = (at.group(1) if at else "").replace("end of document", "end of file")
        raise ConfigError(path, where, "not a TOML identifiers file") from None
    nested = set(doc) == {"identifiers"} and isinstance(doc["identifiers"], dict)
    table = doc["identifiers"] if nested else doc
    try:
        return parse_config({"identifiers": table}, path).identifiers
    except ConfigError as exc:
        key = exc.key if nested else exc.key.removeprefix("identifiers.")
        if key == "identifiers":
            key = ""
        raise ConfigError(path, key, exc.reason) from None


def _merge_identifiers(a: IdentifiersConfig, b: IdentifiersConfig) -> IdentifiersConfig:
    merged = {k: tuple(dict.fromkeys(getattr(a, k) + getattr(b, k))) for k in VALUE_KINDS}
    return IdentifiersConfig(**merged)


def _config(opts: Options, notes: list[str]) -> Config:
    """The configuration with the command line's additions; ConfigError or ValueError."""
    path = opts.config_path
    if path is None or (opts.config_is_default and not os.path.lexists(path)):
        cfg = Config()
    elif opts.config_is_default and not os.access(path, os.R_OK):
        notes.append(
            f"cannot read {path} (permission denied): using the built-in defaults; "
            "run as root or as the phonehome user to use the router's settings"
        )
        cfg = Config()
    else:
        cfg = parse_config_file(path)
    if opts.home_country is not None:
        cc = check_country(opts.home_country)
        cfg = dataclasses.replace(cfg, site=dataclasses.replace(cfg.site, home_country=cc))
    if opts.identifiers_file is not None:
        ids = load_identifiers_file(opts.identifiers_file)
        check_identifiers(opts.identifiers_file, "", ids.as_mapping(), cfg.site.home_country)
        cfg = dataclasses.replace(cfg, identifiers=_merge_identifiers(cfg.identifiers, ids))
    validate(cfg)  # what check and run judge, judged the same way (after --home-country)
    return cfg


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.fstat(0) if path == "-" else os.stat(path)
    except OSError:
        return None  # CaptureFile says why
    return st.st_dev, st.st_ino


def _open(paths: Sequence[str]) -> list[CaptureFile]:
    """Every capture, opened; CaptureError for the first that cannot be, or a file given
    twice (it would double every count). Checked before reading any: a pipe given twice
    would otherwise be half read by the first."""
    seen: dict[tuple[int, int], str] = {}
    for p in paths:
        ident = _identity(p)
        if ident is None:
            continue
        first = seen.get(ident)
        if first is not None:
            same = "given twice" if first == p else f"the same file as {first}"
            raise CaptureError(f"{p}: {same}; give each capture once")
        seen[ident] = p
    files: list[CaptureFile] = []
    try:
        for p in paths:
            files.append(CaptureFile(p))
    except BaseException:
        for f in files:
            f.close()
        raise
    return files


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def use_color(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (no-color.org) or TERM=dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return _is_tty(stream)


def _context(cfg: Config, opts: Options, key_source: str) -> list[str]:
    """The summary's first lines: which settings made this report."""
    where = "built-in defaults" if cfg.source == "<defaults>" else cfg.source
    home = cfg.site.home_country or "not set (--home-country CC)"
    ids = sum(len(v) for v in cfg.identifiers.as_mapping().values())
    ids += sum(len(v) for d in cfg.devices for v in d.identifiers.values())
    mode = "alerts recorded (--record)" if opts.record else "read-only (alerts not recorded)"
    return [
        f"config: {where}; home country: {home}; {ids} own identifiers; key: {key_source}; {mode}"
    ]


def analyze(
    paths: Sequence[str],
    config_path: str | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    *,
    record: bool = False,
    options: Options | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    opts = options or Options(
        config_path=config_path, fmt="json" if as_json else "text", record=record
    )
    notes: list[str] = []
    try:
        cfg = _config(opts, notes)
    except ConfigError as exc:
        err.write(f"phonehome: config error: {exc}\n")
        return EXIT_USAGE
    except ValueError as exc:
        err.write(f"phonehome: --home-country: {exc}\n")
        return EXIT_USAGE
    try:
        files = _open(paths)
    except CaptureError as exc:
        err.write(f"phonehome: {exc}\n")
        return EXIT_USAGE
    try:
        return _analyze(files, cfg, opts, notes, out, err)
    finally:
        for f in files:
            f.close()


def _analyze(
    files: list[CaptureFile],
    cfg: Config,
    opts: Options,
    notes: list[str],
    out: TextIO,
    err: TextIO,
) -> int:
    scope = Scope(cfg.site.lan_networks)
    summary: SummarySink | None = None
    report: Report
    if opts.fmt == "json":
        report = JsonLinesSink(out, alerts_only=opts.alerts_only)
    elif opts.fmt == "csv":
        csv_sink = CsvSink(out, scope, alerts_only=opts.alerts_only)
        report = csv_sink
    else:
        color = use_color(out) if opts.color is None else opts.color
        summary = SummarySink(out, scope, opts.top, color, opts.alerts_only)
        report = summary
    dev_filter: DeviceFilter | None = None
    if opts.device is not None:
        names = {d.mac: d.name for d in cfg.devices if d.name}
        dev_filter = DeviceFilter(report, opts.device, {}, names)
        report = dev_filter
    alert_sinks: list[AlertSink] = [ReportAlerts(report)]
    if opts.record:
        # The event log only where the state directory exists (a router's; `analyze` run by
        # a user on a laptop must not create /var/lib/phonehome), Alertmanager when one is
        # configured. Never the journal from here.
        alert_sinks += make_sinks(
            cfg.paths.state_dir,
            cfg.eventlog if Path(cfg.paths.state_dir).is_dir() else EventLogConfig(enabled=False),
            JournalConfig(enabled=False),
            cfg.alertmanager,
            resolve_after=cfg.alerts.suppress_window,
            site=site_name(cfg),
        )
    try:
        stages = build_stages(cfg, report, alert_sinks, record=opts.record)
    except (OSError, ValueError) as exc:
        err.write(f"phonehome: cannot load data files: {exc}\n")
        return EXIT_USAGE
    notes += stages.notes
    if summary is not None:
        summary.context = _context(cfg, opts, stages.key_source)
    for note in notes:
        err.write(f"phonehome: note: {note}\n")
    pipeline = Pipeline(cfg, stages, stages)
    stages.devices = pipeline.devices
    if dev_filter is not None:
        dev_filter.devices = pipeline.devices
    if opts.fmt == "csv":
        csv_sink.devices = pipeline.devices
    show_progress = _is_tty(err) if opts.progress is None else opts.progress
    progress = Progress(err, files) if show_progress else None
    if progress is not None:
        progress.start()
    try:
        pipeline.run(read_captures(files))
        pipeline.finish()
    finally:
        if progress is not None:
            progress.stop()
        stages.close()
    stats = pipeline.stats()
    if stages.detector is not None:
        stats["detect"] = stages.detector.stats()
    if stages.alerts is not None:
        stats["alerts"] = stages.alerts.stats()
    if stages.bypass is not None:
        stats["dns_bypass"] = stages.bypass.stats()
    warnings = [w for f in files for w in f.warnings]
    for f in files:
        for lt in sorted(f.linktypes - SUPPORTED_LINKTYPES):
            warnings.append(
                f"{f.path}: {linktype_label(lt)} not supported; its packets were skipped "
                "(capture on the router's wired LAN or bridge interface instead)"
            )
    if dev_filter is not None and not dev_filter.matched:
        warnings.append(f"--device {opts.device}: no device of that address or name")
    stats["files"] = [_file_stats(f) for f in files]
    stats["warnings"] = warnings
    stats["notes"] = notes
    stats["config"] = None if cfg.source == "<defaults>" else cfg.source
    stats["home_country"] = cfg.site.home_country
    stats["key"] = stages.key_source
    stats["recorded"] = opts.record
    for w in warnings:
        err.write(f"phonehome: warning: {w}\n")
    report.stats(stats)
    out.flush()
    return EXIT_OK


def _file_stats(f: CaptureFile) -> dict[str, Any]:
    rec: dict[str, Any] = {"path": f.path, "format": f.format, "packets": f.packets}
    if f.compression:
        rec["compression"] = f.compression
    return rec
