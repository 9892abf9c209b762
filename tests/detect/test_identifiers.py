from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import random
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.detect.identifiers import (
    ENCODINGS,
    Finding,
    KnownIdentifiers,
    Scanner,
    canonicalize,
    keyed_hash,
    luhn_check_digit,
    luhn_valid,
    redact,
)
from tests.detect import corpus as C

KEY = b"test-key"
IMEI = "353456789012348"  # Luhn-valid, generated for tests
PHONE_GB = "020 7946 0321"  # Ofcom drama range
EMAIL = "alice.test@example.com"
MAC = "02:1a:2b:3c:4d:5e"


@pytest.fixture(scope="module")
def corpus() -> C.Corpus:
    return C.build_corpus()


@pytest.fixture(scope="module")
def tallies(corpus: C.Corpus) -> dict[tuple[str, str, str], C.Tally]:
    return C.evaluate(C.scanner_for(corpus).scan, corpus.samples)


def make_scanner(region: str = "GB", **values: list[str]) -> Scanner:
    return Scanner(KnownIdentifiers.from_mapping(values, key=KEY, home_region=region))


def kinds(findings: list[Finding]) -> list[tuple[str, str, bool]]:
    return [(f.kind, f.encoding, f.known) for f in findings]


# --- helpers ------------------------------------------------------------------------------------


def test_luhn() -> None:
    assert luhn_valid(IMEI)
    assert luhn_valid(b"79927398713")
    assert not luhn_valid("353456789012345")
    assert not luhn_valid("")
    assert not luhn_valid("12a4")
    assert luhn_check_digit(IMEI[:14]) == IMEI[14]


def test_canonicalize() -> None:
    assert canonicalize("imei", IMEI[:14]) == IMEI  # check digit restored
    assert canonicalize("imei", IMEI[:14] + "07") == IMEI  # IMEISV
    assert canonicalize("imei", "12345") is None
    assert canonicalize("phone", PHONE_GB, "GB") == "+442079460321"
    assert canonicalize("phone", "0812-345-678", "ID") == "+62812345678"
    assert canonicalize("mac", "02-1A-2B-3C-4D-5E") == MAC
    assert canonicalize("mac", "021a2b3c4d5e") == MAC
    assert canonicalize("email", "Alice.Test@Example.COM") == EMAIL
    assert canonicalize("ad_id", "not-a-uuid") is None


def test_keyed_hash_and_redaction_do_not_reveal_the_value() -> None:
    h = keyed_hash(KEY, "imei", IMEI)
    assert len(h) == 16 and int(h, 16) >= 0
    assert h != keyed_hash(b"other-key", "imei", IMEI)
    assert redact("imei", IMEI) == "…2348"
    assert redact("email", EMAIL) == "…@example.com"
    assert redact("mac", MAC) == "…4d:5e"


