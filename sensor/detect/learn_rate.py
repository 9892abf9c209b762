"""How many new identifiers each device may teach the learner: a token bucket per device.

Every finding of a value not learned yet asks here first, so under a flood (a host sending a
new identifier with every request) this is the hot path: one dictionary lookup and one
comparison to refuse. The bucket is kept in its "theoretical arrival time" form (GCRA), which
is the same bucket as a token count refilled at ``rate`` a second up to ``burst`` tokens,
without arithmetic for a refusal. Times are packet times, so `analyze` gives the same answer
however fast it runs.
"""

from __future__ import annotations

from typing import Final

MAX_DEVICES: Final = 4096
"""Devices whose rate is tracked; a forgotten one starts again with a full burst."""


class LearnRate:
    """Per-device token buckets: `burst` new values at once, `rate` a second after that."""

    __slots__ = ("_due", "_interval", "_slack", "max_devices")

    def __init__(self, rate: float, burst: int, max_devices: int = MAX_DEVICES) -> None:
        self._interval: Final = 1.0 / rate
        """Packet time one token takes to come back."""
        self._slack: Final = (burst - 1) * self._interval
        """How far a device's `_due` may run ahead of the packet time: a full bucket."""
        self.max_devices = max_devices
        self._due: dict[str | None, float] = {}
        """Device -> the packet time at which its bucket would be empty again if it took no
        more; least recently granted first."""

    def allow(self, device: str | None, ts: float) -> bool:
        """Take a token from the device's bucket at packet time ``ts``; False if it has none."""
        due = self._due.get(device)
        if due is not None:
            if ts < due - self._slack:
                return False  # the flood's path: no arithmetic beyond this
            del self._due[device]  # re-inserted last: most recently granted
            self._due[device] = (due if due > ts else ts) + self._interval
            return True
        due_map = self._due
        due_map[device] = ts + self._interval
        if len(due_map) > self.max_devices:
            del due_map[next(iter(due_map))]
        return True

    def __len__(self) -> int:
        return len(self._due)
