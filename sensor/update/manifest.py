"""The data manifest, ``<state_dir>/data/manifest.json``: its one reader and its writer.

`phonehome update-data` writes it and reads it back (the previous copy's hash and record
count); `phonehome check` and the metrics (data age, failing updates) read it. All three go
through this module, so they agree on what it says.

Shape: ``{"version": 1, "updated": TIME, "sources": {NAME: ENTRY}}``. An ENTRY is an object
with ``file``, ``origin``, ``fetched`` (TIME), ``sha256``, ``size``, ``records`` and, after a
failed attempt, ``last_error``, ``last_attempt`` (TIME) and ``last_origin``. Entries that are
not objects are skipped; a document without ``"sources"`` has no sources.

Times (the one rule, `parse_time`): written as ISO 8601 in UTC with a ``Z``. Read as ISO 8601
with ``Z`` or a UTC offset; **a time without a zone is UTC**, never the reading process's
local time (the writer only writes UTC, so a zone-less time comes from a hand-edited or older
file, and reading it as local time would make `check` and the metrics disagree by the host's
offset). A number is Unix seconds. Anything else (bool, garbage text, NaN) is no time.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from sensor.files import write_atomically

MANIFEST: Final = "manifest.json"
VERSION: Final = 1


class ManifestError(ValueError):
    """The manifest is JSON but not of the manifest's shape."""


def parse_time(value: object) -> float | None:
    """Unix seconds of a manifest time, or None; see the module's rule for zone-less times."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        ts = float(value)
        return ts if math.isfinite(ts) else None
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def format_time(ts: float | None = None) -> str:
    """A manifest time: ISO 8601, UTC, whole seconds, ``Z`` (now, unless `ts` is given)."""
    t = dt.datetime.now(dt.UTC) if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC)
    return t.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sources_of(doc: object) -> dict[str, dict[str, Any]]:
    """The "sources" table of a parsed manifest; ManifestError when it has the wrong shape."""
    if not isinstance(doc, dict):
        raise ManifestError("not a JSON object")
    sources = doc.get("sources", {})
    if not isinstance(sources, dict):
        raise ManifestError("no sources table")
    return {str(k): v for k, v in sources.items() if isinstance(v, dict)}


def load(path: Path) -> dict[str, dict[str, Any]]:
    """The sources table of the manifest at `path`. Raises OSError (FileNotFoundError when
    there is none yet) or ValueError (not JSON; ManifestError: the wrong shape), for callers
    that report a broken manifest (`check`)."""
    return sources_of(json.loads(path.read_bytes()))


def read(path: Path) -> dict[str, dict[str, Any]]:
    """The sources table of the manifest at `path`; empty if it is missing or broken (an
    update rebuilds it, the metrics show nothing for it)."""
    try:
        return load(path)
    except (OSError, ValueError):
        return {}


def write(path: Path, sources: Mapping[str, Any]) -> None:
    """Replace the manifest at `path` atomically with `sources`, stamped now."""
    doc = {"version": VERSION, "updated": format_time(), "sources": dict(sorted(sources.items()))}
    write_atomically(path, json.dumps(doc, indent=2).encode() + b"\n", 0o644)
