"""The package's import layering: data flows one way, so imports point one way.

Every module of `sensor` has a layer by its place on the data path (docs/ARCHITECTURE.md). A
module may import its own layer and those below, never one above, and no modules may import
each other in a cycle. Imports inside functions count: a lazy import is still a dependency (it
only hides a cycle from Python). Imports under ``if TYPE_CHECKING:`` are left out: they cost
nothing at run time and are how a lower layer names a higher layer's type in an annotation.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sensor"

# Module prefix -> layer; the longest matching prefix wins. Lower numbers are lower layers.
LAYERS: Mapping[str, int] = {
    # the vocabulary and the leaves every stage may use
    "sensor": 0,  # sensor/__init__.py: the version
    "sensor.model": 0,
    "sensor.files": 0,
    "sensor.names": 0,
    "sensor.config": 0,
    "sensor.visibility": 0,
    "sensor.ech": 0,
    "sensor.fingerprints": 0,
    # bytes in: the decoders and the kernel interface
    "sensor.decode": 1,
    "sensor.kernel": 1,
    # packet sources and the flow table
    "sensor.sources": 2,
    "sensor.flows": 2,
    # what the packet loop hands on; enrichment
    "sensor.fastcount": 3,
    "sensor.fastpath": 3,
    "sensor.pipeline_consumers": 3,
    "sensor.enrich": 3,
    # detection, alert sinks, data updates, policy rules
    "sensor.detect": 4,
    "sensor.sinks": 4,
    "sensor.update": 4,
    "sensor.policy": 4,
    # the alert stage, the validator, the packet loop
    "sensor.alerts": 5,
    "sensor.validate": 5,
    "sensor.pipeline": 5,
    # wiring and the views of it
    "sensor.stages": 6,
    "sensor.report": 6,
    "sensor.enforce": 6,
    "sensor.metrics": 6,
    "sensor.service": 6,
    "sensor.privileges": 6,
    # the commands
    "sensor.daemon": 7,
    "sensor.analyze": 7,
    "sensor.check": 7,
    "sensor.cli": 8,
    "sensor.__main__": 8,
    "sensor.lab": 8,  # optional: only `phonehome lab` and `demo` import it (tests/lab)
}


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(source: str, known: Mapping[str, object]) -> Iterator[str]:
    """The package modules `source` imports (a name imported from a package counts as its
    submodule when there is one), wherever the import stands but under TYPE_CHECKING."""

    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "sensor")
        elif (
            isinstance(node, ast.ImportFrom)
            and not node.level
            and (node.module or "").split(".")[0] == "sensor"
        ):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                yield sub if sub in known else str(node.module)


def graph(mods: Mapping[str, Path]) -> dict[str, set[str]]:
    return {
        name: {m for m in imported(path.read_text(), mods) if m in mods and m != name}
        for name, path in mods.items()
    }


def layer(module: str, layers: Mapping[str, int] = LAYERS) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        hit = layers.get(".".join(parts[:n]))
        if hit is not None:
            return hit
    return None


def upward(g: Mapping[str, set[str]], layers: Mapping[str, int] = LAYERS) -> list[str]:
    """Every import of a higher layer, as "importer (layer) -> imported (layer)"."""
    out = []
    for importer, deps in sorted(g.items()):
        low = layer(importer, layers)
        for dep in sorted(deps):
            high = layer(dep, layers)
            if low is not None and high is not None and high > low:
                out.append(f"{importer} ({low}) -> {dep} ({high})")
    return out


def cycles(g: Mapping[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


# --- the package ------------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in modules() if layer(m) is None]
    assert not unplaced, f"give these a layer in LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer() -> None:
    bad = upward(graph(modules()))
    assert not bad, "imports against the data path:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    assert cycles(graph(modules())) == []


def test_the_graph_sees_lazy_imports_and_skips_type_checking_ones() -> None:
    g = graph(modules())
    # sensor.cli imports the daemon and the lab inside functions (`run`, `lab`, `demo`).
    assert "sensor.daemon" in g["sensor.cli"]
    assert any(m.startswith("sensor.lab") for m in g["sensor.cli"])


def test_no_module_is_over_a_thousand_lines() -> None:
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 1000}
    assert not long, f"split by what each part does: {long}"


# --- the checks themselves --------------------------------------------------------------------


def test_the_checks_catch_an_upward_import_and_a_cycle() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import sensor.model\n"
        "if TYPE_CHECKING:\n"
        "    from sensor.daemon import Daemon\n"
        "def f():\n"
        "    from sensor.alerts import AlertStage\n"
    )
    known = {"sensor.model": 0, "sensor.daemon": 0, "sensor.alerts": 0}
    assert sorted(imported(source, known)) == ["sensor.alerts", "sensor.model"]
    g = {"sensor.decode.dns": {"sensor.alerts"}, "sensor.alerts": {"sensor.decode.dns"}}
    assert upward(g) == ["sensor.decode.dns (1) -> sensor.alerts (5)"]
    assert cycles(g) == [["sensor.alerts", "sensor.decode.dns"]]
