"""The JA4 fingerprints a device has shown: a bounded set, least recently shown first.

A JA4 (`sensor.decode.ja4`) names the TLS client software: its library and how the app set it
up. A device's set changes when a new app or a new OS version starts talking, which is what the
``new_fingerprint`` alert rule reports (`sensor.alerts`). Pure functions on the device's list.
"""

from __future__ import annotations

from typing import Final

MAX_PER_DEVICE: Final = 32
"""Fingerprints kept per device; the least recently shown goes first (and may alert again
when it comes back)."""


def remember(seen: list[str], ja4: str, limit: int = MAX_PER_DEVICE) -> bool:
    """Note that a device showed `ja4`; True when it was not in `seen` (a new fingerprint).
    `seen` is kept least recently shown first and at most `limit` long."""
    if ja4 in seen:
        if seen[-1] != ja4:
            seen.remove(ja4)
            seen.append(ja4)
        return False
    seen.append(ja4)
    if len(seen) > limit:
        del seen[: len(seen) - limit]
    return True
