"""Finding learned identifiers' digests in scanned data by looking up whole tokens.

A learned value's MD5, SHA-1 and SHA-256 forms (hex, base64) are not searched for by the
automaton: each whole hex token of 32, 40 or 64 characters and each whole base64 token of 22,
27 or 43 (unpadded) is looked up in a dictionary of the learned digests. A digest run together
with other hex or base64 characters is therefore not found.

Most scanned parts hold no learned digest at all, and running the token regular expressions
over every part cost more than searching the learned automaton. So a part is first split into
its base64-alphabet runs, and its lower-cased copy into its hex runs, in C (`bytes.translate`
+ `bytes.split`), and the runs checked against the dictionary as a set; only when one is a
digest are the exact tokens and their offsets found with the regular expressions. Pure
functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, TypeVar

V = TypeVar("V")

HEX_TOKEN: Final = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32,64}(?![0-9a-f])")
HEX_DIGEST_LENGTHS: Final = frozenset({32, 40, 64})
B64_TOKEN: Final = re.compile(rb"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{22,43}(?![A-Za-z0-9+/_\-])")
B64_DIGEST_LENGTHS: Final = frozenset({22, 27, 43})
"""Unpadded base64 of an MD5, SHA-1, SHA-256 digest (a padding ``=`` ends the token)."""

_HEX: Final = b"0123456789abcdef"
_B64: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
_ONLY_HEX: Final = bytes(c if c in _HEX else 32 for c in range(256))
"""Maps every byte but a lower-case hex digit to a space, so `split` yields the hex runs."""
_ONLY_B64: Final = bytes(c if c in _B64 else 32 for c in range(256))
"""Maps every byte outside both base64 alphabets to a space, so `split` yields their runs."""


def may_hold(data: bytes, folded: bytes, digests: Mapping[bytes, object]) -> bool:
    """False when no whole token of ``data`` (or hex token of ``folded``, ``data``
    lower-cased) can be a key of ``digests``: a fast, exact filter for `find`. Every whole
    base64 token is a base64 run of the data; every whole hex token of ``folded`` is a hex run
    of it (lower-casing turns no other byte into a hex digit), so both sets of runs come from
    one `translate` and one `split` each, in C."""
    keys = digests.keys()
    if not keys.isdisjoint(data.translate(_ONLY_B64).split()):
        return True
    return not keys.isdisjoint(folded.translate(_ONLY_HEX).split())


def find(
    data: bytes, folded: bytes, digests: Mapping[bytes, Sequence[V]]
) -> Iterator[tuple[V, int, int]]:
    """(value, start, end) of each whole hex token of ``folded`` (``data`` lower-cased) and
    each whole base64 token of ``data`` that is a key of ``digests`` (hex keys lower-case,
    base64 keys as written), for every value under that key."""
    if not digests or not may_hold(data, folded, digests):
        return
    for m in HEX_TOKEN.finditer(folded):
        if m.end() - m.start() in HEX_DIGEST_LENGTHS:
            for v in digests.get(m.group(), ()):
                yield v, m.start(), m.end()
    for m in B64_TOKEN.finditer(data):
        if m.end() - m.start() in B64_DIGEST_LENGTHS:
            for v in digests.get(m.group(), ()):
                yield v, m.start(), m.end()
