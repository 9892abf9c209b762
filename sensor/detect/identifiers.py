"""Find device and subscriber identifiers in bytes a LAN device sends.

Two detectors share one Aho-Corasick pass over the data:

* **Known identifiers** (configured per install or per device, or learned from earlier plaintext
  sightings): every value is expanded once into all the forms it may take on the wire (plain
  and formatted, ASCII hex, base64 at the three alignments, percent-encoding, MD5/SHA-1/SHA-256
  in hex and base64) and all forms of all values are searched together with one Aho-Corasick
  automaton over the ASCII-lowercased data. Case-sensitive forms (base64) are confirmed against
  the original bytes; short plain forms must stand on token boundaries.
* **Unknown identifiers** by structure: IMEI (Luhn), IMSI (MCC), ICCID (89…, Luhn), MAC
  addresses, email addresses, phone numbers (``phonenumbers``), keyed Android IDs, advertising
  IDs and serial numbers, and contact-book uploads (several phone numbers in one message). The
  expensive checks run only at cheap anchors: long digit runs found by a literal search over a
  translated copy of the data, phone-number starts and key words found by the same automaton,
  and ``@`` signs.

Identifiers are our users' secrets: a `Finding` never carries one in full, only its kind, how it
was encoded, where it was, a redacted tail and a keyed hash (HMAC-SHA256 with the per-install key,
truncated) that lets later stages count and correlate without knowing the value.

Not found, by design or not yet: salted or nested encodings (base64 of hex, a hash of a hash);
IMEIs written with separators or as MEID hex; a bare IMEI with no key whose first two digits are
not a GSMA reporting body; an IMSI with no key outside the home operators listed here; a phone
number written as bare digits with no key, except inside a contact upload (NANP ``555-0100``
shapes only where the home region is +1); addresses at uncommon top-level domains, unless
configured.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import re
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import ahocorasick_rs
import phonenumbers

from sensor.detect import digest_tokens

Kind: TypeAlias = Literal[
    "imei",
    "imsi",
    "iccid",
    "phone",
    "mac",
    "serial",
    "email",
    "android_id",
    "ad_id",
    "contacts",
]
KINDS: Final[tuple[Kind, ...]] = (
    "imei",
    "imsi",
    "iccid",
    "phone",
    "mac",
    "serial",
    "email",
    "android_id",
    "ad_id",
    "contacts",
)

Encoding: TypeAlias = Literal[
    "plain",
    "hex",
    "hex_upper",
    "base64",
    "base64url",
    "url",
    "md5",
    "sha1",
    "sha256",
    "md5_base64",
    "sha1_base64",
    "sha256_base64",
]
ENCODINGS: Final[tuple[Encoding, ...]] = (
    "plain",
    "hex",
    "hex_upper",
    "base64",
    "base64url",
    "url",
    "md5",
    "sha1",
    "sha256",
    "md5_base64",
    "sha1_base64",
    "sha256_base64",
)
"""How an identifier appeared.

