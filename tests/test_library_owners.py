"""One module owns each external library (docs/ARCHITECTURE.md, "Layers and owners"): every
import of a third-party package in `sensor` stands in the module (or package) that owns it, so
a library's quirks and its replacement stay in one place."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Mapping

from tests.test_layering import PACKAGE, modules

OWNERS: Mapping[str, tuple[str, ...]] = {
    "ahocorasick_rs": ("sensor.detect.forms",),
    "aioquic": ("sensor.lab.servers",),
    # QUIC Initial keys on the packet path; the lab's certificate authority (lab only)
    "cryptography": ("sensor.decode.quic", "sensor.lab.tls"),
    # packet building in the lab (synthetic captures, its DNS server); never the daemon
    "dpkt": ("sensor.lab.synth", "sensor.lab.servers"),
    "iso3166": ("sensor.validate",),
    "maxminddb": ("sensor.enrich.geo",),
    "netaddr": ("sensor.enrich.device",),
    "numpy": ("sensor.fastpath",),
    "phonenumbers": ("sensor.detect.phones",),
    "prometheus_client": ("sensor.metrics",),  # the metrics package
    "publicsuffixlist": ("sensor.enrich.vendors",),
    "pyroute2": ("sensor.kernel.netlink",),
    "systemd": ("sensor.sinks.journal",),
}
"""Third-party top-level package -> the modules, or the package, allowed to import it."""


def third_party(source: str) -> Iterator[str]:
    """The top-level names of the non-standard, non-`sensor` packages `source` imports,
    wherever the import stands (in a function, under TYPE_CHECKING)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top != "sensor" and top not in sys.stdlib_module_names and top != "__future__":
                yield top


def _owns(owner: str, module: str) -> bool:
    return module == owner or module.startswith(owner + ".")


def test_every_external_library_is_imported_by_its_owner_only() -> None:
    stray = []
    for name, path in modules(PACKAGE).items():
        for lib in sorted(set(third_party(path.read_text()))):
            owners = OWNERS.get(lib)
            if owners is None:
                stray.append(f"{name} imports {lib}, which has no owner in OWNERS")
            elif not any(_owns(o, name) for o in owners):
                stray.append(f"{name} imports {lib}, owned by {', '.join(owners)}")
    assert stray == []


def test_the_check_sees_an_import_inside_a_function() -> None:
    source = "def f():\n    import phonenumbers.util\n    from pyroute2 import IPRoute\n"
    assert sorted(third_party(source)) == ["phonenumbers", "pyroute2"]
    assert list(third_party("import os, json\nfrom sensor.model import Flow\n")) == []
