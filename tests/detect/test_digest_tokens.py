"""Learned digests found as whole tokens: the fast filter never hides a token the regular
expressions find, and tokens run together with other characters are still not found."""

from __future__ import annotations

import base64
import hashlib
import random

from sensor.detect import digest_tokens


def _reference(data: bytes, digests: dict[bytes, list[str]]) -> list[tuple[str, int, int]]:
    """The whole-token rules applied by the regular expressions alone, without the filter."""
    out = []
    folded = data.lower()
    for m in digest_tokens.HEX_TOKEN.finditer(folded):
        if m.end() - m.start() in digest_tokens.HEX_DIGEST_LENGTHS:
            out += [(v, m.start(), m.end()) for v in digests.get(m.group(), ())]
    for m in digest_tokens.B64_TOKEN.finditer(data):
        if m.end() - m.start() in digest_tokens.B64_DIGEST_LENGTHS:
            out += [(v, m.start(), m.end()) for v in digests.get(m.group(), ())]
    return out


def _digests(rng: random.Random, n: int) -> dict[bytes, list[str]]:
    out: dict[bytes, list[str]] = {}
    for i in range(n):
        raw = rng.randbytes(8)
        for name in ("md5", "sha1", "sha256"):
            d = hashlib.new(name, raw).digest()
            out.setdefault(d.hex().encode(), []).append(f"{i}:{name}")
            out.setdefault(base64.b64encode(d).rstrip(b"="), []).append(f"{i}:{name}_b64")
            out.setdefault(base64.urlsafe_b64encode(d).rstrip(b"="), []).append(f"{i}:{name}_u")
    return out


def test_the_filter_agrees_with_the_regular_expressions_on_random_data() -> None:
    rng = random.Random(19)
    digests = _digests(rng, 40)
    keys = list(digests)
    glue = [b"", b"=", b"&", b'"', b" ", b"0", b"x", b"G", b"-", b"/", b"\xff", b"==", b"\n"]
    found_any = 0
    for _ in range(3000):
        parts = []
        for _ in range(rng.randrange(1, 6)):
            if rng.random() < 0.4:
                k = rng.choice(keys)
                parts.append(k.upper() if rng.random() < 0.3 else k)
            else:
                parts.append(rng.randbytes(rng.randrange(0, 40)))
            parts.append(rng.choice(glue))
        data = b"".join(parts)
        got = list(digest_tokens.find(data, data.lower(), digests))
        assert got == _reference(data, digests), data
        found_any += bool(got)
    assert found_any > 500  # the comparison covered hits, not only misses


def test_tokens_inside_longer_runs_are_not_digests() -> None:
    d = hashlib.md5(b"35209900176148").digest()
    digests = {d.hex().encode(): ["md5"], base64.b64encode(d).rstrip(b"="): ["b64"]}
    hexd, b64d = d.hex().encode(), base64.b64encode(d).rstrip(b"=")
    assert [v for v, *_ in digest_tokens.find(b"h=" + hexd, b"h=" + hexd, digests)] == ["md5"]
    upper = b"h=" + hexd.upper() + b";"
    assert [(v, s, e) for v, s, e in digest_tokens.find(upper, upper.lower(), digests)] == [
        ("md5", 2, 34)
    ]
    for data in (b"h=a" + hexd, b"h=" + hexd + b"0", b"s=Q" + b64d, b"s=" + b64d + b"-"):
        assert list(digest_tokens.find(data, data.lower(), digests)) == [], data
    clean = b"imei=352099001761481&mac=4420823cfde6"
    assert not digest_tokens.may_hold(clean, clean.lower(), digests)
