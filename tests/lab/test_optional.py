"""The lab is optional for the daemon: `phonehome run`, `check` and `analyze` never import it.

Each check runs a fresh interpreter (this one has imported the lab long ago) and lists the
modules that importing the daemon's entry points pulled in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

DAEMON_PATH = ("sensor.cli", "sensor.daemon", "sensor.check", "sensor.analyze")
"""What `phonehome run`, `check` and `analyze` import before their work starts."""
LAB_MODULES = ("sensor.lab", "sensor.lab.servers", "sensor.lab.synth", "sensor.lab.demo")
"""The lab package and its modules."""
LAB_ONLY_THIRD_PARTY = ("aioquic", "pylsqpack")
"""Needed by the lab's HTTP/3 server and client only (the `test` extra, not a dependency)."""


def imported_after(modules: tuple[str, ...]) -> set[str]:
    script = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout))


def lab_related(names: set[str]) -> list[str]:
    roots = LAB_MODULES + LAB_ONLY_THIRD_PARTY
    return sorted(n for n in names if any(n == r or n.startswith(r + ".") for r in roots))


def test_daemon_entry_points_do_not_import_the_lab() -> None:
    assert lab_related(imported_after(DAEMON_PATH)) == []


def test_the_check_sees_the_lab_when_it_is_imported() -> None:
    """The other side, so the check above can fail: importing the lab's servers shows up."""
    found = lab_related(imported_after(("sensor.lab.servers",)))
    assert "sensor.lab" in found and "sensor.lab.servers" in found
