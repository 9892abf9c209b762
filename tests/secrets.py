"""Searching outputs for identifiers: every way a leaked value could show up in a file, a log
line, a metric or an HTTP body.

Shared by the offline tests (tests/detect/test_replay_2014.py) and the lab's end-to-end search
(tests/lab/test_secrets.py). Independent of `sensor.detect` on purpose: a test that borrowed the
detector's own expansion would miss what the detector misses.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.parse
from collections.abc import Iterable, Mapping

import ahocorasick_rs
import phonenumbers

MIN_FORM = 8
"""Forms shorter than this are not searched (a short base64 sliver matches by chance)."""


def guess_kind(value: str) -> str:
    if "@" in value:
        return "email"
    if value.startswith("+"):
        return "phone"
    if value.isdigit() and len(value) == 15:
        return "imei"
    return "other"


def spellings(value: str, kind: str | None = None) -> list[str]:
    """The value as people and programs write it: a phone number in E.164, international,
    national and digits-only form; an IMEI with and without its check digit; an address in
    its own and lower case."""
    kind = kind or guess_kind(value)
    out = [value]
    if kind == "phone":
        num = phonenumbers.parse(value, "ID")
        fmt = phonenumbers.PhoneNumberFormat
        intl = phonenumbers.format_number(num, fmt.INTERNATIONAL)
        national = phonenumbers.format_number(num, fmt.NATIONAL)
        e164 = phonenumbers.format_number(num, fmt.E164)
        nsn = phonenumbers.national_significant_number(num)
        out += [
            e164,
            e164.lstrip("+"),
            intl,
            intl.replace("-", " "),
            national,
            national.replace("-", ""),
            national.replace("-", " "),
            "0" + nsn,
            nsn,
            "00" + e164.lstrip("+"),
        ]
    elif kind == "imei":
        out += [value[:14], f"{value[:2]}-{value[2:8]}-{value[8:14]}-{value[14:]}"]
    elif kind == "email":
        out += [value.lower()]
    seen: list[str] = []
    for s in out:
        if s not in seen:
            seen.append(s)
    return seen


def _b64_cores(raw: bytes) -> Iterable[tuple[str, bytes]]:
    """Base64 of `raw` at the three alignments it can have inside a longer blob: only the
    characters that depend on `raw` alone."""
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + raw)
        start = -(-8 * pad // 6)
        end = 8 * (pad + len(raw)) // 6
        core = enc[start:end]
        yield f"base64@{pad}", core
        yield f"base64url@{pad}", core.replace(b"+", b"-").replace(b"/", b"_")


def encodings(text: str) -> dict[str, bytes]:
    """One spelling in every encoding searched: name -> bytes."""
    raw = text.encode()
    forms: dict[str, bytes] = {"plain": raw}
    forms["url"] = urllib.parse.quote(text, safe="").encode()
    forms["url_plus"] = urllib.parse.quote_plus(text).encode()
    forms["hex"] = raw.hex().encode()
    forms["hex_upper"] = raw.hex().upper().encode()
    std = base64.b64encode(raw)
    url = base64.urlsafe_b64encode(raw)
    forms |= {
        "base64": std,
        "base64_nopad": std.rstrip(b"="),
        "base64url": url,
        "base64url_nopad": url.rstrip(b"="),
    }
    forms |= dict(_b64_cores(raw))
    b32 = base64.b32encode(raw)
    forms |= {"base32": b32.rstrip(b"="), "base32_lower": b32.rstrip(b"=").lower()}
    for name in ("md5", "sha1", "sha256"):
        digest = hashlib.new(name, raw).digest()
        forms[name] = digest.hex().encode()
        forms[f"{name}_upper"] = digest.hex().upper().encode()
        # A truncated plain digest would pass for a keyed hash: look for its head too.
        forms[f"{name}_head"] = digest.hex()[:12].encode()
        forms[f"{name}_head_upper"] = digest.hex()[:12].upper().encode()
        forms[f"{name}_base64"] = base64.b64encode(digest).rstrip(b"=")
        forms[f"{name}_base64url"] = base64.urlsafe_b64encode(digest).rstrip(b"=")
    return {k: v for k, v in forms.items() if len(v) >= MIN_FORM}


def secret_forms(value: str, kind: str | None = None) -> dict[str, bytes]:
    """Every form of `value` to search for: "<spelling> <encoding>" -> bytes."""
    out: dict[str, bytes] = {}
    for s in spellings(value, kind):
        for enc, form in encodings(s).items():
            out.setdefault(f"{s!r} {enc}", form)
    return out


def find_secrets(outputs: Mapping[str, bytes | str], values: Iterable[str]) -> list[str]:
    """Every (output, value, form) where an output holds a value: "where: value as form".
    Empty means clean. One Aho-Corasick pass per output (megabytes of binary state files
    against some 2,000 forms)."""
    names: dict[bytes, list[str]] = {}
    for value in values:
        for name, form in secret_forms(value).items():
            names.setdefault(form, []).append(f"{value!r} as {name}")
    patterns = list(names)
    automaton = ahocorasick_rs.BytesAhoCorasick(patterns)
    found = []
    for where, data in outputs.items():
        blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        hits = {i for i, _, _ in automaton.find_matches_as_indexes(blob, overlapping=True)}
        for i in sorted(hits):
            text = patterns[i].decode("latin-1")
            found += [f"{where}: {n} ({text!r})" for n in names[patterns[i]]]
    return found


def forms_present(data: bytes, values: Iterable[str]) -> set[str]:
    """The encodings ("plain", "hex", "md5", …) in which any of `values` occurs in `data`:
    the search's own check, run on something that does hold the secrets."""
    present = set()
    for value in values:
        for name, form in secret_forms(value).items():
            if form in data:
                present.add(name.rsplit(" ", 1)[1])
    return present
