"""Encrypted Client Hello (RFC 9849): which outer server names are covers.

A hello with ECH carries the real destination encrypted and a cover name, the ECH
configuration's public name (e.g. "cloudflare-ech.com"), in its outer SNI. The sensor marks such
a flow (`Flow.ech`, `Flow.outer_server_name`) and never names it after the cover: it is named
from DNS (the name the device resolved to the address) or not at all.

Browsers also send a GREASE ECH extension (RFC 9849 6.2) on connections without an ECH
configuration, and on the wire it looks the same as a real one; there the outer SNI is the real
destination. So an outer SNI is taken as a cover only when it is a known public name: from the
packaged list (sensor/data/ech.toml) or from the "ech" parameter of an HTTPS/SVCB answer the
sensor saw on the LAN (`EchCovers.learn`). Any other name in a hello with the extension is the
destination, as without ECH.
"""

from __future__ import annotations

import tomllib
from collections import OrderedDict
from collections.abc import Iterable
from importlib import resources
from typing import Final

DATA_FILE: Final = "data/ech.toml"
MAX_LEARNED: Final = 1024
"""Public names learned from DNS answers; the least recently seen go first."""


def packaged_public_names() -> frozenset[str]:
    """The public names in sensor/data/ech.toml (empty if the file is missing or bad: the
    learned names still work)."""
    try:
        raw = resources.files("sensor").joinpath(DATA_FILE).read_text(encoding="utf-8")
        names = tomllib.loads(raw).get("public_names", [])
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return frozenset()
    return frozenset(n.lower().rstrip(".") for n in names if isinstance(n, str) and n)


class EchCovers:
    """The cover names the sensor knows: packaged ones and ones learned from DNS answers."""

    def __init__(self, known: Iterable[str] = (), max_learned: int = MAX_LEARNED) -> None:
        self.known = frozenset(known)
        self.max_learned = max_learned
        self._learned: OrderedDict[str, None] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.known) + len(self._learned)

    def learn(self, name: str) -> None:
        """A public name from an HTTPS/SVCB answer's ECH configuration."""
        name = name.lower().rstrip(".")
        if not name or name in self.known:
            return
        learned = self._learned
        if name in learned:
            learned.move_to_end(name)
            return
        learned[name] = None
        if len(learned) > self.max_learned:
            learned.popitem(last=False)
            self.evicted += 1

    def is_cover(self, name: str) -> bool:
        """True when `name` (an outer SNI, lower case) is a known ECH public name."""
        return name in self.known or name in self._learned
