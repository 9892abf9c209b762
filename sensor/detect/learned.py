"""Identifiers learned from plaintext sightings: bounded per device, their automaton rebuilt
within a compile budget."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Final, TypeAlias

from sensor.detect import digest_tokens
from sensor.detect.checks import keyed_hash, redact
from sensor.detect.forms import Automaton, Ident, Variant, wire_forms
from sensor.model import IdentifierKind

_COMPILE_DUTY: Final = 0.05
"""At most this share of the process's CPU time goes to compiling learned identifiers'
automaton (a budget refilled at this rate, in seconds per CPU second)."""
_QUIET_RATE: Final = 0.01
"""Compile seconds earned per second of wall time besides the CPU share: a quiet sensor still
compiles what it learned (a full 512-value rebuild over its burst within about 15 s)."""
_COMPILE_BURST: Final = 0.05
"""Compile time (seconds) that may be spent at once after a quiet spell: a few values learned
now and then are searched for from the next scan on."""
_COMPILE_CHECK: Final = 0.005
"""Seconds between looks at a spent compile budget (reading the CPU clock costs a system
call, about 2 µs here, too much for every scanned part)."""
_DIGEST_ENCODINGS: Final = frozenset(
    {"md5", "sha1", "sha256", "md5_base64", "sha1_base64", "sha256_base64"}
)

_Slot: TypeAlias = tuple[str, str, str | None]
"""(kind, canonical value, owner) of a learned identifier."""


class LearnedIdentifiers:
    """Identifiers learned from plaintext sightings, searched for through their own automaton.

    Adding a value costs a few dictionary operations, whatever was learned before. Its wire
    forms are computed, and the automaton over all learned values rebuilt, in batches: at most
    `_COMPILE_DUTY` of CPU time (plus `_QUIET_RATE` of wall time and a burst of
    `_COMPILE_BURST`) goes to compiling, so a host
    that sends a new value with every request costs a bounded share of the loop, and the values
    learned meanwhile are searched for from the next compile on. The configured identifiers'
    automaton is never rebuilt for learning.

    At most ``capacity`` values are kept: past it, the least recently seen value of the owner
    (device) holding the most goes, so one host flooding new values pushes out its own, never
    the other devices'. Dropped values are counted in `shed`: ``evicted`` after they had been
    searched for, ``unsearched`` before (a flood outpaced the compile budget).
    """

    def __init__(self, key: bytes, home_region: str | None, capacity: int) -> None:
        self.key: Final = key
        self.home_region: Final = home_region
        self.capacity = capacity
        self._order: OrderedDict[_Slot, str] = OrderedDict()
        """Every value -> its keyed hash, least recently seen first. Its `Ident` is made
        when it is compiled: under a flood most values are dropped before that."""
        self._by_owner: dict[str | None, OrderedDict[_Slot, None]] = {}
        self._sized: dict[int, dict[str | None, None]] = {}
        """Owners by how many values they hold, so the biggest is found at once."""
        self._biggest = 0
        self._owners: dict[tuple[str, str], list[str | None]] = {}
        self._hashed: dict[tuple[str, str], str] = {}
        """(kind, keyed hash) -> canonical value, for `touch_hash`."""
        self.variants: dict[_Slot, list[tuple[bytes, Variant]]] = {}
        """Wire forms of the values compiled so far."""
        self.automaton: Automaton | None = None
        """Every compiled value's forms but its digests."""
        self.digests: dict[bytes, list[Variant]] = {}
        """Digest forms (hex: lower-case; base64: as written) -> their variants: whole tokens
        of the right length are looked up here (`digest_tokens`), which keeps about two thirds
        of the patterns out of the automaton."""
        self.dirty = False
        """Values were added or dropped since the automaton was compiled."""
        self.added = 0
        self.shed: dict[str, int] = {"evicted": 0, "unsearched": 0, "rate": 0}
        """Values dropped, by reason: ``evicted`` and ``unsearched`` (see above), ``rate``: never
        taken in, their device was over its learning rate (`refuse`)."""
        self.compiles = 0
        self.compile_seconds = 0.0
        self._budget = _COMPILE_BURST
        self._budget_at = time.monotonic()
        self._budget_cpu = time.process_time()
        self._next_check = 0.0
        """No compile before this (monotonic) time: the budget was spent."""

    def __len__(self) -> int:
        return len(self._order)

    @property
    def pending(self) -> int:
        """Values learned but not yet searched for (waiting for the next compile)."""
        return len(self._order) - len(self.variants)

    def has_canonical(self, kind: str, canonical: str) -> bool:
        return (kind, canonical) in self._owners

    def touch_hash(self, kind: str, hashed: str) -> bool:
        """Touch the value with this keyed hash; False if none is held."""
        canonical = self._hashed.get((kind, hashed))
        if canonical is None:
            return False
        self.touch(kind, canonical)
        return True

    def refuse(self, reason: str) -> None:
        """Count a value the caller did not add (e.g. its device was over its rate)."""
        self.shed[reason] = self.shed.get(reason, 0) + 1

    def touch(self, kind: str, canonical: str) -> None:
        """Mark a value as recently seen (it is dropped last)."""
        for owner in self._owners.get((kind, canonical), ()):
            slot = (kind, canonical, owner)
            self._order.move_to_end(slot)
            self._by_owner[owner].move_to_end(slot)

    def add(self, kind: str, canonical: str, owner: str | None, hashed: str | None = None) -> bool:
        """Add an already canonical value (``hashed``: its keyed hash, when the caller has it);
        False if present (then it is touched) or capacity is 0."""
        if self.capacity <= 0:
            return False
        slot = (kind, canonical, owner)
        if slot in self._order:
            self.touch(kind, canonical)
            return False
        if hashed is None:
            hashed = keyed_hash(self.key, kind, canonical)
        self._order[slot] = hashed
        self._hashed[(kind, hashed)] = canonical
        slots = self._by_owner.get(owner)
        if slots is None:
            slots = self._by_owner[owner] = OrderedDict()
        self._resize(owner, len(slots), len(slots) + 1)
        slots[slot] = None
        self._owners.setdefault((kind, canonical), []).append(owner)
        self.added += 1
        self.dirty = True
        while len(self._order) > self.capacity:
            self._drop_one()
        return True

    def _resize(self, owner: str | None, old: int, new: int) -> None:
        """Move `owner` from the owners holding `old` values to those holding `new`."""
        sized = self._sized
        if old:
            peers = sized[old]
            del peers[owner]
            if not peers:
                del sized[old]
        if new:
            sized.setdefault(new, {})[owner] = None
        if new > self._biggest:
            self._biggest = new
        while self._biggest and self._biggest not in sized:
            self._biggest -= 1

    def _drop_one(self) -> None:
        by_owner = self._by_owner
        owner = next(iter(self._sized[self._biggest]))
        slots = by_owner[owner]
        slot, _ = slots.popitem(last=False)
        self._resize(owner, len(slots) + 1, len(slots))
        if not slots:
            del by_owner[owner]
        hashed = self._order.pop(slot)
        kind, canonical, _ = slot
        owners = self._owners[(kind, canonical)]
        owners.remove(owner)
        if not owners:
            del self._owners[(kind, canonical)]
            del self._hashed[(kind, hashed)]
        if self.variants.pop(slot, None) is None:
            self.shed["unsearched"] += 1
        else:
            self.shed["evicted"] += 1
            self.dirty = True

    def hashes(self) -> list[tuple[IdentifierKind, str]]:
        """(kind, keyed hash) of every value, least recently seen first."""
        return [(kind, hashed) for (kind, _, _), hashed in self._order.items()]  # type: ignore[misc]

    def compile_due(self) -> bool:
        """True when values changed and the compile budget allows a compile now.

        The budget grows with the process's CPU time (compiling takes at most a twentieth of
        the work, however loaded the machine), and with wall time at a hundredth (a quiet
        sensor still compiles what it learned, within seconds)."""
        if not self.dirty:
            return False
        now = time.monotonic()
        if now < self._next_check:
            return False
        cpu = time.process_time()  # a system call: not on every scan
        earned = (cpu - self._budget_cpu) * _COMPILE_DUTY + (now - self._budget_at) * _QUIET_RATE
        self._budget = min(_COMPILE_BURST, self._budget + earned)
        self._budget_at, self._budget_cpu = now, cpu
        if self._budget > 0:
            return True
        self._next_check = now + _COMPILE_CHECK
        return False

    def compile(self) -> None:
        """Compute the new values' wire forms and rebuild the automaton over all of them."""
        t0 = time.perf_counter()
        variants = self.variants
        for slot, hashed in self._order.items():
            if slot not in variants:
                kind, canonical, owner = slot
                ident = Ident(kind, canonical, redact(kind, canonical), hashed, owner)  # type: ignore[arg-type]
                variants[slot] = wire_forms(ident, self.home_region)
        digests: dict[bytes, list[Variant]] = {}
        searched: list[tuple[bytes, Variant]] = []
        for forms in variants.values():
            for pattern, v in forms:
                if v.encoding in _DIGEST_ENCODINGS:
                    digests.setdefault(v.exact or pattern, []).append(v)
                else:
                    searched.append((pattern, v))
        self.automaton = Automaton((searched,)) if searched else None
        self.digests = digests
        self.dirty = False
        took = time.perf_counter() - t0
        self._budget -= took
        # Time spent compiling earns no budget.
        self._budget_at, self._budget_cpu = time.monotonic(), time.process_time()
        self.compiles += 1
        self.compile_seconds += took

    def digest_tokens(self, data: bytes, folded: bytes) -> Iterator[tuple[Variant, int, int]]:
        """(variant, start, end) of each whole hex or base64 token that is a compiled value's
        digest. A digest run together with other hex or base64 characters is not found."""
        return digest_tokens.find(data, folded, self.digests)

    def stats(self) -> dict[str, object]:
        """What does not depend on timing (the metrics have the compile figures too)."""
        return {
            "learned": self.added,
            "in_memory": len(self._order),
            "dropped": sum(self.shed.values()),
        }
