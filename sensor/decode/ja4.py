"""JA4, the TLS client fingerprint (FoxIO, BSD-3-Clause), of one ClientHello.

Only JA4 itself: JA4S, JA4H, JA4X and the rest of the JA4+ family are under another licence and
are not implemented. Written from the specification (FoxIO-LLC/ja4, technical_details/JA4.md):

    (t|q)(version)(d|i)(ciphers:02)(extensions:02)(alpn first+last)
    _ sha256("cipher,cipher,...", sorted)[:12]
    _ sha256("ext,ext,..." sorted, without SNI and ALPN ["_" "sigalg,sigalg,..." in order])[:12]

e.g. ``t13d1516h2_8daaf6152771_e5627efa2ab1``. GREASE values (RFC 8701) are left out of the
counts, the lists, the versions and the signature algorithms; the first ALPN name is taken as
sent, as FoxIO's own tools and ja4plus do (a GREASE name there reads "ZZ"). Values are 4-digit
lower-case hex. A pure function of the hello's fields; nothing here raises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

__all__ = ["EMPTY_HASH", "alpn_chars", "fingerprint", "version_code"]

EMPTY_HASH: Final = "000000000000"
"""What a hash part reads when its list is empty (the spec's marker, not a hash of "")."""

_EXT_SNI: Final = 0x0000
_EXT_ALPN: Final = 0x0010
_VERSIONS: Final = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}


def _grease(value: int) -> bool:
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def version_code(legacy_version: int, supported_versions: Sequence[int]) -> str:
    """The 2-character version: the highest non-GREASE supported_versions entry when the
    extension is there, else the hello's legacy_version; "00" when unknown."""
    offered = [v for v in supported_versions if not _grease(v)]
    return _VERSIONS.get(max(offered) if offered else legacy_version, "00")


def _alnum(b: int) -> bool:
    return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A


def alpn_chars(first_alpn: bytes | None) -> str:
    """First and last character of the first ALPN value ("h2", "http/1.1" -> "h1"); "00"
    without one. When either end is not an ASCII letter or digit, the first and last
    characters of the value's hex form instead (0xAB 0xCD -> "ad")."""
    if not first_alpn:
        return "00"
    first, last = first_alpn[0], first_alpn[-1]
    if _alnum(first) and _alnum(last):
        return chr(first) + chr(last)
    text = first_alpn.hex()
    return text[0] + text[-1]


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def fingerprint(
    *,
    quic: bool,
    legacy_version: int,
    supported_versions: Sequence[int],
    ciphers: Sequence[int],
    extensions: Sequence[int],
    signature_algorithms: Sequence[int],
    first_alpn: bytes | None,
) -> str:
    """The JA4 of a ClientHello from its fields as sent (GREASE included; it is dropped here).

    `extensions` are the extension types in wire order; the SNI marker is "d" when the
    server_name extension is among them, whatever it holds. `first_alpn` is the first ALPN
    protocol name as sent (a GREASE name included, as FoxIO's tools read it), None without
    the extension."""
    suites = [c for c in ciphers if not _grease(c)]
    exts = [e for e in extensions if not _grease(e)]
    sigs = [s for s in signature_algorithms if not _grease(s)]
    part_a = (
        ("q" if quic else "t")
        + version_code(legacy_version, supported_versions)
        + ("d" if _EXT_SNI in exts else "i")
        + f"{min(len(suites), 99):02d}{min(len(exts), 99):02d}"
        + alpn_chars(first_alpn)
    )
    part_b = _hash12(",".join(f"{c:04x}" for c in sorted(suites))) if suites else EMPTY_HASH
    hashed = sorted(e for e in exts if e not in (_EXT_SNI, _EXT_ALPN))
    if hashed:
        text = ",".join(f"{e:04x}" for e in hashed)
        if sigs:
            text += "_" + ",".join(f"{s:04x}" for s in sigs)
        part_c = _hash12(text)
    else:
        part_c = EMPTY_HASH
    return f"{part_a}_{part_b}_{part_c}"
