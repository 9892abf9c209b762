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

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

# The parts, by what they do (the names are re-exported here, where callers import them):
# checks: check digits, the canonical spelling, the keyed hash; phones: phone numbers;
# forms: every wire form of a value and the automaton over them;
# known / learned: the configured identifiers, and those learned from plaintext.
from sensor.detect.checks import UUID_RE
from sensor.detect.checks import canonicalize as canonicalize
from sensor.detect.checks import keyed_hash as keyed_hash
from sensor.detect.checks import luhn_check_digit as luhn_check_digit
from sensor.detect.checks import luhn_valid as luhn_valid
from sensor.detect.checks import redact as redact
from sensor.detect.forms import Automaton, Entry, Key, PhoneStart, Variant
from sensor.detect.known import LEARNABLE_KINDS as LEARNABLE_KINDS
from sensor.detect.known import KnownIdentifiers as KnownIdentifiers
from sensor.detect.learned import LearnedIdentifiers as LearnedIdentifiers
from sensor.detect.phones import REGIONS, find_numbers, numbering_plan, valid_e164
from sensor.detect.phones import has_country_code as has_country_code
from sensor.model import ENCODINGS as ENCODINGS  # the vocabulary is the model's
from sensor.model import IDENTIFIER_KINDS, IdentifierKind
from sensor.model import Encoding as Encoding
from sensor.model import Location as Location

Kind: TypeAlias = IdentifierKind
KINDS: Final = IDENTIFIER_KINDS


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


# --- tables ------------------------------------------------------------------------------------

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
_HEX16: Final = re.compile(rb"[0-9a-f]{16}")
_HEX12: Final = re.compile(rb"[0-9a-f]{12}")
_SERIAL: Final = re.compile(rb"[0-9a-z][0-9a-z\-]{5,31}")
_EMAIL_DOMAIN: Final = re.compile(rb"[a-z0-9](?:[a-z0-9\-]{0,62}\.)+[a-z]{2,24}(?![a-z0-9\-])")
_EMAIL_LOCAL_REV: Final = re.compile(rb"[a-z0-9._%+\-]{1,64}")
_EMAIL_TLDS: Final = frozenset(
    {r.lower().encode() for r in REGIONS}
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


# --- the scanner -------------------------------------------------------------------------------


def _fixed_patterns() -> list[tuple[bytes, Entry]]:
    out: list[tuple[bytes, Entry]] = []
    for cls, words in _KEYS.items():
        for w in words:
            out.append((w.encode(), Key(cls, w in _WORD_KEYS)))
    for d in b"0123456789":
        if d != ord("0"):  # no country code starts with 0; "+07:00" is a time zone
            out.append((bytes((ord("+"), d)), PhoneStart(0)))
        out.append((bytes((ord("("), d)), PhoneStart(0)))
        for sep in _PHONE_SEPS:
            out.append((bytes((sep, ord("0"), d)), PhoneStart(1)))
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
        # No home country: no national number plan, no home operators.
        region = self._region
        plan = numbering_plan(region)
        self._nanp = plan.nanp
        self._imsi_home = _HOME_IMSI_PREFIXES.get(region, ()) if region is not None else ()
        self._nsn_lengths = plan.nsn_lengths
        self._national_prefix = plan.national_prefix
        self._automaton: Automaton | None = None

    @property
    def home_region(self) -> str | None:
        """The home country national numbers belong to; None: unknown (`phones.parse_phone`)."""
        return self._region

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
        self._automaton = Automaton((self._fixed, self._known.patterns()))
        if self._learned.dirty:
            self._learned.compile()

    # -- scanning --

    def scan(self, data: bytes, location: Location) -> list[Finding]:
        """All identifiers in ``data``, ordered by offset."""
        if self._automaton is None:
            self._automaton = Automaton((self._fixed, self._known.patterns()))
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
                    if type(entry) is Variant:
                        f = self._known_match(entry, data, folded, start, end, location)
                        if f is not None:
                            known.append(f)
                            if f.kind == "phone" and f.encoding in ("plain", "url"):
                                known_numbers.add(entry.ident.canonical)
                    elif type(entry) is Key:
                        if entry.whole_word and (
                            (start > 0 and folded[start - 1] in _B_ALNUM)
                            or (end < n and folded[end] in _B_ALNUM)
                        ):
                            continue
                        keys.append((end, entry.cls))
                    elif type(entry) is PhoneStart:
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
        v: Variant, data: bytes, folded: bytes, start: int, end: int, location: Location
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
                m = UUID_RE.match(folded, pos)
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
        for e164, start, end, written in find_numbers(window, self._region):
            weak = not keyed and written.isdigit()
            out.append(_Hit("phone", e164, s + start, end - start, weak))
            last = s + end
        if last < 0 and keyed and window.isdigit():
            # The matcher wants a national number written with its trunk prefix; next to a
            # phone key, bare national digits ("msisdn": "2079460123") count too.
            e164_or_none = valid_e164(window, self._region)
            if e164_or_none is not None:
                out.append(_Hit("phone", e164_or_none, s, e - s))
                last = e
        return last

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