``plain``: as text, in any of the identifier's usual spellings (e.g. a phone number in E.164,
national or digits-only form, a MAC with ``:``, ``-`` or no separator). ``hex`` / ``hex_upper``:
ASCII hex of such a spelling (when the hex has no letters it is reported as ``hex``).
``base64`` / ``base64url``: standard or URL-safe base64 of a spelling, anywhere inside a longer
base64 blob (when both alphabets give the same text it is reported as ``base64``). ``url``:
percent-encoded (only when that differs from the plain spelling). ``md5`` / ``sha1`` /
``sha256``: hex digest of a spelling, either case. ``*_base64``: base64 (either alphabet, with or
without padding) of the raw digest.
"""

Location: TypeAlias = Literal["url", "header", "cookie", "body", "dns", "payload"]

LEARNABLE_KINDS: Final[frozenset[str]] = frozenset(
    {"imei", "imsi", "iccid", "phone", "mac", "serial", "email", "android_id", "ad_id"}
)
"""Kinds that `KnownIdentifiers` accepts (everything but ``contacts``)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One identifier seen in one scanned part. Never holds the identifier itself."""

    kind: Kind
    encoding: Encoding
    location: Location
    """Where the scanned bytes came from, as the caller said."""
    known: bool
    """True when a configured or learned identifier matched; False for a structural match."""
    redacted: str
    """A short, non-identifying tail, e.g. ``"…2345"``; ``"…@example.com"`` for an email,
    ``"12 numbers"`` for a contact upload."""
    keyed_hash: str
    """First 16 hex digits of HMAC-SHA256(install key, ``kind:canonical value``); the same
    identifier gives the same hash in every encoding and every message."""
    offset: int
    """Byte offset of the match in the scanned data."""
    length: int
    """Length of the match in bytes."""
    count: int = 1
    """Distinct phone numbers, for ``contacts``; 1 otherwise."""
    owner: str | None = None
    """The device (as configured, e.g. its MAC) a known identifier belongs to, if any."""


# --- small pure helpers ------------------------------------------------------------------------


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


UNKNOWN_REGION: Final = "ZZ"
"""libphonenumber's "unknown region": with no home country configured nothing is assumed, so
only numbers written with their country code (+CC) are numbers, and no IMSI prefix is home."""


def redact(kind: str, canonical: str) -> str:
    """A tail short enough not to identify: last 4 characters (MAC: last two octets)."""
    if kind == "email":
        return "…@" + canonical.rpartition("@")[2]
    if kind == "mac":
        return "…" + canonical[-5:]
    return "…" + canonical[-4:]


def canonicalize(kind: str, value: str, home_region: str = UNKNOWN_REGION) -> str | None:
    """The one spelling of an identifier that its keyed hash is computed over, or None if
    ``value`` is not a plausible identifier of that kind."""
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
        try:
            num = phonenumbers.parse(v, home_region)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_possible_number(num):
            return None
        return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    if kind == "mac":
        hexd = "".join(c for c in v.lower() if c in "0123456789abcdef")
        if len(hexd) != 12 or len(v) not in (12, 14, 17):
            return None
        return ":".join(hexd[i : i + 2] for i in range(0, 12, 2))
    if kind == "email":
        local, at, domain = v.lower().rpartition("@")
        return f"{local}@{domain}" if at and local and "." in domain else None
    if kind == "serial":
        return v.upper() if len(v) >= _MIN_VALUE_LEN and v.isprintable() else None
    if kind == "android_id":
        low = v.lower()
        return low if 8 <= len(low) <= 16 and all(c in _HEX_CHARS for c in low) else None
    if kind == "ad_id":
        low = v.lower()
        return low if _UUID_RE.fullmatch(low.encode()) else None
    return None


# --- tables ------------------------------------------------------------------------------------

_LUHN_DOUBLED: Final = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))
"""Maps an ASCII digit to the digit sum of its double (Luhn)."""
_HEX_CHARS: Final = frozenset("0123456789abcdef")
_DFA_MAX_PATTERNS: Final = 8000
"""Up to this many patterns (some 240 identifiers) the automaton is a DFA (about 35 MB)."""
_COMPILE_DUTY: Final = 0.05
"""At most this share of the process's CPU time goes to compiling learned identifiers'
automaton (a budget refilled at this rate, in seconds per CPU second)."""
_DIGEST_ENCODINGS: Final = frozenset(
    {"md5", "sha1", "sha256", "md5_base64", "sha1_base64", "sha256_base64"}
)
_QUIET_RATE: Final = 0.01
"""Compile seconds earned per second of wall time besides the CPU share: a quiet sensor still
compiles what it learned (a full 512-value rebuild over its burst within about 15 s)."""
_COMPILE_BURST: Final = 0.05
"""Compile time (seconds) that may be spent at once after a quiet spell: a few values learned
now and then are searched for from the next scan on."""
_COMPILE_CHECK: Final = 0.005
"""Seconds between looks at a spent compile budget (reading the CPU clock costs a system
call, about 2 µs here, too much for every scanned part)."""
_MIN_VALUE_LEN: Final = 6
"""Shorter configured values are refused: they would match all over unrelated data."""
_MIN_ENCODED_LEN: Final = 8
"""Encoded forms shorter than this (e.g. a base64 sliver) are not searched."""
_B_DIGITS: Final = frozenset(b"0123456789")
_B_ALNUM: Final = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyz")
_B_HEX: Final = frozenset(b"0123456789abcdef")
_B_EMAIL_LOCAL: Final = _B_ALNUM | frozenset(b"._%+-")

# Mobile country codes (ITU-T E.212) that exist; an IMSI must start with one.
_MCC: Final = frozenset(
    """
    001 202 204 206 208 212 213 214 216 218 219 220 221 222 225 226 228 230 231 232 234 235 238
    240 242 244 246 247 248 250 255 257 259 260 262 266 268 270 272 274 276 278 280 282 283 284
    286 288 290 292 293 294 295 297 302 308 310 311 312 313 314 315 316 330 334 338 340 342 344
    346 348 350 352 354 356 358 360 362 363 364 365 366 368 370 372 374 376 400 401 402 404 405
    406 410 412 413 414 415 416 417 418 419 420 421 422 424 425 426 427 428 429 430 431 432 434
    436 437 438 440 441 450 452 454 455 456 457 460 461 466 467 470 472 502 505 510 514 515 520
    525 528 530 536 537 539 540 541 542 544 545 546 547 548 549 550 551 552 553 555 602 603 604
    605 606 607 608 609 610 611 612 613 614 615 616 617 618 619 620 621 622 623 624 625 626 627
    628 629 630 631 632 633 634 635 636 637 638 639 640 641 642 643 645 646 647 648 649 650 651
    652 653 654 655 657 658 659 702 704 706 708 710 712 714 716 722 724 730 732 734 736 738 740
    744 746 748 750 901
    """.split()  # noqa: SIM905 -- a block of codes reads better than 240 quoted strings
)

# Home-network MCC+MNC prefixes of the big operators in some regions: a bare 15-digit token that
# starts with one is taken for an IMSI even without an "imsi" key nearby.
_HOME_IMSI_PREFIXES: Final[Mapping[str, tuple[str, ...]]] = {
    "ID": (
        "51000",
        "51001",
        "51007",
        "51008",
        "51009",
        "51010",
        "51011",
        "51021",
        "51028",
        "51089",
    ),
    "GB": ("23410", "23415", "23420", "23430", "23431", "23432", "23433", "23434", "23486"),
    "DE": ("26201", "26202", "26203", "26207", "26208", "26209"),
    "FR": ("20801", "20810", "20815", "20820", "20888"),
    "NL": ("20404", "20408", "20416", "20420"),
    "ES": ("21401", "21403", "21404", "21407"),
    "IT": ("22201", "22210", "22250", "22288"),
    "AU": ("50501", "50502", "50503"),
    "SG": ("52501", "52503", "52505"),
    "MY": ("50212", "50213", "50216", "50218", "50219"),
    "US": ("310260", "310410", "311480", "310120", "312530", "310150"),
}

# GSMA Reporting Body Identifiers: the first two digits of a real IMEI's TAC. A bare 15-digit
# Luhn-valid token is only taken for an IMEI if it starts with one (keyed ones need not).
_IMEI_RBI: Final = frozenset(b"01 10 30 33 35 44 45 49 50 51 52 53 54 86 91 98 99".split())

# Key words that give a nearby value its meaning. Found by the same automaton as the known
# identifiers; short ones must start a word.
_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "imei": ("imei", "meid", "deviceid", "device_id", "device-id"),
    "imsi": ("imsi", "subscriberid", "subscriber_id", "subscriber-id"),
    "iccid": ("iccid", "simserial", "sim_serial", "sim-serial"),
    "phone": ("phone", "msisdn", "mobile", "tel", "cell", "whatsapp"),
    "mac": (
        "mac",
        "macaddr",
        "mac_addr",
        "macaddress",
        "mac_address",
        "mac-address",
        "wifimac",
        "wifi_mac",
        "wlan_mac",
        "bssid",
        "hwaddr",
    ),
    "android_id": ("android_id", "androidid", "android-id", "ssaid"),
    "ad_id": (
        "adid",
        "ad_id",
        "ad-id",
        "advertisingid",
        "advertising_id",
        "advertising-id",
        "idfa",
        "gaid",
        "aaid",
        "oaid",
        "ifa",
    ),
    "serial": ("serial", "serialno", "serial_no", "serialnumber", "serial_number"),
    # Context only: bare national numbers in a message with one of these count as contacts.
    "contacts": ("contact", "phonebook", "addressbook", "address_book"),
}
_WORD_KEYS: Final = frozenset({"mac", "tel", "ifa", "cell", "adid", "gaid", "aaid", "oaid"})
"""Key words short or common enough to occur inside other words (``hotel``, ``adidas``, base64
text): they count only as whole words (no letter or digit on either side)."""
_KEY_SUFFIXES: Final = (b"s", b"number", b"num", b"no", b"book", b"list", b"_")

# What may stand between a key word and its value: an optional suffix word, quotes, vCard
# parameters (";TYPE=CELL"), then ':' '=' or '>'.
_GAP: Final = re.compile(
    rb"(?:[_\-. ]?(?:number|num|no|nr|id|address|addr|value|[0-9]))?"
    rb"(?:;[a-z0-9=,\-]{1,24}){0,3}"
    rb"[\"'\\]{0,3}\]?\s{0,3}[:=>]?\s{0,3}[\[(]?\s{0,2}[\"'\\]{0,3}"
)
_GAP_MAX: Final = 24

_PHONE_CAND: Final = re.compile(rb"[+(]?[0-9][0-9 ().\-]{5,24}[0-9]")
_PHONE_SEPS: Final = b" \t\r\n\"'=>,;[&"
"""Bytes after which a national-prefix ``0`` may start a phone number. Not ``:`` (times are
full of ``:0``); a number right after a key such as ``tel:`` is found through the key."""
_DATE_LIKE: Final = re.compile(rb"[(]?[0-9]{4}[-.][0-9]{1,2}[-.][0-9]{1,2}(?![0-9])")
_UUID_RE: Final = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX16: Final = re.compile(rb"[0-9a-f]{16}")
_HEX12: Final = re.compile(rb"[0-9a-f]{12}")
_SERIAL: Final = re.compile(rb"[0-9a-z][0-9a-z\-]{5,31}")
_EMAIL_DOMAIN: Final = re.compile(rb"[a-z0-9](?:[a-z0-9\-]{0,62}\.)+[a-z]{2,24}(?![a-z0-9\-])")
_EMAIL_LOCAL_REV: Final = re.compile(rb"[a-z0-9._%+\-]{1,64}")
_EMAIL_TLDS: Final = frozenset(
    {r.lower().encode() for r in phonenumbers.SUPPORTED_REGIONS}
    | {b"uk", b"eu", b"su", b"ac"}
    | set(
        b"com net org info biz edu gov mil int mobi name pro asia tel travel jobs aero coop io co "
        b"app dev ai me tv xyz online site tech store shop cloud email live blog club top "
        b"icu vip fun space website page".split()
    )
)
"""Top-level domains an address found by structure may end in: country codes and the common
generic ones. Rarer TLDs are missed (a configured address is still found); in exchange, random
binary that happens to read ``x@y.zq`` is not reported, nor is ``icon@2x.png``."""

# Translations that let bytes.find / literal regexes stand in for character classes.
_DIGIT_SHAPES: Final = bytes(
    ord("d") if chr(i).isdigit() and i < 128 else (i if chr(i) in " -.()" else ord("_"))
    for i in range(256)
)
_RUN15: Final = re.compile(rb"ddddddddddddddd+")  # a literal prefix: searched like bytes.find
_NANP_SHAPES: Final = (b"ddd-ddd-dddd", b"ddd.ddd.dddd", b"ddd ddd dddd")
_MAC_SHAPES_TBL: Final = bytes(
    ord("h") if i in _B_HEX else (ord(":") if i in (ord(":"), ord("-")) else ord("_"))
    for i in range(256)
)
_MAC_SHAPE: Final = b"hh:hh:hh:hh:hh:hh"
_MAC_REJECT: Final = frozenset({"00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"})


# --- known identifiers -------------------------------------------------------------------------

_Boundary: TypeAlias = Literal[0, 1, 2, 3]
"""0: none; 1: no digit on either side; 2: no letter or digit on either side; 3: (emails) no
local-part character before."""
_SHORT_PLAIN: Final = 12
"""Plain spellings shorter than this must stand on token boundaries: a 10-digit national number
could otherwise match inside any longer number. Longer ones match anywhere, so a value packed
between binary bytes (protobuf tags are often letters or digits) is still found."""


@dataclass(frozen=True, slots=True)
class _Ident:
    kind: Kind
    canonical: str
    redacted: str
    keyed_hash: str
    owner: str | None


@dataclass(frozen=True, slots=True)
class _Variant:
    ident: _Ident
    encoding: Encoding
    exact: bytes | None
    """Original-case bytes that must match (base64); None when case does not matter."""
    boundary: _Boundary


@dataclass(frozen=True, slots=True)
class _Key:
    cls: str
    whole_word: bool


@dataclass(frozen=True, slots=True)
class _PhoneStart:
    skip: int


_Entry: TypeAlias = _Variant | _Key | _PhoneStart


def _spellings(kind: str, canonical: str, home_region: str) -> tuple[list[str], list[str]]:
    """(plain spellings to search for, spellings an app might hash) of a canonical value."""
    if kind == "imei":
        return [canonical, canonical[:14]], [canonical, canonical[:14]]
    if kind == "phone":
        num = phonenumbers.parse(canonical, home_region)
        e164 = canonical
        intl = e164[1:]
        nsn = phonenumbers.national_significant_number(num)
        national = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.NATIONAL)
        national_digits = "".join(c for c in national if c.isdigit())
        formatted = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        plain = [e164, intl, "00" + intl, nsn, national_digits, national, formatted]
        return _unique(plain), _unique([e164, intl, national_digits, nsn])
    if kind == "mac":
        bare = canonical.replace(":", "")
        forms = [canonical, canonical.replace(":", "-"), bare]
        forms += [f.upper() for f in forms]
        return forms, forms
    if kind == "email":
        return [canonical], [canonical]
    if kind in ("serial", "android_id", "ad_id"):
        return _unique([canonical, canonical.lower(), canonical.upper()]), _unique(
            [canonical, canonical.lower(), canonical.upper()]
        )
    return [canonical], [canonical]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _b64_inner(raw: bytes, align: int, urlsafe: bool) -> bytes:
    """The part of base64(prefix + raw + suffix) that depends on ``raw`` alone, for a prefix of
    ``align`` bytes (mod 3): what any blob with ``raw`` at such an offset contains."""
    enc = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(b"\0" * align + raw)
    start = -(-8 * align // 6)
    end = 8 * (align + len(raw)) // 6
    return enc[start:end]


def _variants(ident: _Ident, home_region: str) -> list[tuple[bytes, _Variant]]:
    plain, hashed = _spellings(ident.kind, ident.canonical, home_region)
    out: list[tuple[bytes, _Variant]] = []

    def add(pattern: bytes, enc: Encoding, exact: bool = False, boundary: _Boundary = 0) -> None:
        if len(pattern) >= _MIN_ENCODED_LEN or (enc == "plain" and len(pattern) >= 6):
            out.append(
                (pattern.lower(), _Variant(ident, enc, pattern if exact else None, boundary))
            )

    for form in plain:
        raw = form.encode()
        boundary: _Boundary = 0
        if ident.kind == "email":
            boundary = 3
        elif len(form) < _SHORT_PLAIN:
            boundary = 1 if form.isdigit() else 2
        add(raw, "plain", boundary=boundary)
        add(raw.hex().encode(), "hex")
        for quoted in {urllib.parse.quote(form, safe=""), urllib.parse.quote_plus(form, safe="")}:
            if quoted != form:
                add(quoted.encode(), "url", boundary=boundary)
        for align in range(3):
            std = _b64_inner(raw, align, urlsafe=False)
            url = _b64_inner(raw, align, urlsafe=True)
            add(std, "base64", exact=True)
            if url != std:
                add(url, "base64url", exact=True)
    for form in hashed:
        raw = form.encode()
        for name, enc_b64 in (
            ("md5", "md5_base64"),
            ("sha1", "sha1_base64"),
            ("sha256", "sha256_base64"),
        ):
            digest = hashlib.new(name, raw).digest()
            add(digest.hex().encode(), name)  # type: ignore[arg-type]
            add(base64.b64encode(digest).rstrip(b"="), enc_b64, exact=True)  # type: ignore[arg-type]
            add(base64.urlsafe_b64encode(digest).rstrip(b"="), enc_b64, exact=True)  # type: ignore[arg-type]
    return out


class KnownIdentifiers:
    """A set of identifier values with all their precomputed wire forms.

    Values are canonicalised on the way in (`canonicalize`); invalid or too-short ones are
    refused and counted in `rejected`. Each value may belong to a device (``owner``).
    """

    def __init__(self, key: bytes, home_region: str = UNKNOWN_REGION) -> None:
        if not key:
            raise ValueError("the keyed-hash key must not be empty")
        self.key: Final = key
        self.home_region: Final = home_region.upper()
        self.rejected = 0
        """Values refused by `add` (not an identifier of that kind, or too short)."""
        self._items: OrderedDict[tuple[str, str, str | None], list[tuple[bytes, _Variant]]] = (
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
        home_region: str = UNKNOWN_REGION,
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
        if canonical is None or len(canonical) < _MIN_VALUE_LEN:
            self.rejected += 1
            return False
        slot = (kind, canonical, owner)
        if slot in self._items:
            self._items.move_to_end(slot)
            return False
        ident = _Ident(
            kind,  # type: ignore[arg-type]
            canonical,
            redact(kind, canonical),
            keyed_hash(self.key, kind, canonical),
            owner,
        )
        self._items[slot] = _variants(ident, self.home_region)
        self._owners.setdefault((kind, canonical), []).append(owner)
        return True

    def discard_oldest(self) -> None:
        """Forget the least recently added (or re-added) value."""
        if self._items:
            (kind, canonical, owner), _ = self._items.popitem(last=False)
            owners = self._owners[(kind, canonical)]
            owners.remove(owner)
            if not owners:
                del self._owners[(kind, canonical)]

    def has_canonical(self, kind: str, canonical: str) -> bool:
        """True if the (already canonical) value is present, for any owner."""
        return (kind, canonical) in self._owners

    def touch(self, kind: str, canonical: str) -> None:
        """Mark a value as recently seen (it is dropped last by `discard_oldest`)."""
        for owner in self._owners.get((kind, canonical), ()):
            self._items.move_to_end((kind, canonical, owner))

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

    def hashes(self) -> list[tuple[Kind, str]]:
        """(kind, keyed hash) of every value, oldest first: what may be written to disk."""
        out: list[tuple[Kind, str]] = []
        for variants in self._items.values():
            if variants:
                ident = variants[0][1].ident
                out.append((ident.kind, ident.keyed_hash))
        return out

    def patterns(self) -> Iterator[tuple[bytes, _Variant]]:
        """Every (lower-cased pattern, variant) pair; for the scanner's automaton."""
        for variants in self._items.values():
            yield from variants


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

    def __init__(self, key: bytes, home_region: str, capacity: int) -> None:
        self.key: Final = key
        self.home_region: Final = home_region
        self.capacity = capacity
        self._order: OrderedDict[_Slot, _Ident] = OrderedDict()
        """Every value, least recently seen first."""
        self._by_owner: dict[str | None, OrderedDict[_Slot, None]] = {}
        self._sized: dict[int, dict[str | None, None]] = {}
        """Owners by how many values they hold, so the biggest is found at once."""
        self._biggest = 0
        self._owners: dict[tuple[str, str], list[str | None]] = {}
        self._hashed: dict[tuple[str, str], str] = {}
        """(kind, keyed hash) -> canonical value, for `touch_hash`."""
        self._variants: dict[_Slot, list[tuple[bytes, _Variant]]] = {}
        """Wire forms of the values compiled so far."""
        self.automaton: _Automaton | None = None
        """Every compiled value's forms but its digests."""
        self.digests: dict[bytes, list[_Variant]] = {}
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
        return len(self._order) - len(self._variants)

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
        ident = self._order[slot] = _Ident(
            kind,  # type: ignore[arg-type]
            canonical,
            redact(kind, canonical),
            hashed or keyed_hash(self.key, kind, canonical),
            owner,
        )
        self._hashed[(kind, ident.keyed_hash)] = canonical
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
        ident = self._order.pop(slot)
        kind, canonical, _ = slot
        owners = self._owners[(kind, canonical)]
        owners.remove(owner)
        if not owners:
            del self._owners[(kind, canonical)]
            del self._hashed[(kind, ident.keyed_hash)]
        if self._variants.pop(slot, None) is None:
            self.shed["unsearched"] += 1
        else:
            self.shed["evicted"] += 1
            self.dirty = True

    def hashes(self) -> list[tuple[Kind, str]]:
        """(kind, keyed hash) of every value, least recently seen first."""
        return [(i.kind, i.keyed_hash) for i in self._order.values()]

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
        variants = self._variants
        for slot, ident in self._order.items():
            if slot not in variants:
                variants[slot] = _variants(ident, self.home_region)
        digests: dict[bytes, list[_Variant]] = {}
        searched: list[tuple[bytes, _Variant]] = []
        for forms in variants.values():
            for pattern, v in forms:
                if v.encoding in _DIGEST_ENCODINGS:
                    digests.setdefault(v.exact or pattern, []).append(v)
                else:
                    searched.append((pattern, v))
        self.automaton = _Automaton((searched,)) if searched else None
        self.digests = digests
        self.dirty = False
        took = time.perf_counter() - t0
        self._budget -= took
        # Time spent compiling earns no budget.
        self._budget_at, self._budget_cpu = time.monotonic(), time.process_time()
        self.compiles += 1
        self.compile_seconds += took

    def digest_tokens(self, data: bytes, folded: bytes) -> Iterator[tuple[_Variant, int, int]]:
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


