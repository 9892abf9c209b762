"""The JA4 fingerprints a device has shown: a bounded set, least recently shown first, and the
daemon's saved copy of every device's set (`<state_dir>/fingerprints.json`).

A JA4 (`sensor.decode.ja4`) names the TLS client software: its library and how the app set it
up. A device's set changes when a new app or a new OS version starts talking, which is what the
``new_fingerprint`` alert rule reports (`sensor.alerts`). The sets are kept across daemon
restarts: without them every device's fingerprints would be new again after each restart, and
its learning period would start again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sensor.model import Device

log = logging.getLogger(__name__)

MAX_PER_DEVICE: Final = 32
"""Fingerprints kept per device; the least recently shown goes first (and may alert again
when it comes back)."""
MAX_SAVED_DEVICES: Final = 1024
"""Devices whose sets are saved; past it, the ones seen longest ago are left out. 1,024 full
sets make a file of about 1.3 MB."""
STATE_NAME: Final = "fingerprints.json"
FORMAT_VERSION: Final = 1

_JA4 = re.compile(r"[a-z0-9_]{1,80}")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


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


@dataclass(slots=True)
class SavedSet:
    """One device's set as an earlier run saved it."""

    since: float
    """When the sensor began learning the device's fingerprints."""
    seen: float
    """When the device was last seen (which devices are kept when there are too many)."""
    ja4: list[str]


class SavedSets:
    """The devices' JA4 sets across daemon restarts.

    Read once when the daemon starts (`read`). A device's saved set joins its live one
    (`Device.ja4`) the first time it shows a fingerprint in this run (`adopt`): a fingerprint
    in the saved set is not new. `encode` gives the file's next content: the live sets, and the
    saved ones of devices not seen yet in this run, the `MAX_SAVED_DEVICES` most recently
    seen."""

    def __init__(self, saved: dict[str, SavedSet] | None = None) -> None:
        self.saved: dict[str, SavedSet] = dict(saved or {})
        """Sets not adopted yet, by MAC."""
        self.changed = False
        """A device showed a fingerprint new to it since the last save."""

    @classmethod
    def read(cls, path: Path) -> SavedSets:
        """The sets in `path`; none when it does not exist. A file that cannot be read or
        parsed is logged, moved aside to `<name>.bad` for its owner to look at, and the sets
        start afresh: nothing else depends on it. Entries that are not well formed are
        skipped (and counted in the log)."""
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            _set_aside(path, f"cannot be read ({exc})")
            return cls()
        rows = doc.get("devices") if isinstance(doc, dict) else None
        if not isinstance(rows, list) or doc.get("version") != FORMAT_VERSION:
            _set_aside(path, f"is not a version {FORMAT_VERSION} fingerprint file")
            return cls()
        saved: dict[str, SavedSet] = {}
        bad = 0
        for row in rows:
            entry = _entry(row)
            if entry is None:
                bad += 1
            else:
                saved[entry[0]] = entry[1]
        if bad:
            log.warning("%s: %d malformed device entries skipped", path, bad)
        newest = sorted(saved.items(), key=lambda kv: kv[1].seen, reverse=True)
        return cls(dict(newest[:MAX_SAVED_DEVICES]))

    def adopt(self, device: Device, ja4: str | None = None) -> bool:
        """Join `device`'s saved set (if any) to its live one, the saved fingerprints as less
        recently shown, and set when its learning began; once per device and run. True when
        `ja4` was in the saved set (shown before the restart: not new)."""
        saved = self.saved.pop(device.mac, None)
        if saved is None:
            device.ja4_since = device.first_seen
            return False
        live = device.ja4
        merged = [x for x in saved.ja4 if x not in live] + live
        device.ja4[:] = merged[-MAX_PER_DEVICE:]
        device.ja4_since = min(saved.since, device.first_seen)
        return ja4 is not None and ja4 in saved.ja4

    def encode(self, devices: Iterable[Device]) -> bytes:
        """What `<state_dir>/fingerprints.json` holds next (JSON; no identifier: MACs,
        times and fingerprints)."""
        rows: dict[str, SavedSet] = dict(self.saved)
        for dev in devices:
            if not dev.ja4:
                continue
            if dev.ja4_since is None:
                self.adopt(dev)
            since = dev.ja4_since if dev.ja4_since is not None else dev.first_seen
            rows[dev.mac] = SavedSet(since=since, seen=dev.last_seen, ja4=list(dev.ja4))
        newest = sorted(rows.items(), key=lambda kv: kv[1].seen, reverse=True)
        out = [
            {"mac": mac, "since": s.since, "seen": s.seen, "ja4": s.ja4}
            for mac, s in newest[:MAX_SAVED_DEVICES]
        ]
        return json.dumps({"version": FORMAT_VERSION, "devices": out}).encode()


def _entry(row: Any) -> tuple[str, SavedSet] | None:
    """(MAC, set) of one well-formed row of the file, else None."""
    if not isinstance(row, dict):
        return None
    mac, since, seen, ja4 = row.get("mac"), row.get("since"), row.get("seen"), row.get("ja4")
    if not isinstance(mac, str) or not _MAC.fullmatch(mac) or not isinstance(ja4, list):
        return None
    times = [_time(since), _time(seen)]
    if None in times or not all(isinstance(x, str) and _JA4.fullmatch(x) for x in ja4):
        return None
    unique = list(dict.fromkeys(ja4))[-MAX_PER_DEVICE:]
    return mac, SavedSet(since=times[0] or 0.0, seen=times[1] or 0.0, ja4=unique)


def _time(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _set_aside(path: Path, why: str) -> None:
    bad = path.with_name(path.name + ".bad")
    try:
        os.replace(path, bad)
        kept = f"moved to {bad}"
    except OSError as exc:
        kept = f"left in place ({exc.strerror or exc})"
    log.warning(
        "%s %s: the devices' JA4 fingerprint sets start afresh (the file is %s)",
        path,
        why,
        kept,
    )
