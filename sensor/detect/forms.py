"""Every form a value may take on the wire (spellings, ASCII hex, base64 at the three
alignments, percent-encoding, digests) and the Aho-Corasick automaton that searches them all
in one pass, together with the scanner's key words and phone-number starts."""

from __future__ import annotations

import base64
import hashlib
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import ahocorasick_rs

from sensor.detect.phones import spellings
from sensor.model import Encoding, IdentifierKind

_DFA_MAX_PATTERNS: Final = 8000
"""Up to this many patterns (some 240 identifiers) the automaton is a DFA (about 35 MB)."""
_MIN_ENCODED_LEN: Final = 8
"""Encoded forms shorter than this (e.g. a base64 sliver) are not searched."""

_Boundary: TypeAlias = Literal[0, 1, 2, 3]
"""0: none; 1: no digit on either side; 2: no letter or digit on either side; 3: (emails) no
local-part character before."""
_SHORT_PLAIN: Final = 12
"""Plain spellings shorter than this must stand on token boundaries: a 10-digit national number
could otherwise match inside any longer number. Longer ones match anywhere, so a value packed
between binary bytes (protobuf tags are often letters or digits) is still found."""


@dataclass(frozen=True, slots=True)
class Ident:
    kind: IdentifierKind
    canonical: str
    redacted: str
    keyed_hash: str
    owner: str | None


@dataclass(frozen=True, slots=True)
class Variant:
    ident: Ident
    encoding: Encoding
    exact: bytes | None
    """Original-case bytes that must match (base64); None when case does not matter."""
    boundary: _Boundary


@dataclass(frozen=True, slots=True)
class Key:
    cls: str
    whole_word: bool


@dataclass(frozen=True, slots=True)
class PhoneStart:
    skip: int


Entry: TypeAlias = Variant | Key | PhoneStart


def _spellings(kind: str, canonical: str, home_region: str | None) -> tuple[list[str], list[str]]:
    """(plain spellings to search for, spellings an app might hash) of a canonical value."""
    if kind == "imei":
        return [canonical, canonical[:14]], [canonical, canonical[:14]]
    if kind == "phone":
        sp = spellings(canonical, home_region)
        e164 = canonical
        intl = e164[1:]
        nsn, national, formatted = sp.nsn, sp.national, sp.international
        national_digits = "".join(c for c in national if c.isdigit())
        plain = [e164, intl, "00" + intl, nsn, national_digits, national, formatted]
        return _unique(plain), _unique([e164, intl, national_digits, nsn])
    if kind == "mac":
        bare = canonical.replace(":", "")
        forms = [canonical, canonical.replace(":", "-"), bare]
        forms += [f.upper() for f in forms]
        return forms, forms
    if kind == "email":
        return [canonical], [canonical]
    if kind in ("serial", "android_id", "ad_id"):
        return _unique([canonical, canonical.lower(), canonical.upper()]), _unique(
            [canonical, canonical.lower(), canonical.upper()]
        )
    return [canonical], [canonical]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _b64_inner(raw: bytes, align: int, urlsafe: bool) -> bytes:
    """The part of base64(prefix + raw + suffix) that depends on ``raw`` alone, for a prefix of
    ``align`` bytes (mod 3): what any blob with ``raw`` at such an offset contains."""
    enc = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(b"\0" * align + raw)
    start = -(-8 * align // 6)
    end = 8 * (align + len(raw)) // 6
    return enc[start:end]


def wire_forms(ident: Ident, home_region: str | None) -> list[tuple[bytes, Variant]]:
    plain, hashed = _spellings(ident.kind, ident.canonical, home_region)
    out: list[tuple[bytes, Variant]] = []

    def add(pattern: bytes, enc: Encoding, exact: bool = False, boundary: _Boundary = 0) -> None:
        if len(pattern) >= _MIN_ENCODED_LEN or (enc == "plain" and len(pattern) >= 6):
            out.append((pattern.lower(), Variant(ident, enc, pattern if exact else None, boundary)))

    for form in plain:
        raw = form.encode()
        boundary: _Boundary = 0
        if ident.kind == "email":
            boundary = 3
        elif len(form) < _SHORT_PLAIN:
            boundary = 1 if form.isdigit() else 2
        add(raw, "plain", boundary=boundary)
        add(raw.hex().encode(), "hex")
        for quoted in {urllib.parse.quote(form, safe=""), urllib.parse.quote_plus(form, safe="")}:
            if quoted != form:
                add(quoted.encode(), "url", boundary=boundary)
        for align in range(3):
            std = _b64_inner(raw, align, urlsafe=False)
            url = _b64_inner(raw, align, urlsafe=True)
            add(std, "base64", exact=True)
            if url != std:
                add(url, "base64url", exact=True)
    for form in hashed:
        raw = form.encode()
        for name, enc_b64 in (
            ("md5", "md5_base64"),
            ("sha1", "sha1_base64"),
            ("sha256", "sha256_base64"),
        ):
            digest = hashlib.new(name, raw).digest()
            add(digest.hex().encode(), name)  # type: ignore[arg-type]
            add(base64.b64encode(digest).rstrip(b"="), enc_b64, exact=True)  # type: ignore[arg-type]
            add(base64.urlsafe_b64encode(digest).rstrip(b"="), enc_b64, exact=True)  # type: ignore[arg-type]
    return out


class Automaton:
    """One Aho-Corasick automaton over every pattern: known-identifier forms, key words and
    phone-number starts. Several entries may share one (lower-cased) pattern.

    ``ahocorasick_rs.BytesAhoCorasick`` searches bytes as they are; the pyahocorasick wheels
    take str keys only (its bytes mode is a build option), and scanning latin-1-decoded text
    with it measured at a third of the speed."""

    __slots__ = ("ac", "entries")

    def __init__(self, groups: Iterable[Iterable[tuple[bytes, Entry]]]) -> None:
        index: dict[bytes, dict[Entry, None]] = {}
        for group in groups:
            for pattern, entry in group:
                index.setdefault(pattern, {})[entry] = None
        self.entries: list[tuple[Entry, ...]] = [tuple(e) for e in index.values()]
        # A DFA scans about twice as fast as the default NFA but its size grows quickly.
        impl = ahocorasick_rs.Implementation.DFA if len(index) <= _DFA_MAX_PATTERNS else None
        self.ac = ahocorasick_rs.BytesAhoCorasick(list(index), implementation=impl)
