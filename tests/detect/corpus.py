"""A labelled corpus for the identifier detectors: leaking messages and benign decoys.

Every value is generated: IMEIs with valid Luhn digits, phone numbers from ranges reserved for
drama and documentation (Ofcom 020 7946 0xxx and 0113…0161 496 0xxx, ACMA 0491 570 006 to 159,
NANP 555-0100 to 0199, ARCEP 01 99 00 xx xx), emails at example.com/.org/.net, and MACs,
IMSIs, ICCIDs, serials and device IDs drawn from a seeded RNG.

* `known_samples`: each configured identifier in every encoding at every location it can take.
* `unknown_samples`: identifiers the scanner was not told about (IMEIs in many contexts,
  contact-book uploads, and one or more of each other kind).
* `decoy_samples`: benign traffic full of look-alikes that must produce no finding.

`evaluate` scores a scanner against samples; the tests and ``bench.scanner_bench`` share it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import random
import urllib.parse
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sensor.detect.extract import dns_name_parts
from sensor.detect.identifiers import (
    Finding,
    KnownIdentifiers,
    Location,
    Scanner,
    luhn_check_digit,
    luhn_valid,
)
from sensor.model import HttpRequest

HOME_REGION = "GB"
KEY = b"phonehome-corpus-key"
LOCATIONS: tuple[Location, ...] = ("url", "header", "cookie", "body", "payload", "dns")
KNOWN_KINDS = ("imei", "imsi", "iccid", "phone", "mac", "serial", "email", "android_id", "ad_id")

_GB_DRAMA = (
    "020 7946",
    "0113 496",
    "0114 496",
    "0116 496",
    "0117 496",
    "0118 496",
    "0121 496",
    "0131 496",
    "0141 496",
    "0151 496",
    "0161 496",
)
_NANP_AREAS = (202, 212, 213, 305, 312, 415, 617, 718, 206, 303, 404, 503)
_TACS = ("35", "86", "01", "99")
_DOMAINS = ("example.com", "example.org", "example.net")
_NEUTRAL_KEYS = ("d", "uid", "p1", "x", "val", "cid", "data", "u", "v2", "k")
_WORDS_TEXT = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua screen_view purchase level_up tutorial_begin session_start "
    "banner click impression reward interstitial video complete open close"
)
_WORDS = tuple(_WORDS_TEXT.split())


@dataclass(frozen=True, slots=True)
class Expected:
    kind: str
    known: bool
    encodings: frozenset[str]
    """Acceptable encodings (e.g. hex of digits is both ``hex`` and ``hex_upper``)."""
    encoding: str
    """The encoding the sample was built with; the label used for scoring."""


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    group: str
    """``known``, ``unknown`` or ``decoy``."""
    location: Location
    data: bytes
    expected: tuple[Expected, ...] = ()


@dataclass(frozen=True, slots=True)
class Corpus:
    known_values: dict[str, list[str]]
    device_values: dict[str, dict[str, list[str]]]
    samples: list[Sample]


# --- value generators ------------------------------------------------------------------------


def fake_imei(rng: random.Random) -> str:
    body = rng.choice(_TACS) + "".join(rng.choice("0123456789") for _ in range(12))
    return body + luhn_check_digit(body)


def fake_imsi(rng: random.Random, home: bool = True) -> str:
    prefix = rng.choice(("23415", "23410", "23420", "23430")) if home else "310260"
    return prefix + "".join(rng.choice("0123456789") for _ in range(15 - len(prefix)))


def fake_iccid(rng: random.Random) -> str:
    body = "8944" + "".join(rng.choice("0123456789") for _ in range(14))
    return body + luhn_check_digit(body)


def fake_phone(rng: random.Random) -> tuple[str, str]:
    """(E.164, a spelling as an app might send it) of a fictional number."""
    pick = rng.random()
    if pick < 0.5:
        area = rng.choice(_GB_DRAMA)
        local = f"0{rng.randrange(1000):03d}"
        national = f"{area} {local}"
        e164 = "+44" + (area + local).replace(" ", "")[1:]
        spelling = rng.choice((national, e164, "+44 " + national[1:], national.replace(" ", "")))
    elif pick < 0.7:
        n = rng.randrange(6, 160)
        e164 = f"+61491570{n:03d}"
        spelling = rng.choice((e164, f"+61 491 570 {n:03d}"))
    elif pick < 0.9:
        npa = rng.choice(_NANP_AREAS)
        n = rng.randrange(100, 200)
        e164 = f"+1{npa}5550{n:03d}"
        spelling = rng.choice((e164, f"+1 {npa}-555-0{n:03d}", f"+1 ({npa}) 555-0{n:03d}"))
    else:
        a, b = rng.randrange(100), rng.randrange(100)
        e164 = f"+3319900{a:02d}{b:02d}"
        spelling = rng.choice((e164, f"+33 1 99 00 {a:02d} {b:02d}"))
    return e164, spelling


def fake_mac(rng: random.Random) -> str:
    octets = [rng.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{o:02x}" for o in octets)


def fake_email(rng: random.Random) -> str:
    user = rng.choice(("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"))
    return f"{user}.{rng.randrange(10_000)}@{rng.choice(_DOMAINS)}"


def fake_serial(rng: random.Random) -> str:
    alphabet = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
    return (
        rng.choice("RFZ")
        + "".join(rng.choice(alphabet) for _ in range(10))
        + str(rng.randrange(10))
    )


def fake_android_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(64):016x}"


def fake_uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def device_values(rng: random.Random, extra: bool = False) -> dict[str, list[str]]:
    """One device's identifiers. An ``extra`` device (benchmark padding) gets phone numbers from
    the ACMA fictional fixed-line ranges, which the unknown samples never use."""
    e164, _ = fake_phone(rng)
    if extra:
        return {
            "imei": [fake_imei(rng)],
            "imsi": [fake_imsi(rng)],
            "iccid": [fake_iccid(rng)],
            "phone": [f"+6125550{rng.randrange(10_000):04d}"],
            "mac": [fake_mac(rng)],
            "serial": [fake_serial(rng)],
            "email": [fake_email(rng).replace("@", ".dev@")],
            "android_id": [fake_android_id(rng)],
            "ad_id": [fake_uuid(rng)],
        }
    return {
        "imei": [fake_imei(rng)],
        "imsi": [fake_imsi(rng)],
        "iccid": [fake_iccid(rng)],
        "phone": ["020 7946 0" + f"{rng.randrange(1000):03d}", e164],
        "mac": [fake_mac(rng)],
        "serial": [fake_serial(rng)],
        "email": [fake_email(rng)],
        "android_id": [fake_android_id(rng)],
        "ad_id": [fake_uuid(rng)],
    }


# --- wrapping an encoded value into a message at a location ----------------------------------


def _noise_words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def wrap(rng: random.Random, location: Location, key: str, value: str) -> bytes:
    """A message at ``location`` that carries ``value`` under ``key`` among benign fields."""
    ts = rng.randrange(1_600_000_000, 1_800_000_000)
    if location == "url":
        q = [("app", "com.example.game"), ("v", "4.12.0"), (key, value), ("t", str(ts))]
        rng.shuffle(q)
        return ("/v2/collect?" + "&".join(f"{k}={v}" for k, v in q)).encode()
    if location == "header":
        lines = [
            "host: api.example.net",
            "user-agent: Dalvik/2.1.0 (Linux; U; Android 14; Pixel 7 Build/UQ1A.240105.004)",
            f"x-{key}: {value}",
            f"x-request-id: {fake_uuid(rng)}",
            "accept-encoding: gzip",
        ]
        rng.shuffle(lines)
        return "\r\n".join(lines).encode()
    if location == "cookie":
        return f"sid={rng.getrandbits(128):032x}; {key}={value}; _ts={ts}".encode()
    if location == "body":
        doc = {
            "event": rng.choice(_WORDS),
            "ts": ts * 1000 + rng.randrange(1000),
            key: value,
            "params": {"level": rng.randrange(100), "text": _noise_words(rng, 6)},
            "request_id": fake_uuid(rng),
        }
        return json.dumps(doc).encode()
    if location == "payload":
        return (
            rng.randbytes(rng.randrange(8, 64))
            + b"\x12"
            + bytes([len(value) & 0x7F])
            + value.encode()
            + rng.randbytes(rng.randrange(8, 64))
        )
    # dns: the value as (part of) a query name
    labels = [value[i : i + 60] for i in range(0, len(value), 60)]
    return dns_name_parts(".".join([*labels, "t", "example", "net"]))


# --- known identifiers in every encoding ------------------------------------------------------


def _spellings_for_plain(kind: str, value: str) -> list[str]:
    if kind == "mac":
        return [value, value.upper(), value.replace(":", "-"), value.replace(":", "").upper()]
    if kind in ("ad_id",):
        return [value, value.upper()]
    return [value]


def _hash_spellings(kind: str, value: str) -> list[str]:
    if kind == "mac":
        return [value, value.upper(), value.replace(":", "")]
    if kind == "ad_id":
        return [value, value.upper()]
    return [value]


def _b64_embedded(
    rng: random.Random, spelling: str, align: int, urlsafe: bool
) -> tuple[str, frozenset[str]]:
    """base64 of a JSON blob holding ``spelling`` at byte offset ≡ ``align`` (mod 3)."""
    while True:
        prefix = '{"n":' + str(rng.randrange(10**6)) + ',"id":"'
        if len(prefix.encode()) % 3 == align:
            break
    blob = (prefix + spelling + '","z":' + str(rng.randrange(99)) + "}").encode()
    std = base64.b64encode(blob).decode()
    url = base64.urlsafe_b64encode(blob).decode()
    start = len(prefix) * 8 // 6
    end = -(-(len(prefix) + len(spelling)) * 8 // 6)
    same = std[start:end] == url[start:end]
    if urlsafe:
        return url, frozenset({"base64url", "base64"} if same else {"base64url"})
    return std, frozenset({"base64"})


def encoded_forms(
    rng: random.Random, kind: str, value: str, home_phone_national: str | None = None
) -> list[tuple[str, str, frozenset[str]]]:
    """(encoding label, text on the wire, acceptable encodings) for one identifier."""
    plain = _spellings_for_plain(kind, value)
    if kind == "phone" and home_phone_national:
        plain = [value, home_phone_national, value[1:]]
    out: list[tuple[str, str, frozenset[str]]] = []
    for s in plain:
        out.append(("plain", s, frozenset({"plain"})))
    s = rng.choice(plain)
    hx = s.encode().hex()
    out.append(("hex", hx, frozenset({"hex"})))
    upper_ok = {"hex_upper"} if hx.upper() != hx else {"hex", "hex_upper"}
    out.append(("hex_upper", hx.upper(), frozenset(upper_ok)))
    for align in range(3):
        for urlsafe in (False, True):
            text, ok = _b64_embedded(rng, rng.choice(plain), align, urlsafe)
            out.append(("base64url" if urlsafe else "base64", text, ok))
    for s in plain:
        q = urllib.parse.quote(s, safe="")
        if q != s:
            out.append(("url", q, frozenset({"url"})))
    for h in ("md5", "sha1", "sha256"):
        for s in _hash_spellings(kind, value):
            digest = hashlib.new(h, s.encode()).digest()
            hexd = digest.hex()
            out.append((h, hexd if rng.random() < 0.5 else hexd.upper(), frozenset({h})))
            b64 = base64.b64encode(digest).decode()
            if rng.random() < 0.5:
                b64 = base64.urlsafe_b64encode(digest).decode().rstrip("=")
            out.append((f"{h}_base64", b64, frozenset({f"{h}_base64"})))
    return out


def _fits_location(encoding: str, text: str, location: Location) -> bool:
    if location == "dns":
        # Query names are lower-cased and hold letters, digits and hyphens only.
        return encoding in ("plain", "hex", "md5", "sha1", "sha256") and all(
            c.isalnum() or c == "-" for c in text
        )
    return True


def known_samples(rng: random.Random, values: dict[str, list[str]]) -> list[Sample]:
    samples: list[Sample] = []
    for kind in KNOWN_KINDS:
        for value in values.get(kind, []):
            national = None
            if kind == "phone" and value.startswith("0"):  # a home-region number
                national = value
                value = "+44" + value.replace(" ", "")[1:]
            for encoding, text, ok in encoded_forms(rng, kind, value, national):
                for location in LOCATIONS:
                    if not _fits_location(encoding, text, location):
                        continue
                    data = wrap(rng, location, rng.choice(_NEUTRAL_KEYS), text)
                    samples.append(
                        Sample(
                            f"known/{kind}/{encoding}/{location}",
                            "known",
                            location,
                            data,
                            (Expected(kind, True, ok, encoding),),
                        )
                    )
    return samples


# --- unknown identifiers by structure ---------------------------------------------------------


def _imei_context(rng: random.Random, imei: str) -> tuple[Location, bytes]:
    pick = rng.randrange(8)
    if pick == 0:
        return "body", json.dumps({"imei": imei, "os": "android", "sdk": 34}).encode()
    if pick == 1:
        return "url", f"/api/reg?deviceId={imei}&lang=en".encode()
    if pick == 2:
        return "header", f"user-agent: okhttp/4.12.0\r\nx-device-imei: {imei}".encode()
    if pick == 3:
        return "body", f"model=Pixel+7&device_id={imei}&ver=14".encode()
    if pick == 4:
        return "payload", f"{rng.randrange(10**6)},{imei},{rng.choice(_WORDS)}\n".encode()
    if pick == 5:
        return "body", f"<reg><meid>{imei}</meid><v>2</v></reg>".encode()
    if pick == 6:
        return "body", json.dumps({"data": {"hw": {"IMEI1": imei, "slot": 1}}}).encode()
    return "dns", dns_name_parts(f"{imei}.p.example.net")


def _contacts_body(rng: random.Random, numbers: Sequence[str]) -> bytes:
    style = rng.randrange(4)
    names = ("Ann", "Ben", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal")
    if style == 3:
        cards = (
            f"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:{rng.choice(names)}\r\n"
            f"TEL;TYPE={rng.choice(('CELL', 'HOME', 'WORK'))}:{n}\r\nEND:VCARD"
            for n in numbers
        )
        return "\r\n".join(cards).encode()
    if style == 0:
        doc = {"contacts": [{"name": rng.choice(names), "phone": n} for n in numbers]}
        return json.dumps(doc).encode()
    if style == 1:
        return json.dumps({"book": list(numbers), "count": len(numbers)}).encode()
    return "\n".join(f"{rng.choice(names)};{n}" for n in numbers).encode()


def unknown_samples(
    rng: random.Random,
    n_imei: int = 300,
    n_contacts: int = 100,
    exclude: frozenset[str] = frozenset(),
) -> list[Sample]:
    """Structural leaks; ``exclude`` holds configured phone numbers (E.164) not to reuse."""
    out: list[Sample] = []
    plain = frozenset({"plain"})
    for i in range(n_imei):
        loc, data = _imei_context(rng, fake_imei(rng))
        out.append(
            Sample(
                f"unknown/imei/{i}",
                "unknown",
                loc,
                data,
                (Expected("imei", False, plain, "plain"),),
            )
        )
    for i in range(n_contacts):
        k = rng.randrange(3, 40)
        numbers: dict[str, str] = {}
        while len(numbers) < k:
            e164, spelling = fake_phone(rng)
            if e164 not in exclude:
                numbers[e164] = spelling
        data = _contacts_body(rng, list(numbers.values()))
        out.append(
            Sample(
                f"unknown/contacts/{i}",
                "unknown",
                "body",
                data,
                (Expected("contacts", False, plain, "plain"),),
            )
        )
    for i in range(60):
        e164, spelling = fake_phone(rng)
        while e164 in exclude:
            e164, spelling = fake_phone(rng)
        key = rng.choice(("phone", "msisdn", "tel", "mobile", "phoneNumber"))
        out.append(_unknown("phone", i, "body", json.dumps({key: spelling, "ok": True}).encode()))
    for i in range(30):
        home = i % 2 == 0
        imsi = fake_imsi(rng, home=home)
        text = f"sim={rng.randrange(2)}&imsi={imsi}" if not home or i % 4 else f"id,{imsi},x"
        out.append(_unknown("imsi", i, "url", text.encode()))
    for i in range(30):
        iccid = fake_iccid(rng)
        text = json.dumps({"sim": {"iccid": iccid}} if i % 2 else {"s": iccid})
        out.append(_unknown("iccid", i, "body", text.encode()))
    for i in range(30):
        mac = fake_mac(rng)
        mac = rng.choice((mac, mac.upper(), mac.replace(":", "-")))
        text = rng.choice((f'{{"wifi":"{mac}"}}', f"bssid={mac.replace(':', '').replace('-', '')}"))
        out.append(_unknown("mac", i, "body", text.encode()))
    for i in range(30):
        out.append(_unknown("email", i, "body", f"user={fake_email(rng)}&remember=1".encode()))
    for i in range(30):
        text = json.dumps({"android_id": fake_android_id(rng), "ver": "14"})
        out.append(_unknown("android_id", i, "body", text.encode()))
    for i in range(30):
        u = fake_uuid(rng)
        key = rng.choice(("idfa", "gaid", "advertising_id", "adid"))
        text = f"{key}={u.upper() if key == 'idfa' else u}&lat=0"
        out.append(_unknown("ad_id", i, "url", text.encode()))
    for i in range(30):
        text = json.dumps({"serial": fake_serial(rng), "model": "SM-G991B"})
        out.append(_unknown("serial", i, "body", text.encode()))
    return out


def _unknown(kind: str, i: int, location: Location, data: bytes) -> Sample:
    exp = Expected(kind, False, frozenset({"plain"}), "plain")
    return Sample(f"unknown/{kind}/{i}", "unknown", location, data, (exp,))


# --- decoys -----------------------------------------------------------------------------------


def _luhn_fail_15(rng: random.Random) -> str:
    while True:
        s = rng.choice(_TACS) + "".join(rng.choice("0123456789") for _ in range(13))
        if not luhn_valid(s):
            return s


def _card_like(rng: random.Random) -> str:
    body = rng.choice(("4", "5", "37", "6011")) + "".join(
        rng.choice("0123456789") for _ in range(14)
    )
    body = body[:15]
    return body + (luhn_check_digit(body) if rng.random() < 0.5 else str(rng.randrange(10)))


def decoy_fields(rng: random.Random) -> dict[str, object]:
    """One benign record: order numbers, timestamps, card-like and Luhn-failing numbers, UUID
    request IDs, hex tokens, versions, prices and the like."""
    ts = rng.randrange(1_500_000_000, 1_900_000_000)
    return {
        "order_id": rng.choice(
            (
                f"ORD-{rng.randrange(2020, 2026)}-{rng.randrange(10**6):06d}",
                str(rng.randrange(10**6, 10**12)),
                f"{rng.randrange(100, 999)}-{rng.randrange(10**7):07d}-{rng.randrange(10**7):07d}",
                f"{rng.randrange(10**5):09d}",
            )
        ),
        "ts": ts,
        "ts_ms": ts * 1000 + rng.randrange(1000),
        "created": (
            f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
            f"T10:{rng.randrange(60):02d}:00+07:00"
        ),
        "card_hint": _card_like(rng),
        "txn": _luhn_fail_15(rng),
        "device_id": _luhn_fail_15(rng) if rng.random() < 0.3 else fake_uuid(rng),
        "request_id": fake_uuid(rng),
        "trace": f"{rng.getrandbits(128):032x}",
        "session": f"{rng.getrandbits(64):016x}",
        "etag": f"{rng.getrandbits(160):040x}",
        "sig": hashlib.sha256(rng.randbytes(32)).hexdigest(),
        "version": rng.choice(("4.12.0", "1.2.3.4567", "120.0.6099.210", "UQ1A.240105.004")),
        "price": round(rng.random() * 1000, 2),
        "lat": round(-90 + rng.random() * 180, 12),
        "lon": round(-180 + rng.random() * 360, 15),
        "ip": f"192.0.2.{rng.randrange(256)}",
        "ipv6": f"2001:db8::{rng.randrange(65536):x}",
        "mac_hint": rng.choice(("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff")),
        "time": f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}",
        "isbn": f"978-0-{rng.randrange(10**5):05d}-{rng.randrange(100):03d}-{rng.randrange(10)}",
        "icon": "https://cdn.example.net/img/icon@2x.png",
        "tracking": f"1Z{rng.randrange(10**6):06d}AA{rng.randrange(10**8):08d}",
        "blob": base64.b64encode(rng.randbytes(rng.randrange(12, 90))).decode(),
        "count": rng.randrange(10**4),
        "ref": f"0{rng.randrange(10**10):010d}",  # zero-padded IDs can read as national numbers
        "text": _noise_words(rng, rng.randrange(3, 30)),
    }


def decoy_samples(rng: random.Random, n: int = 600) -> list[Sample]:
    out: list[Sample] = []
    for i in range(n):
        fields = decoy_fields(rng)
        loc = LOCATIONS[i % len(LOCATIONS)]
        if loc == "body":
            data = json.dumps(fields).encode()
        elif loc == "url":
            keep = rng.sample(sorted(fields), 6)
            data = ("/v1/e?" + urllib.parse.urlencode({k: fields[k] for k in keep})).encode()
        elif loc == "header":
            keep = rng.sample(sorted(fields), 5)
            data = "\r\n".join(f"x-{k}: {fields[k]}" for k in keep).encode()
        elif loc == "cookie":
            keep = rng.sample(sorted(fields), 4)
            data = "; ".join(f"{k}={fields[k]}" for k in keep).encode()
        elif loc == "payload":
            data = rng.randbytes(200) + json.dumps(fields).encode() + rng.randbytes(100)
        else:
            label = rng.choice((str(fields["session"]), str(fields["trace"]), "www", "cdn-12"))
            data = dns_name_parts(f"{label}.{fields['ts']}.example.net")
        out.append(Sample(f"decoy/{loc}/{i}", "decoy", loc, data))
    return out


# --- typical traffic for throughput ---------------------------------------------------------


def benign_request(rng: random.Random) -> HttpRequest:
    """An ordinary app request (analytics beacon, API call, form post) with no identifiers."""
    style = rng.randrange(4)
    fields = decoy_fields(rng)
    headers = [
        ("host", "api.example.net"),
        ("user-agent", "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 Chrome/120.0"),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("cookie", f"sid={fields['trace']}; _ga=GA1.2.{rng.randrange(10**9)}.{fields['ts']}"),
        ("x-request-id", str(fields["request_id"])),
    ]
    query = urllib.parse.urlencode(
        {"v": fields["version"], "t": fields["ts"], "cb": rng.randrange(10**6)}
    )
    if style == 0:
        events = [decoy_fields(rng) for _ in range(rng.randrange(1, 12))]
        body = json.dumps({"events": events}).encode()
        headers.append(("content-type", "application/json"))
    elif style == 1:
        body = urllib.parse.urlencode({k: str(v) for k, v in fields.items()}).encode()
        headers.append(("content-type", "application/x-www-form-urlencoded"))
    elif style == 2:
        events = [decoy_fields(rng) for _ in range(rng.randrange(5, 30))]
        body = gzip.compress(json.dumps(events).encode(), compresslevel=1, mtime=0)
        headers += [("content-type", "application/json"), ("content-encoding", "gzip")]
    else:
        body = b""
    return HttpRequest(
        "POST" if body else "GET",
        f"/v1/{rng.choice(_WORDS)}?{query}",
        "HTTP/1.1",
        "api.example.net",
        headers[1][1],
        tuple(headers),
        body,
        len(body),
    )


# --- leaks inside HTTP requests, for extract + scan -----------------------------------------


@dataclass(frozen=True, slots=True)
class RequestSample:
    name: str
    request: HttpRequest
    kind: str
    """The kind of the configured identifier the request leaks (``known`` is always True)."""


def _chunked(body: bytes, size: int) -> bytes:
    out = b"".join(
        f"{len(body[i : i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    )
    return out + b"0\r\n\r\n"


def _json_escape_all(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def request_samples(rng: random.Random, values: dict[str, list[str]]) -> list[RequestSample]:
    """Configured identifiers (plain spelling) inside request bodies and targets that only
    decoding reveals: gzip, deflate, chunked framing, form and percent encoding, JSON
    \\u-escapes, multipart parts (one base64 transfer-encoded), Basic credentials."""
    out: list[RequestSample] = []
    base_headers = (("host", "api.example.net"), ("user-agent", "okhttp/4.12.0"))
    for kind in KNOWN_KINDS:
        value = values[kind][0]
        doc = json.dumps({"k": value, "n": rng.randrange(1000)}).encode()
        escaped = json.dumps({"k": _json_escape_all(value)}).replace("\\\\", "\\").encode()
        boundary = f"----b{rng.getrandbits(32):08x}"
        multipart = (
            f'--{boundary}\r\ncontent-disposition: form-data; name="a"\r\n\r\nhello\r\n'
            f'--{boundary}\r\ncontent-disposition: form-data; name="f"; filename="x.json"\r\n'
            "content-type: application/json\r\ncontent-transfer-encoding: base64\r\n\r\n"
            + base64.b64encode(doc).decode()
            + f"\r\n--{boundary}--\r\n"
        ).encode()
        cases: list[tuple[str, str, tuple[tuple[str, str], ...], bytes]] = [
            (
                "gzip",
                "/up",
                (("content-type", "application/json"), ("content-encoding", "gzip")),
                gzip.compress(doc, mtime=0),
            ),
            ("deflate", "/up", (("content-encoding", "deflate"),), zlib.compress(doc)),
            ("raw-deflate", "/up", (("content-encoding", "deflate"),), _raw_deflate(doc)),
            ("chunked", "/up", (("transfer-encoding", "chunked"),), _chunked(doc, 7)),
            (
                "chunked-gzip",
                "/up",
                (("transfer-encoding", "chunked"), ("content-encoding", "gzip")),
                _chunked(gzip.compress(doc, mtime=0), 11),
            ),
            ("json-escaped", "/up", (("content-type", "application/json"),), escaped),
            (
                "multipart",
                "/up",
                (("content-type", f"multipart/form-data; boundary={boundary}"),),
                multipart,
            ),
            (
                "form",
                "/up",
                (("content-type", "application/x-www-form-urlencoded"),),
                urllib.parse.urlencode({"k": value, "q": "a b"}).encode(),
            ),
            ("query-escaped", "/c?k=" + "".join(f"%{b:02X}" for b in value.encode()), (), b""),
            (
                "basic-auth",
                "/login",
                (
                    (
                        "authorization",
                        "Basic " + base64.b64encode(f"{value}:hunter2".encode()).decode(),
                    ),
                ),
                b"",
            ),
        ]
        for name, path, headers, body in cases:
            req = HttpRequest(
                "POST" if body else "GET",
                path,
                "HTTP/1.1",
                "api.example.net",
                "okhttp/4.12.0",
                base_headers + headers,
                body,
                None if "chunked" in name else len(body),
            )
            out.append(RequestSample(f"request/{kind}/{name}", req, kind))
    return out


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


# --- building and scoring ----------------------------------------------------------------------


def build_corpus(
    seed: int = 20240601, n_imei: int = 300, n_contacts: int = 100, n_decoy: int = 600
) -> Corpus:
    rng = random.Random(seed)
    own = device_values(rng)
    other = device_values(rng)
    samples = known_samples(rng, own) + known_samples(rng, other)
    configured = frozenset(
        "+44" + v.replace(" ", "")[1:] if v.startswith("0") else v
        for values in (own, other)
        for v in values["phone"]
    )
    samples += unknown_samples(rng, n_imei, n_contacts, configured)
    samples += decoy_samples(rng, n_decoy)
    return Corpus(own, {"02:00:00:00:00:01": other}, samples)


@dataclass(slots=True)
class Tally:
    tp: int = 0
    fn: int = 0
    fp: int = 0
    misses: list[str] = field(default_factory=list)
    false: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0


def evaluate(
    scan: Callable[[bytes, Location], list[Finding]], samples: Iterable[Sample]
) -> dict[tuple[str, str, str], Tally]:
    """Tallies keyed by (``known``/``unknown``, kind, encoding). A finding that no expectation
    of its sample accounts for is a false positive, charged to its own kind and encoding."""
    tallies: dict[tuple[str, str, str], Tally] = defaultdict(Tally)
    for sample in samples:
        found = scan(sample.data, sample.location)
        used: set[int] = set()
        for exp in sample.expected:
            group = "known" if exp.known else "unknown"
            t = tallies[(group, exp.kind, exp.encoding)]
            hit = next(
                (
                    i
                    for i, f in enumerate(found)
                    if i not in used
                    and f.kind == exp.kind
                    and f.known == exp.known
                    and f.encoding in exp.encodings
                ),
                None,
            )
            if hit is None:
                t.fn += 1
                t.misses.append(sample.name)
            else:
                t.tp += 1
                used.add(hit)
        for i, f in enumerate(found):
            if i in used or any(f.kind == e.kind and f.known == e.known for e in sample.expected):
                continue  # the expected identifier again, through another view or encoding
            t = tallies[("known" if f.known else "unknown", f.kind, f.encoding)]
            t.fp += 1
            t.false.append(f"{sample.name}: {f.kind}/{f.encoding} at {f.offset}")
    return dict(tallies)


def scanner_for(corpus: Corpus, *, auto_learn: bool = False) -> Scanner:
    """A scanner configured with the corpus's own and per-device identifiers."""
    known = KnownIdentifiers.from_mapping(
        corpus.known_values, key=KEY, home_region=HOME_REGION, devices=corpus.device_values
    )
    return Scanner(known, auto_learn=auto_learn)
