"""The configured identifiers (the install's and each device's own), each expanded once into
all its wire forms for the scanner's automaton."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from sensor.detect.checks import MIN_VALUE_LEN, canonicalize, keyed_hash, redact
from sensor.detect.forms import Ident, Variant, wire_forms
from sensor.model import VALUE_KINDS, IdentifierKind

LEARNABLE_KINDS: Final[frozenset[str]] = frozenset(VALUE_KINDS)
"""Kinds that `KnownIdentifiers` accepts (everything but ``contacts``)."""


class KnownIdentifiers:
    """A set of identifier values with all their precomputed wire forms.

    Values are canonicalised on the way in (`canonicalize`); invalid or too-short ones are
    refused and counted in `rejected`. Each value may belong to a device (``owner``).
    """

    def __init__(self, key: bytes, home_region: str | None = None) -> None:
        if not key:
            raise ValueError("the keyed-hash key must not be empty")
        self.key: Final = key
        self.home_region: Final = home_region.upper() if home_region else None
        """The home country national numbers belong to; None: unknown (`phones.parse_phone`)."""
        self.rejected = 0
        """Values refused by `add` (not an identifier of that kind, or too short)."""
        self._items: OrderedDict[tuple[str, str, str | None], list[tuple[bytes, Variant]]] = (
            OrderedDict()
        )
        self._owners: dict[tuple[str, str], list[str | None]] = {}
        """(kind, canonical) -> the owners it is present for."""

    @classmethod
    def from_mapping(
        cls,
        values: Mapping[str, Iterable[str]],
        *,
        key: bytes,
        home_region: str | None = None,
        devices: Mapping[str, Mapping[str, Iterable[str]]] | None = None,
    ) -> KnownIdentifiers:
        """Build from ``{kind: [values]}`` (the install's own) and
        ``{device: {kind: [values]}}``."""
        known = cls(key, home_region)
        for kind, vals in values.items():
            for v in vals:
                known.add(kind, v)
        for owner, per_kind in (devices or {}).items():
            for kind, vals in per_kind.items():
                for v in vals:
                    known.add(kind, v, owner=owner)
        return known

    def add(self, kind: str, value: str, owner: str | None = None) -> bool:
        """Add one value; False if it was refused or already present."""
        if kind not in LEARNABLE_KINDS:
            raise ValueError(f"unknown identifier kind {kind!r}")
        canonical = canonicalize(kind, value, self.home_region)
        if canonical is None or len(canonical) < MIN_VALUE_LEN:
            self.rejected += 1
            return False
        slot = (kind, canonical, owner)
        if slot in self._items:
            self._items.move_to_end(slot)
            return False
        ident = Ident(
            kind,  # type: ignore[arg-type]
            canonical,
            redact(kind, canonical),
            keyed_hash(self.key, kind, canonical),
            owner,
        )
        self._items[slot] = wire_forms(ident, self.home_region)
        self._owners.setdefault((kind, canonical), []).append(owner)
        return True

    def has_canonical(self, kind: str, canonical: str) -> bool:
        """True if the (already canonical) value is present, for any owner."""
        return (kind, canonical) in self._owners

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        if not (isinstance(item, tuple) and len(item) == 2):
            return False
        kind, value = item
        if not (isinstance(kind, str) and isinstance(value, str)):
            return False
        canonical = canonicalize(kind, value, self.home_region)
        return canonical is not None and (kind, canonical) in self._owners

    def hashes(self) -> list[tuple[IdentifierKind, str]]:
        """(kind, keyed hash) of every value, oldest first: what may be written to disk."""
        out: list[tuple[IdentifierKind, str]] = []
        for variants in self._items.values():
            if variants:
                ident = variants[0][1].ident
                out.append((ident.kind, ident.keyed_hash))
        return out

    def patterns(self) -> Iterator[tuple[bytes, Variant]]:
        """Every (lower-cased pattern, variant) pair; for the scanner's automaton."""
        for variants in self._items.values():
            yield from variants
