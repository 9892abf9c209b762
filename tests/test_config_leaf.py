"""`sensor.config` is a leaf: every stage imports its settings from it, so it imports nothing
of the package but the shared vocabulary (`sensor.model`), and only the standard library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sensor.config

CONFIG_DIR = Path(sensor.config.__file__).parent
ALLOWED = ("sensor.config", "sensor.model")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_config_imports_only_the_standard_library_and_the_model() -> None:
    files = sorted(CONFIG_DIR.glob("*.py"))
    assert files
    wrong = [
        f"{path.name}: {name}"
        for path in files
        for name in _imports(path)
        if not (
            name == "__future__"
            or name.split(".")[0] in sys.stdlib_module_names
            or any(name == a or name.startswith(a + ".") for a in ALLOWED)
        )
    ]
    assert wrong == []


def test_importing_config_loads_no_other_stage() -> None:
    code = (
        "import sys, sensor.config; "
        "print('\\n'.join(m for m in sys.modules if m.startswith('sensor')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split()
    others = [m for m in out if m != "sensor" and not m.startswith(ALLOWED)]
    assert others == []