# --- the scanner -------------------------------------------------------------------------------


class _Automaton:
    """One Aho-Corasick automaton over every pattern: known-identifier forms, key words and
    phone-number starts. Several entries may share one (lower-cased) pattern.

    ``ahocorasick_rs.BytesAhoCorasick`` searches bytes as they are; the pyahocorasick wheels
    take str keys only (its bytes mode is a build option), and scanning latin-1-decoded text
    with it measured at a third of the speed."""

    __slots__ = ("ac", "entries")

    def __init__(self, groups: Iterable[Iterable[tuple[bytes, _Entry]]]) -> None:
        index: dict[bytes, dict[_Entry, None]] = {}
        for group in groups:
            for pattern, entry in group:
                index.setdefault(pattern, {})[entry] = None
        self.entries: list[tuple[_Entry, ...]] = [tuple(e) for e in index.values()]
        # A DFA scans about twice as fast as the default NFA but its size grows quickly.
        impl = ahocorasick_rs.Implementation.DFA if len(index) <= _DFA_MAX_PATTERNS else None
        self.ac = ahocorasick_rs.BytesAhoCorasick(list(index), implementation=impl)


def _fixed_patterns() -> list[tuple[bytes, _Entry]]:
    out: list[tuple[bytes, _Entry]] = []
    for cls, words in _KEYS.items():
        for w in words:
            out.append((w.encode(), _Key(cls, w in _WORD_KEYS)))
    for d in b"0123456789":
        if d != ord("0"):  # no country code starts with 0; "+07:00" is a time zone
            out.append((bytes((ord("+"), d)), _PhoneStart(0)))
        out.append((bytes((ord("("), d)), _PhoneStart(0)))
        for sep in _PHONE_SEPS:
            out.append((bytes((sep, ord("0"), d)), _PhoneStart(1)))
    return out