def test_finding_is_frozen_and_slotted() -> None:
    f = Finding("imei", "plain", "body", True, "…2348", "0" * 16, 0, 15)
    assert not hasattr(f, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.kind = "imsi"  # type: ignore[misc]


def test_known_identifiers_refuse_bad_values() -> None:
    known = KnownIdentifiers(KEY, "GB")
    assert not known.add("imei", "123")
    assert not known.add("serial", "AB1")  # too short to search for safely
    assert known.add("imei", IMEI)
    assert not known.add("imei", IMEI)  # duplicate
    assert known.rejected == 2
    assert ("imei", IMEI) in known
    with pytest.raises(ValueError):
        known.add("contacts", "x")
    with pytest.raises(ValueError):
        KnownIdentifiers(b"", "GB")


# --- known identifiers ---------------------------------------------------------------------------


def test_known_recall_is_complete_for_every_encoding_and_location(
    tallies: dict[tuple[str, str, str], C.Tally],
) -> None:
    known = {k: t for k, t in tallies.items() if k[0] == "known"}
    missed = {k: t.misses[:5] for k, t in known.items() if t.fn}
    assert not missed
    covered = {(kind, enc) for _, kind, enc in known}
    for kind in C.KNOWN_KINDS:
        for enc in ENCODINGS:
            if enc == "url" and kind not in ("phone", "email", "mac"):
                continue  # percent-encoding leaves these values unchanged
            assert (kind, enc) in covered, (kind, enc)


def test_corpus_decoys_give_no_findings(corpus: C.Corpus) -> None:
    scanner = C.scanner_for(corpus)
    noisy = {}
    for sample in corpus.samples:
        if sample.group == "decoy":
            found = scanner.scan(sample.data, sample.location)
            if found:
                noisy[sample.name] = kinds(found)
    assert not noisy


def test_no_false_positives_anywhere_in_the_corpus(
    tallies: dict[tuple[str, str, str], C.Tally],
) -> None:
    false = {k: t.false[:5] for k, t in tallies.items() if t.fp}
    assert not false


def test_unknown_imei_and_contacts_meet_targets(
    tallies: dict[tuple[str, str, str], C.Tally],
) -> None:
    for kind in ("imei", "contacts"):
        t = tallies[("unknown", kind, "plain")]
        assert t.recall >= 0.99, (kind, t.misses[:5])
        assert t.precision >= 0.99, (kind, t.false[:5])


@pytest.mark.parametrize(
    "kind", ["phone", "imsi", "iccid", "mac", "email", "android_id", "ad_id", "serial"]
)
def test_unknown_other_kinds_recalled(
    tallies: dict[tuple[str, str, str], C.Tally], kind: str
) -> None:
    t = tallies[("unknown", kind, "plain")]
    assert t.tp > 0 and t.fn == 0, t.misses[:5]


@pytest.mark.parametrize("align", [0, 1, 2])
@pytest.mark.parametrize("urlsafe", [False, True])
def test_base64_at_every_alignment(align: int, urlsafe: bool) -> None:
    scanner = make_scanner(email=[EMAIL])
    blob = b"x" * align + b'{"e":"' + EMAIL.encode() + b'"}??>'
    enc = base64.urlsafe_b64encode(blob) if urlsafe else base64.b64encode(blob)
    found = scanner.scan(b"data=" + enc, "body")
    assert [f.kind for f in found] == ["email"]
    assert found[0].encoding in ({"base64url", "base64"} if urlsafe else {"base64"})
    # base64 is case-sensitive: a case-mangled blob is not a match
    assert scanner.scan(b"data=" + enc.swapcase(), "body") == []


def test_hex_case_is_reported() -> None:
    scanner = make_scanner(email=[EMAIL])
    hexed = EMAIL.encode().hex()
    assert kinds(scanner.scan(hexed.encode(), "url")) == [("email", "hex", True)]
    assert kinds(scanner.scan(hexed.upper().encode(), "url")) == [("email", "hex_upper", True)]


def test_digests_in_hex_and_base64() -> None:
    scanner = make_scanner(mac=[MAC])
    for form in (MAC, MAC.upper(), MAC.replace(":", "")):
        for algo in ("md5", "sha1", "sha256"):
            digest = hashlib.new(algo, form.encode()).digest()
            found = scanner.scan(digest.hex().upper().encode(), "header")
            assert kinds(found) == [("mac", algo, True)]
            b64 = base64.urlsafe_b64encode(digest).rstrip(b"=")
            assert kinds(scanner.scan(b"h=" + b64, "header")) == [("mac", f"{algo}_base64", True)]


def test_phone_forms_for_home_region() -> None:
    scanner = make_scanner("ID", phone=["0812-345-678"])  # libphonenumber's example number
    for text in ("+62812345678", "0812-345-678", "62812345678", "0812345678", "%2B62812345678"):
        found = scanner.scan(f"p={text}&x=1".encode(), "url")
        assert [(f.kind, f.known) for f in found] == [("phone", True)], text
        assert found[0].redacted == "…5678"


def test_mac_forms_either_case() -> None:
    scanner = make_scanner(mac=[MAC])
    for text in (MAC, MAC.upper(), MAC.replace(":", "-"), MAC.replace(":", "").upper()):
        assert kinds(scanner.scan(text.encode(), "body")) == [("mac", "plain", True)], text


def test_imei_without_check_digit_and_no_double_report() -> None:
    scanner = make_scanner(imei=[IMEI])
    found = scanner.scan(f'{{"imei":"{IMEI}"}}'.encode(), "body")
    assert kinds(found) == [("imei", "plain", True)]
    assert found[0].length == 15
    found = scanner.scan(f"id={IMEI[:14]}&x".encode(), "url")
    assert kinds(found) == [("imei", "plain", True)]


def test_short_plain_values_need_token_boundaries() -> None:
    scanner = make_scanner(serial=["AB12CD"])
    assert kinds(scanner.scan(b"sn=AB12CD;", "body")) == [("serial", "plain", True)]
    assert scanner.scan(b"token=XAB12CDZ", "body") == []
    scanner = make_scanner(phone=[PHONE_GB])
    assert scanner.scan(b"n=1202079460321999", "body") == []  # national digits inside a number


def test_owner_and_hash_are_stable_across_encodings() -> None:
    known = KnownIdentifiers.from_mapping(
        {}, key=KEY, home_region="GB", devices={"02:00:00:00:00:01": {"imei": [IMEI]}}
    )
    scanner = Scanner(known)
    plain = scanner.scan(IMEI.encode(), "body")
    hashed = scanner.scan(hashlib.sha1(IMEI.encode()).hexdigest().encode(), "body")
    assert plain[0].owner == hashed[0].owner == "02:00:00:00:00:01"
    assert plain[0].keyed_hash == hashed[0].keyed_hash == keyed_hash(KEY, "imei", IMEI)


def test_findings_never_contain_the_identifier(corpus: C.Corpus) -> None:
    scanner = C.scanner_for(corpus)
    values = [v for vals in corpus.known_values.values() for v in vals]
    for sample in corpus.samples[:400]:
        for f in scanner.scan(sample.data, sample.location):
            text = repr(f)
            assert not any(v in text or v.replace(" ", "") in text for v in values)
            assert len(f.redacted) <= 20 or f.kind == "email"


# --- structural detection ------------------------------------------------------------------------


def test_structural_imei_keyed_and_standalone() -> None:
    scanner = make_scanner()
    assert kinds(scanner.scan(f"imei={IMEI}".encode(), "url")) == [("imei", "plain", False)]
    assert kinds(scanner.scan(f"a,{IMEI},b".encode(), "payload")) == [("imei", "plain", False)]
    assert kinds(scanner.scan(f'"deviceId": "{IMEI}"'.encode(), "body")) == [
        ("imei", "plain", False)
    ]
    bad = IMEI[:14] + str((int(IMEI[14]) + 1) % 10)
    assert scanner.scan(f"imei={bad}".encode(), "url") == []  # fails Luhn
    assert scanner.scan(f"n=9{IMEI}".encode(), "url") == []  # part of a longer run
    assert scanner.scan(f"v=1.{IMEI}".encode(), "url") == []  # a decimal fraction
    assert scanner.scan(f"id=x{IMEI}".encode(), "url") == []  # inside a token


def test_structural_imsi_iccid() -> None:
    scanner = make_scanner("GB")
    assert kinds(scanner.scan(b'{"imsi": "310260123456789"}', "body")) == [("imsi", "plain", False)]
    assert scanner.scan(b'{"imsi": "999260123456789"}', "body") == []  # no such MCC
    assert kinds(scanner.scan(b"x 234150123456789 y", "body")) == [("imsi", "plain", False)]
    iccid = "894410" + "0" * 12
    iccid += luhn_check_digit(iccid)
    assert kinds(scanner.scan(f"s={iccid}".encode(), "body")) == [("iccid", "plain", False)]
    unchecked = iccid[:-1] + str((int(iccid[-1]) + 1) % 10)
    assert scanner.scan(f"s={unchecked}".encode(), "body") == []  # fails Luhn, no key
    keyed = f'{{"sim_serial": "{unchecked}"}}'.encode()  # an ICCID key (and a serial key)
    assert kinds(scanner.scan(keyed, "body")) == [("iccid", "plain", False)]


def test_keyed_ids_only_next_to_their_keys() -> None:
    scanner = make_scanner()
    uuid = "6d92078a-8246-4ba4-ae5b-76104861e7dc"
    assert scanner.scan(f"request_id={uuid}".encode(), "url") == []
    assert kinds(scanner.scan(f"idfa={uuid.upper()}".encode(), "url")) == [
        ("ad_id", "plain", False)
    ]
    assert kinds(scanner.scan(f'{{"android_id":"{uuid}"}}'.encode(), "body")) == [
        ("ad_id", "plain", False)
    ]
    assert scanner.scan(b'{"gaid":"00000000-0000-0000-0000-000000000000"}', "body") == []
    assert scanner.scan(b"session=9774d56d682e549c", "cookie") == []
    assert kinds(scanner.scan(b"android_id=9774d56d682e549c", "cookie")) == [
        ("android_id", "plain", False)
    ]
    assert kinds(scanner.scan(b'"serial":"R58N12ABCDE"', "body")) == [("serial", "plain", False)]
    assert scanner.scan(b'"serial":"unknown"', "body") == []


def test_mac_and_email() -> None:
    scanner = make_scanner()
    assert kinds(scanner.scan(b"wifi=AA:BB:CC:DD:EE:01", "body")) == [("mac", "plain", False)]
    assert scanner.scan(b"m=00:00:00:00:00:00&b=ff:ff:ff:ff:ff:ff", "body") == []
    assert scanner.scan(b"ip=2001:db8::1 t=12:34:56", "body") == []
    assert scanner.scan(b"aa:bb:cc-dd:ee:ff", "body") == []  # mixed separators
    found = scanner.scan(b"u=bob@example.org&img=icon@2x.png", "body")
    assert kinds(found) == [("email", "plain", False)]
    assert found[0].redacted == "…@example.org"


def test_decoys() -> None:
    scanner = make_scanner("GB")
    decoys = [
        b'{"ts": 1700000000, "ts_ms": 1700000000123, "order_id": "ORD-2024-001234"}',
        b"card=4111111111111111&n=5500005555555559",
        b"txn=353456789012345",  # 15 digits, Luhn fails
        b"v=4.12.0.1234567&build=UQ1A.240105.004",
        b"X-Request-ID: 6d92078a-8246-4ba4-ae5b-76104861e7dc",
        b"session=0123456789abcdef0123456789abcdef&etag=9774d56d682e549c",
        b"created=2024-11-15T10:00:00+07:00&date=2024-11-15",
        b"ip=192.0.2.44&price=1299.99&lat=-6.208812345678901",
        b"order=000012345&zip=00501",
    ]
    for d in decoys:
        assert scanner.scan(d, "body") == [], d


# --- phone numbers and contact books -------------------------------------------------------------


def test_single_phone_numbers() -> None:
    scanner = make_scanner("GB")
    for text in ("+44 20 7946 0123", "(020) 7946 0123", "+1 212-555-0199", "+61491570110"):
        found = scanner.scan(f'{{"x": "{text}"}}'.encode(), "body")
        assert kinds(found) == [("phone", "plain", False)], text
    assert kinds(scanner.scan(b'{"msisdn": "2079460123"}', "body")) == [("phone", "plain", False)]
    assert scanner.scan(b'{"n": "2079460123"}', "body") == []  # bare digits, no key


def test_contacts_upload_is_one_finding() -> None:
    scanner = make_scanner("GB")
    numbers = ["+44 20 7946 0123", "0113 496 0456", "+1 212 555 0199", "+61 491 570 110"]
    body = json.dumps([{"name": "A", "tel": n} for n in numbers]).encode()
    found = scanner.scan(body, "body")
    assert kinds(found) == [("contacts", "plain", False)]
    assert found[0].count == 4 and found[0].redacted == "4 numbers"
    two = json.dumps(numbers[:2]).encode()
    assert kinds(scanner.scan(two, "body")) == [("phone", "plain", False)] * 2


def test_contacts_from_vcards_and_bare_digits() -> None:
    scanner = make_scanner("GB")
    vcards = (
        b"BEGIN:VCARD\nFN:Ann\nTEL;TYPE=CELL:+44 20 7946 0123\nEND:VCARD\n"
        b"BEGIN:VCARD\nFN:Ben\nTEL;TYPE=HOME:0113 496 0456\nEND:VCARD\n"
        b"BEGIN:VCARD\nFN:Cat\nitem1.TEL;type=pref:01214960789\nEND:VCARD"
    )
    assert [(f.kind, f.count) for f in scanner.scan(vcards, "body")] == [("contacts", 3)]
    bare = b"02079460123,01134960456,01214960789"
    assert [(f.kind, f.count) for f in scanner.scan(b"phones=" + bare, "body")] == [("contacts", 3)]
    # the same digits with nothing saying they are phone numbers: order or record IDs
    assert scanner.scan(b"ids=" + bare, "body") == []


def test_contacts_count_includes_a_known_number() -> None:
    scanner = make_scanner("GB", phone=[PHONE_GB])
    body = json.dumps(["020 7946 0321", "0113 496 0456", "+1 212 555 0199"]).encode()
    found = scanner.scan(body, "body")
    assert ("phone", "plain", True) in kinds(found)
    assert [f.count for f in found if f.kind == "contacts"] == [3]


# --- learning ----------------------------------------------------------------------------------


def test_learn_then_catch_hashed_forms() -> None:
    scanner = make_scanner()
    data = f"imei={IMEI}".encode()
    (f,) = scanner.scan(data, "url")
    assert not f.known
    assert not scanner.learn(f, "861234567890127")  # not the value behind the finding
    assert scanner.learn(f, data[f.offset : f.offset + f.length], owner="dev1")
    assert not scanner.learn(f, IMEI)  # already known
    md5 = hashlib.md5(IMEI.encode()).hexdigest().encode()
    (g,) = scanner.scan(b"h=" + md5, "body")
    assert (g.kind, g.encoding, g.known, g.owner) == ("imei", "md5", True, "dev1")
    assert scanner.export_learned() == [("imei", f.keyed_hash)]
    # the plain value is now known; no separate structural finding
    assert kinds(scanner.scan(data, "url")) == [("imei", "plain", True)]


def test_auto_learn_and_bounded_memory() -> None:
    known = KnownIdentifiers(KEY, "GB")
    scanner = Scanner(known, auto_learn=True, max_learned=2)
    rng = random.Random(3)
    imeis = [C.fake_imei(rng) for _ in range(3)]
    for imei in imeis:
        scanner.scan(f"imei={imei}".encode(), "url")
    assert scanner.learned_count == 2
    assert [h for _, h in scanner.export_learned()] == [
        keyed_hash(KEY, "imei", i) for i in imeis[1:]
    ]
    b64 = base64.b64encode(f'{{"i":"{imeis[2]}"}}'.encode())
    assert kinds(scanner.scan(b64, "body")) == [("imei", "base64", True)]


def test_scan_parts_drops_repeats() -> None:
    scanner = make_scanner(email=[EMAIL])
    quoted = urllib.parse.quote(EMAIL, safe="").encode()
    parts = [("url", b"/a?e=" + quoted), ("url", b"/a?e=" + EMAIL.encode()), ("body", quoted)]
    found = scanner.scan_parts(parts)  # type: ignore[arg-type]
    assert [(f.location, f.encoding) for f in found] == [
        ("url", "url"),
        ("url", "plain"),
        ("body", "url"),
    ]


def test_large_buffer_scan_is_linear() -> None:
    """Key and run lookups must stay local: a quadratic slip shows as minutes here."""
    import time

    rng = random.Random(5)
    record = '{"device_id": "%s", "phone": "+44 20 7946 0%03d", "sid": "%032x"},'
    body = "".join(
        record % (C.fake_imei(rng) if i % 50 == 0 else "1" * 15, i % 1000, rng.getrandbits(128))
        for i in range(20_000)
    ).encode()
    scanner = make_scanner("GB")
    t0 = time.process_time()
    found = scanner.scan(body, "body")
    assert time.process_time() - t0 < 30
    assert {f.kind for f in found} == {"imei", "contacts"}


@pytest.fixture(scope="module")
def fuzz_scanner() -> Scanner:
    return make_scanner("GB", imei=[IMEI], email=[EMAIL], phone=[PHONE_GB])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_scan_never_raises(fuzz_scanner: Scanner, data: bytes) -> None:
    for f in fuzz_scanner.scan(data, "payload"):
        assert 0 <= f.offset <= len(data)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="0123456789 +-()=:@.abcdef\n", max_size=200))
