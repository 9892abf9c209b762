"""What every settings section and the loader share: the error type and small parsers."""

from __future__ import annotations

import json
import re

_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(ValueError):
    """A configuration problem; the message names file, key and reason, on one line.

    `key` is the dotted setting (``flows.max_flows``, ``devices[1].mac``), a position for
    syntax errors (``line 3, column 7``), or empty when the file as a whole is the problem."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        source, key, reason = one_line(source), one_line(key), one_line(reason)
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


def one_line(text: str) -> str:
    """Control characters escaped: a message stays one line and cannot drive a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def dotted(prefix: str, name: str) -> str:
    """`prefix.name`, the name quoted as TOML would when it is not a bare key."""
    if not _BARE_KEY.fullmatch(name):
        name = json.dumps(name, ensure_ascii=False)
    return f"{prefix}.{name}" if prefix else name


def normalize_mac(text: str) -> str:
    """'AA-BB-CC-DD-EE-FF' / 'aabbccddeeff' -> 'aa:bb:cc:dd:ee:ff'; ValueError if not a MAC."""
    t = text.strip().lower()
    if not _MAC_RE.match(t):
        raise ValueError(f"not a MAC address: {text!r}")
    hexdigits = t.replace(":", "").replace("-", "")
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2))
