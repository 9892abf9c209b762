"""What makes a value an identifier of its kind, and its one canonical spelling: check digits
(Luhn), phone numbers (`sensor.detect.phones`, with an explicit unknown home country), the keyed
hash that stands for a value and the redacted tail that may be shown. Pure functions."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

from sensor.detect.phones import possible_e164

_LUHN_DOUBLED: Final = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))
"""Maps an ASCII digit to the digit sum of its double (Luhn)."""
_HEX_CHARS: Final = frozenset("0123456789abcdef")
MIN_VALUE_LEN: Final = 6
"""Shorter configured values are refused: they would match all over unrelated data."""
UUID_RE: Final = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def luhn_valid(digits: str | bytes) -> bool:
    """True if the decimal string passes the Luhn check (IMEI, ICCID, card numbers)."""
    raw = digits.encode() if isinstance(digits, str) else digits
    if not raw.isdigit():
        return False
    kept = raw[-1::-2]
    doubled = raw[-2::-2].translate(_LUHN_DOUBLED)
    return (sum(kept) - 48 * len(kept) + sum(doubled)) % 10 == 0


def luhn_check_digit(body: str) -> str:
    """The digit that makes ``body + digit`` Luhn-valid."""
    for d in "0123456789":
        if luhn_valid(body + d):
            return d
    raise ValueError("not a decimal string")


def keyed_hash(key: bytes, kind: str, canonical: str) -> str:
    """The truncated HMAC that stands for an identifier in findings and on disk."""
    msg = f"{kind}:{canonical}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:16]


def redact(kind: str, canonical: str) -> str:
    """A tail short enough not to identify: last 4 characters (MAC: last two octets)."""
    if kind == "email":
        return "…@" + canonical.rpartition("@")[2]
    if kind == "mac":
        return "…" + canonical[-5:]
    return "…" + canonical[-4:]


def canonicalize(kind: str, value: str, home_region: str | None = None) -> str | None:
    """The one spelling of an identifier that its keyed hash is computed over, or None if
    ``value`` is not a plausible identifier of that kind. `home_region`: see
    `sensor.detect.phones.parse_phone`."""
    v = value.strip()
    if kind in ("imei", "imsi", "iccid"):
        digits = "".join(c for c in v if c.isdigit())
        if kind == "iccid":
            digits = "".join(c for c in v.rstrip("fF") if c.isdigit())
            return digits if 18 <= len(digits) <= 22 else None
        if kind == "imsi":
            return digits if 14 <= len(digits) <= 15 else None
        if len(digits) == 14:
            return digits + luhn_check_digit(digits)
        if len(digits) == 16:  # IMEISV: TAC + serial + software version
            return digits[:14] + luhn_check_digit(digits[:14])
        return digits if len(digits) == 15 else None
    if kind == "phone":
        return possible_e164(v, home_region)
    if kind == "mac":
        hexd = "".join(c for c in v.lower() if c in "0123456789abcdef")
        if len(hexd) != 12 or len(v) not in (12, 14, 17):
            return None
        return ":".join(hexd[i : i + 2] for i in range(0, 12, 2))
    if kind == "email":
        local, at, domain = v.lower().rpartition("@")
        return f"{local}@{domain}" if at and local and "." in domain else None
    if kind == "serial":
        return v.upper() if len(v) >= MIN_VALUE_LEN and v.isprintable() else None
    if kind == "android_id":
        low = v.lower()
        return low if 8 <= len(low) <= 16 and all(c in _HEX_CHARS for c in low) else None
    if kind == "ad_id":
        low = v.lower()
        return low if UUID_RE.fullmatch(low.encode()) else None
    return None