def test_scan_never_raises_on_number_soup(fuzz_scanner: Scanner, text: str) -> None:
    fuzz_scanner.scan(text.encode(), "body")


def test_no_home_country_assumes_none() -> None:
    """Without site.home_country a national number has no country to belong to: only numbers
    written with their country code are found (no silent fallback to some default)."""
    body = b'{"msisdn": "081234567890", "other": "+6281234567891"}'
    assume_nothing = {f.redacted for f in Scanner(KnownIdentifiers(KEY)).scan(body, "body")}
    assert assume_nothing == {"…7891"}
    home = {f.redacted for f in Scanner(KnownIdentifiers(KEY, "ID")).scan(body, "body")}
    assert home == {"…7890", "…7891"}


def test_unknown_home_country_is_none_as_in_enrich() -> None:
    """No site.home_country is None in detect as in enrich (no stand-in region code): the
    detector reads only +CC numbers, for configured values as for what it finds."""
    from sensor.config import Config
    from sensor.detect.stage import Detector

    detector = Detector(Config(), KEY, None)
    assert detector.scanner.home_region is None
    known = KnownIdentifiers.from_mapping(
        {"phone": ["+44 20 7946 0123", "020 7946 0124"]}, key=KEY, home_region=None
    )
    assert known.home_region is None and known.rejected == 1  # the national one: no country
    body = b'{"phone": "+44 20 7946 0123", "tel": "020 7946 0125", "msisdn": "0044 20 7946 0126"}'
    found = {(f.redacted, f.known) for f in Scanner(known).scan(body, "body")}
    assert found == {("…0123", True)}
    assert canonicalize("phone", "0044 20 7946 0126") is None
    assert canonicalize("phone", "0044 20 7946 0126", "GB") == "+442079460126"