@dataclass(slots=True)
class _Hit:
    """A structural match before it becomes a Finding; keeps the value for learning."""

    kind: Kind
    canonical: str
    offset: int
    length: int
    weak: bool = False
    """A phone number written as bare digits (no ``+``, no separators) with no key before it:
    it may as well be an order number, so it is not reported alone and counts towards a contact
    upload only in a message that mentions phones or contacts."""


class Scanner:
    """Scans bytes for known and structural identifiers. Not thread-safe.

    ``contacts_min`` distinct phone numbers in one scanned part make one ``contacts`` finding
    instead of one finding per number. With ``auto_learn`` every structural plaintext finding
    (other than a contact-book number) is remembered, so its encoded and hashed forms are caught
    from then on; at most ``max_learned`` values are kept, least recently seen dropped first.
    """

    def __init__(
        self,
        known: KnownIdentifiers,
        *,
        contacts_min: int = 3,
        max_learned: int = 512,
        auto_learn: bool = False,
    ) -> None:
        self._known = known
        self._learned = LearnedIdentifiers(known.key, known.home_region, max_learned)
        self._key = known.key
        self._region = known.home_region
        self._contacts_min = contacts_min
        self._auto_learn = auto_learn
        self._fixed = _fixed_patterns()
        cc = phonenumbers.country_code_for_region(self._region)
        self._nanp = cc == 1
        self._imsi_home = _HOME_IMSI_PREFIXES.get(self._region, ())
        meta = phonenumbers.PhoneMetadata.metadata_for_region(self._region)
        general = meta.general_desc if meta is not None else None
        lengths = general.possible_length if general is not None else None
        self._nsn_lengths = frozenset(lengths or range(7, 16))
        prefix = meta.national_prefix if meta is not None else None
        self._national_prefix = (prefix or "").encode()
        self._automaton: _Automaton | None = None

    # -- learning --

    def learn(self, finding: Finding, raw_value: str | bytes, owner: str | None = None) -> bool:
        """Remember the identifier behind ``finding``; True if it is new.

        ``raw_value`` is the matched text (``data[offset:offset + length]``); it must hash to the
        finding's keyed hash, so a caller cannot teach the scanner a value it did not see.
        """
        if finding.kind not in LEARNABLE_KINDS:
            return False
        text = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        canonical = canonicalize(finding.kind, text, self._region)
        if (
            canonical is None
            or keyed_hash(self._key, finding.kind, canonical) != finding.keyed_hash
        ):
            return False
        return self._remember(finding.kind, canonical, owner, finding.keyed_hash)

    def _remember(
        self, kind: str, canonical: str, owner: str | None, hashed: str | None = None
    ) -> bool:
        if self._known.has_canonical(kind, canonical):
            return False
        if self._learned.has_canonical(kind, canonical):
            self._learned.touch(kind, canonical)
            return False
        return self._learned.add(kind, canonical, owner, hashed)

    def export_learned(self) -> list[tuple[Kind, str]]:
        """(kind, keyed hash) of the learned identifiers; the values stay in memory only."""
        return self._learned.hashes()

    @property
    def learned_count(self) -> int:
        return len(self._learned)

    @property
    def learned(self) -> LearnedIdentifiers:
        """The learned identifiers (their counters: `LearnedIdentifiers.stats`)."""
        return self._learned

    def rebuild(self) -> None:
        """Compile the automata now instead of at the next scan (learned values too, whatever
        the compile budget)."""
        self._automaton = _Automaton((self._fixed, self._known.patterns()))
        if self._learned.dirty:
            self._learned.compile()

    # -- scanning --

    def scan(self, data: bytes, location: Location) -> list[Finding]:
        """All identifiers in ``data``, ordered by offset."""
        if self._automaton is None:
            self._automaton = _Automaton((self._fixed, self._known.patterns()))
        learned = self._learned
        if learned.dirty and learned.compile_due():
            learned.compile()
        folded = data.lower()
        n = len(folded)
        known: list[Finding] = []
        keys: list[tuple[int, str]] = []  # (end offset, key class)
        phone_starts: list[int] = []
        known_numbers: set[str] = set()
        for auto in (self._automaton, learned.automaton):
            if auto is None:
                continue
            entries = auto.entries
            for idx, start, end in auto.ac.find_matches_as_indexes(folded, overlapping=True):
                for entry in entries[idx]:
                    if type(entry) is _Variant:
                        f = self._known_match(entry, data, folded, start, end, location)
                        if f is not None:
                            known.append(f)
                            if f.kind == "phone" and f.encoding in ("plain", "url"):
                                known_numbers.add(entry.ident.canonical)
                    elif type(entry) is _Key:
                        if entry.whole_word and (
                            (start > 0 and folded[start - 1] in _B_ALNUM)
                            or (end < n and folded[end] in _B_ALNUM)
                        ):
                            continue
                        keys.append((end, entry.cls))
                    elif type(entry) is _PhoneStart:
                        phone_starts.append(start + entry.skip)
        if learned.digests:
            for v, start, end in learned.digest_tokens(data, folded):
                f = self._known_match(v, data, folded, start, end, location)
                if f is not None:
                    known.append(f)
        if n > 1 and folded[0] == 48 and folded[1] in _B_DIGITS:
            phone_starts.insert(0, 0)
        if known:
            known = _drop_contained(known)

        hits: list[_Hit] = []
        keyed_phones: set[int] = set()
        if keys:
            keys.sort()
            self._keyed_values(folded, keys, hits, keyed_phones)
            phone_starts.extend(keyed_phones)
        shapes = folded.translate(_DIGIT_SHAPES)
        self._digit_runs(folded, shapes, keys, hits)
        if self._nanp:
            for shape in _NANP_SHAPES:
                pos = shapes.find(shape)
                while pos >= 0:
                    if pos == 0 or folded[pos - 1] not in _B_ALNUM:
                        phone_starts.append(pos)
                    pos = shapes.find(shape, pos + 1)
        phones: list[_Hit] = []
        phone_context = False
        if phone_starts:
            phone_context = any(
                cls in ("phone", "contacts") and _word_end(folded, end) for end, cls in keys
            )
            self._phones(
                data, folded, sorted(set(phone_starts)), keyed_phones, phone_context, phones
            )
        if 64 in folded:
            self._emails(folded, hits)
        if 58 in folded or 45 in folded:  # ":" or "-"
            self._macs(folded, hits)
        findings = known
        if hits or phones:
            self._add_structural(findings, hits, phones, known_numbers, phone_context, location)
        if len(findings) > 1:
            findings.sort(key=_offset)
            # One finding per identifier and encoding: repeats add nothing but noise.
            seen: set[tuple[str, str, str]] = set()
            unique: list[Finding] = []
            for f in findings:
                k = (f.kind, f.encoding, f.keyed_hash)
                if k not in seen:
                    seen.add(k)
                    unique.append(f)
            findings = unique
        return findings

    def _add_structural(
        self,
        findings: list[Finding],
        hits: list[_Hit],
        phones: list[_Hit],
        known_numbers: set[str],
        phone_context: bool,
        location: Location,
    ) -> None:
        """Append structural findings not already covered by a known one; several phone
        numbers make one contact-upload finding."""
        known_spans = [
            (f.kind, f.offset, f.offset + f.length) for f in findings if f.encoding == "plain"
        ]

        def shadowed(h: _Hit) -> bool:
            e = h.offset + h.length
            return any(k == h.kind and s < e and h.offset < ke for k, s, ke in known_spans)

        reported = [h for h in hits if not shadowed(h)]
        counted = [h for h in phones if not h.weak]
        if phone_context or len({h.canonical for h in counted}) >= self._contacts_min - 1:
            # In a message about phones, or next to other numbers written as such, bare
            # digits are phone numbers too.
            counted = phones
        numbers = {h.canonical for h in counted} | known_numbers
        if counted and len(numbers) >= self._contacts_min:
            first = min(h.offset for h in counted)
            last = max(h.offset + h.length for h in counted)
            findings.append(
                Finding(
                    "contacts",
                    "plain",
                    location,
                    False,
                    f"{len(numbers)} numbers",
                    keyed_hash(self._key, "contacts", ",".join(sorted(numbers))),
                    first,
                    last - first,
                    len(numbers),
                )
            )
        else:
            reported += [h for h in phones if not h.weak and not shadowed(h)]
        for h in reported:
            f = self._finding(h, location)
            findings.append(f)
            if self._auto_learn:
                self._remember(h.kind, h.canonical, None, f.keyed_hash)

    def scan_parts(self, parts: Iterable[tuple[Location, bytes]]) -> list[Finding]:
        """Scan several parts of one message (e.g. from `sensor.detect.extract`); a finding
        repeated in another part with the same kind, encoding, location and hash is dropped."""
        seen: set[tuple[str, str, str, str]] = set()
        out: list[Finding] = []
        for location, data in parts:
            for f in self.scan(data, location):
                k = (f.kind, f.encoding, f.location, f.keyed_hash)
                if k not in seen:
                    seen.add(k)
                    out.append(f)
        return out

    # -- pieces of scan --

    def _finding(self, h: _Hit, location: Location) -> Finding:
        return Finding(
            h.kind,
            "plain",
            location,
            False,
            redact(h.kind, h.canonical),
            keyed_hash(self._key, h.kind, h.canonical),
            h.offset,
            h.length,
        )

    @staticmethod
    def _known_match(
        v: _Variant, data: bytes, folded: bytes, start: int, end: int, location: Location
    ) -> Finding | None:
        if v.exact is not None and data[start:end] != v.exact:
            return None
        if v.boundary == 3:
            if start > 0 and folded[start - 1] in _B_EMAIL_LOCAL:
                return None
        elif v.boundary:
            cls = _B_DIGITS if v.boundary == 1 else _B_ALNUM
            if start > 0 and folded[start] in cls and folded[start - 1] in cls:
                return None
            if end < len(folded) and folded[end - 1] in cls and folded[end] in cls:
                return None
        enc = v.encoding
        if enc == "hex":
            raw = data[start:end]
            if raw.isupper():
                enc = "hex_upper"
        ident = v.ident
        return Finding(
            ident.kind,
            enc,
            location,
            True,
            ident.redacted,
            ident.keyed_hash,
            start,
            end - start,
            1,
            ident.owner,
        )

    @staticmethod
    def _keys_before(folded: bytes, keys: list[tuple[int, str]], pos: int) -> frozenset[str]:
        """The classes of the key words ending just before ``pos`` (within a short gap); more
        than one when keys overlap (``sim_serial`` is an ICCID key and a serial key)."""
        i = bisect.bisect_right(keys, pos, key=_first)
        while i > 0:
            i -= 1
            end, _ = keys[i]
            if pos - end > _GAP_MAX:
                break
            if _GAP.fullmatch(folded, end, pos):
                first = bisect.bisect_left(keys, end, key=_first)
                return frozenset(cls for _, cls in keys[first : i + 1])
        return _NO_KEYS

    def _keyed_values(
        self,
        folded: bytes,
        keys: list[tuple[int, str]],
        hits: list[_Hit],
        phone_starts: set[int],
    ) -> None:
        n = len(folded)
        for end, cls in keys:
            if cls in ("imei", "imsi", "iccid", "contacts"):
                continue  # digit runs look back for these keys; "contacts" is context only
            gap = _GAP.match(folded, end)
            pos = gap.end() if gap else end
            if cls == "phone":
                if (pos < n and folded[pos] in _B_DIGITS) or folded[pos : pos + 1] in (b"+", b"("):
                    phone_starts.add(pos)
                continue
            if cls in ("android_id", "ad_id"):
                m = _UUID_RE.match(folded, pos)
                if m and _bounded(folded, m.start(), m.end(), _B_ALNUM):
                    value = m.group().decode()
                    if value.strip("0-"):
                        hits.append(_Hit("ad_id", value, m.start(), 36))
                    continue
                if cls == "android_id":
                    m = _HEX16.match(folded, pos)
                    if m and _bounded(folded, m.start(), m.end(), _B_ALNUM):
                        value = m.group().decode()
                        if value.strip("0") and value.strip("f"):
                            hits.append(_Hit("android_id", value, m.start(), 16))
                continue
            if cls == "mac":
                m = _HEX12.match(folded, pos)
                if m and _bounded(folded, m.start(), m.end(), _B_ALNUM):
                    canonical = canonicalize("mac", m.group().decode())
                    if canonical and canonical not in _MAC_REJECT:
                        hits.append(_Hit("mac", canonical, m.start(), 12))
                continue
            if cls == "serial":
                m = _SERIAL.match(folded, pos)
                if m and _bounded(folded, m.start(), m.end(), _B_ALNUM):
                    raw = m.group()
                    if any(c in _B_DIGITS for c in raw) and not raw.isdigit() and len(set(raw)) > 2:
                        hits.append(_Hit("serial", raw.decode().upper(), m.start(), len(raw)))

    def _digit_runs(
        self, folded: bytes, shapes: bytes, keys: list[tuple[int, str]], hits: list[_Hit]
    ) -> None:
        # Each match is a whole run of 15 or more digits (greedy, and a run cannot start
        # inside an earlier one), so no digit borders it.
        for m in _RUN15.finditer(shapes):
            s, e = m.span()
            length = e - s
            if length == 15:
                if s > 1 and folded[s - 1] == 46 and folded[s - 2] in _B_DIGITS:
                    continue  # the fraction of a decimal number
                run = folded[s:e]
                near = self._keys_before(folded, keys, s) if keys else _NO_KEYS
                if "imsi" in near:
                    if run[:3].decode() in _MCC:
                        hits.append(_Hit("imsi", run.decode(), s, 15))
                    continue
                token = _standalone(folded, s, e)
                if ("imei" in near or (token and run[:2] in _IMEI_RBI)) and luhn_valid(run):
                    hits.append(_Hit("imei", run.decode(), s, 15))
                elif token and self._imsi_home and run.decode().startswith(self._imsi_home):
                    hits.append(_Hit("imsi", run.decode(), s, 15))
            elif 19 <= length <= 20 and folded.startswith(b"89", s):
                run = folded[s:e]
                keyed = bool(keys) and "iccid" in self._keys_before(folded, keys, s)
                if keyed or (_standalone(folded, s, e) and luhn_valid(run)):
                    hits.append(_Hit("iccid", run.decode(), s, length))

    def _phones(
        self,
        data: bytes,
        folded: bytes,
        starts: list[int],
        keyed: set[int],
        context: bool,
        out: list[_Hit],
    ) -> None:
        """Phone numbers at the candidate starts. Candidates that are bare digits with no key
        (order numbers look the same) are only checked when they could matter: in a message
        about phones (``context``) or next to numbers written as such."""
        covered = -1
        seen_spans: set[tuple[int, int]] = set()
        bare: list[tuple[int, int]] = []
        for pos in starts:
            if pos < covered:
                continue
            m = _PHONE_CAND.match(folded, pos)
            if m is None:
                continue
            s, e = m.span()
            if e < len(folded) and 97 <= folded[e] <= 122:
                continue  # the digits run on into a word: a token such as "0247688926d8c3"
            if (s, e) in seen_spans:
                continue
            seen_spans.add((s, e))
            cand = m.group()
            if pos not in keyed and cand.isdigit():
                bare.append((s, e))
                continue
            if not self._phone_plausible(cand):
                continue
            covered = max(covered, self._match_numbers(data, s, e, pos in keyed, out))
        if bare and (context or len({h.canonical for h in out}) >= self._contacts_min - 1):
            for s, e in bare:
                # Not already inside a number found above (candidates may overlap).
                if self._phone_plausible(folded[s:e]) and not any(
                    h.offset <= s < h.offset + h.length for h in out
                ):
                    self._match_numbers(data, s, e, False, out)

    def _match_numbers(self, data: bytes, s: int, e: int, keyed: bool, out: list[_Hit]) -> int:
        """Run the ``phonenumbers`` matcher over one candidate; the end of the last number."""
        window = data[s:e].decode("latin-1")
        last = -1
        for pm in phonenumbers.PhoneNumberMatcher(
            window, self._region, leniency=phonenumbers.Leniency.VALID
        ):
            e164 = phonenumbers.format_number(pm.number, phonenumbers.PhoneNumberFormat.E164)
            weak = not keyed and pm.raw_string.isdigit()
            out.append(_Hit("phone", e164, s + pm.start, pm.end - pm.start, weak))
            last = s + pm.end
        if last < 0 and keyed and window.isdigit():
            # The matcher wants a national number written with its trunk prefix; next to a
            # phone key, bare national digits ("msisdn": "2079460123") count too.
            e164_or_none = self._valid_number(window)
            if e164_or_none is not None:
                out.append(_Hit("phone", e164_or_none, s, e - s))
                last = e
        return last

    def _valid_number(self, text: str) -> str | None:
        try:
            num = phonenumbers.parse(text, self._region)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_valid_number(num):
            return None
        return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)

    def _phone_plausible(self, cand: bytes) -> bool:
        """Cheap length and prefix checks before the costly ``phonenumbers`` matcher."""
        if _DATE_LIKE.match(cand):
            return False
        digits = cand.translate(None, b" ().-+")
        nd = len(digits)
        if nd < 7 or digits.startswith(b"000"):
            return False
        if len(cand) - nd > (cand[0] == 43):
            return nd <= 64  # formatted: maybe several numbers in a row; let the matcher split
        if cand[0] == 43:  # "+": country code and number
            return 8 <= nd <= 15
        if digits.startswith(b"00"):  # common international prefix
            return 9 <= nd <= 17
        np = self._national_prefix
        if np and digits.startswith(np):
            return nd - len(np) in self._nsn_lengths
        return nd in self._nsn_lengths or 10 <= nd <= 15

    @staticmethod
    def _emails(folded: bytes, hits: list[_Hit]) -> None:
        at = folded.find(b"@")
        while at > 0:
            m = _EMAIL_DOMAIN.match(folded, at + 1)
            if m is not None:
                window = folded[max(0, at - 64) : at][::-1]
                lm = _EMAIL_LOCAL_REV.match(window)
                if lm is not None:
                    local = lm.group()[::-1].lstrip(b".")
                    domain = m.group()
                    tld = domain.rpartition(b".")[2]
                    if local and tld in _EMAIL_TLDS:
                        start = at - len(local)
                        value = (local + b"@" + domain).decode()
                        hits.append(_Hit("email", value, start, m.end() - start))
            at = folded.find(b"@", at + 1)

    @staticmethod
    def _macs(folded: bytes, hits: list[_Hit]) -> None:
        shapes = folded.translate(_MAC_SHAPES_TBL)  # hex digits -> "h", ":" and "-" -> ":"
        n = len(folded)
        pos = shapes.find(_MAC_SHAPE)
        while pos >= 0:
            end = pos + 17
            if (pos == 0 or shapes[pos - 1] == 95) and (end == n or shapes[end] == 95):
                text = folded[pos:end]
                sep = text[2:3]
                if text.count(sep) == 5:  # one separator throughout
                    canonical = text.decode().replace("-", ":")
                    if canonical not in _MAC_REJECT and not canonical.startswith(
                        ("01:00:5e", "33:33")
                    ):
                        hits.append(_Hit("mac", canonical, pos, 17))
            pos = shapes.find(_MAC_SHAPE, pos + 1)


