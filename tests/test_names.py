"""Names as they are written out: which labels `redact_name` cuts, and which it keeps."""

from __future__ import annotations

import base64
import hashlib

import pytest

from sensor.lab.synth import DEMO_CONTACTS, DEMO_IMEI, DEMO_PHONE
from sensor.names import dns_name_text, looks_like_data, redact_name
from tests.secrets import find_secrets

SECRETS = (DEMO_IMEI, DEMO_PHONE, *DEMO_CONTACTS, "budi.santoso@example.co.id")

IMEI_HEX = DEMO_IMEI.encode().hex()
PHONE_B32 = base64.b32encode(DEMO_PHONE.encode()).decode().rstrip("=").lower()
PHONE_B64 = base64.b64encode(DEMO_PHONE.encode()).decode().rstrip("=").lower()
EMAIL_B32 = base64.b32encode(b"budi.santoso@example.co.id").decode().rstrip("=").lower()
IMEI_MD5 = hashlib.md5(DEMO_IMEI.encode()).hexdigest()
IMEI_SHA1_B64URL = base64.urlsafe_b64encode(hashlib.sha1(DEMO_IMEI.encode()).digest())
SHA1_LABEL = IMEI_SHA1_B64URL.decode().rstrip("=").lower()

KEPT = [
    "api.account.xiaomi.com",
    "www.google.com",
    "time-ios.apple.com",
    "e5.o.lencr.org",
    "cdn-123.example.net",
    "tracking.intl.miui.com",
    "connectivitycheck.gstatic.com",  # 17 letters, but a word (vowels)
    "firebaseinstallations.googleapis.com",
    "clientservices.googleapis.com",
    "googleads4.g.doubleclick.net",
    "1e100.net",
    "a1234.dscb.akamai.net",  # a host number of up to 5 digits
    "r3---sn-2uuxa3vh-jb3e.googlevideo.com",
    "scontent-sin6-2.xx.fbcdn.net",
    "s3.ap-southeast-1.amazonaws.com",
    "xn--80akhbyknj4f.xn--p1ai",  # internationalised: judged by what it spells
    "xn--fiq228c5hs.cn",
    "203.0.113.10",
    "2001:db8::10",  # an IPv6 literal from a Host header
    "example.com",
    "localhost",
    "",
]
"""Names that stay readable, unchanged."""

CUT = [
    (f"{IMEI_HEX}.t.leak-cn.example", "….t.leak-cn.example"),  # the IMEI in hex
    (f"{PHONE_B32}.p.leak-cn.example", "….p.leak-cn.example"),  # the number in base32
    (f"{PHONE_B64}.b.example", "….b.example"),  # base64, lower-cased by the decoder
    (f"{EMAIL_B32}.e.example", "….e.example"),  # 58 characters of base32
    (f"{IMEI_MD5}.h.example", "….h.example"),  # a digest in hex
    (f"{SHA1_LABEL}.h.example", "….h.example"),  # a digest in base64url
    (f"{DEMO_IMEI}.example.com", "….example.com"),  # the domain label is judged too
    (f"a.{DEMO_IMEI}.com", "a.….com"),
    (DEMO_PHONE[1:], "…"),
    ("0812-3456-7890.example", "….example"),  # digits apart still count
    ("3c22fbaabbcc.mac.example", "….mac.example"),  # 12 hex characters: a MAC
    (f"{IMEI_HEX[:30]}.{IMEI_MD5}.x.example", "….….x.example"),  # one cut per label
    ("e123456.a.akamaiedge.net", "….a.akamaiedge.net"),  # 6 digits: a number, whatever it is
    (
        "ec2-54-169-12-34.ap-southeast-1.compute.amazonaws.com",
        "….ap-southeast-1.compute.amazonaws.com",
    ),
    ("qwrtzpsdfghjklmnb.example", "….example"),  # 17 letters, hardly a vowel
    ("xn--zz.example", "….example"),  # not punycode at all
    (f"{IMEI_HEX}.T.Leak-CN.Example", "….T.Leak-CN.Example"),  # the rest keeps its case
]
"""(name, as written out)."""


@pytest.mark.parametrize("name", KEPT)
def test_ordinary_names_stay_readable(name: str) -> None:
    assert redact_name(name) == name


@pytest.mark.parametrize(("name", "text"), CUT)
def test_labels_that_look_like_data_are_cut(name: str, text: str) -> None:
    assert redact_name(name) == text
    assert not find_secrets({name: text}, SECRETS)


def test_redaction_is_idempotent() -> None:
    for name, text in CUT:
        assert redact_name(text) == text, name


@pytest.mark.parametrize(
    ("label", "data"),
    [
        ("12345", False),
        ("123456", True),
        ("abcdef12345", False),  # 11 hex characters, 5 digits
        ("abcdef123456", True),
        ("deadbeefcafe", False),  # hex letters only: no digit, a word-like run
        ("abcdefghijklmnpq", True),  # 16 letters, under a quarter vowels
        ("abcdefghijklmnop", False),  # a quarter exactly passes for a word
        ("connectivitycheck", False),
        ("android-safebrowsing", False),  # runs are cut at hyphens
        ("", False),
    ],
)
def test_looks_like_data(label: str, data: bool) -> None:
    assert looks_like_data(label) is data


def test_dns_name_text_cuts_to_the_domain() -> None:
    """The alerts' cut of a name known to carry an identifier (see also test_secrets)."""
    assert dns_name_text(f"{IMEI_HEX}.t.leak-cn.example") == "….leak-cn.example"
    assert dns_name_text(f"{PHONE_B32}.p.example.co.id") == "….example.co.id"
    assert dns_name_text("3c22fbaabbcc.com") == "….com"  # data by looks_like_data
    assert dns_name_text("example.com") == "example.com"