def _word_end(folded: bytes, end: int) -> bool:
    """True if a key word ending at ``end`` is not the start of a longer word (``telp…`` in
    base64 text), plural and ``…number``/``…book`` forms allowed."""
    if end >= len(folded) or folded[end] not in _B_ALNUM:
        return True
    for suffix in _KEY_SUFFIXES:
        if folded.startswith(suffix, end):
            after = end + len(suffix)
            if after >= len(folded) or folded[after] not in _B_ALNUM:
                return True
    return False


_NO_KEYS: Final[frozenset[str]] = frozenset()


def _offset(f: Finding) -> int:
    return f.offset


def _first(item: tuple[int, str]) -> int:
    return item[0]


def _bounded(folded: bytes, start: int, end: int, cls: frozenset[int]) -> bool:
    return (start == 0 or folded[start - 1] not in cls) and (
        end == len(folded) or folded[end] not in cls
    )


def _standalone(folded: bytes, start: int, end: int) -> bool:
    """A whole token: no letter or digit next to it, not the fraction of a decimal number
    (``1.353…``) nor followed by one. A comma is a separator (CSV), not a decimal mark."""
    if start > 0:
        prev = folded[start - 1]
        if prev in _B_ALNUM:
            return False
        if prev == 46 and start > 1 and folded[start - 2] in _B_DIGITS:
            return False
    if end < len(folded):
        nxt = folded[end]
        if nxt in _B_ALNUM:
            return False
        if nxt == 46 and end + 1 < len(folded) and folded[end + 1] in _B_DIGITS:
            return False
    return True


def _drop_contained(found: list[Finding]) -> list[Finding]:
    """Drop a known match that lies inside a longer match of the same identifier (a 14-digit
    IMEI inside the 15-digit one, digits-only phone inside E.164) and exact duplicates."""
    if len(found) == 1:
        return found
    found.sort(key=lambda f: (f.offset, -f.length))
    out: list[Finding] = []
    for f in found:
        end = f.offset + f.length
        if any(
            g.keyed_hash == f.keyed_hash
            and g.offset <= f.offset
            and end <= g.offset + g.length
            and (g.length > f.length or g.encoding == f.encoding)
            for g in out
        ):
            continue
        out.append(f)
    return out
