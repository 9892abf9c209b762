"""Tests for sensor.enrich.vendors and the shipped sensor/data/vendors.toml."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from publicsuffixlist import PublicSuffixList

from sensor.enrich.vendors import (
    CATEGORIES,
    PublicSuffixes,
    VendorDataError,
    VendorMap,
    VendorMatch,
    normalize_name,
)
from sensor.model import Flow


@pytest.fixture(scope="module")
def psl() -> PublicSuffixes:
    return PublicSuffixes()


@pytest.fixture(scope="module")
def vm(psl: PublicSuffixes) -> VendorMap:
    return VendorMap.load(psl=psl)


def _raw() -> dict[str, Any]:
    return tomllib.loads(
        resources.files("sensor").joinpath("data/vendors.toml").read_text(encoding="utf-8")
    )


# --- the data file -----------------------------------------------------------------------------


def test_data_file_parses_and_documents_itself() -> None:
    text = resources.files("sensor").joinpath("data/vendors.toml").read_text(encoding="utf-8")
    header = text.split("\nformat = 1\n")[0]
    for word in ("FORMAT", "SOURCES", "HOW TO ADD", "CATEGORIES", "AMAZON VS AWS"):
        assert word in header
    data = tomllib.loads(text)
    assert data["format"] == 1


def test_at_least_40_distinct_companies(vm: VendorMap) -> None:
    vendors_with_names = {e.vendor for e in vm.entries.values()}
    assert len(vendors_with_names) >= 40
    assert len(vm.vendors) >= 40


def test_companies_from_the_issue_are_covered(vm: VendorMap) -> None:
    wanted = {
        "Xiaomi", "Huawei", "Honor", "Oppo", "Vivo", "OnePlus", "Realme", "Transsion",
        "Samsung", "Google", "Apple", "Amazon", "Meta", "Microsoft", "ByteDance", "Tencent",
        "Alibaba", "Baidu", "Lenovo", "Motorola", "Sony", "LG", "Roku", "Tuya", "Espressif",
        "Ring", "Netflix", "Spotify", "Kuaishou", "NetEase", "JD", "Meituan", "Yandex", "VK",
        "Snap", "X (Twitter)", "Telegram", "Zoom", "Roborock", "Dreame", "Hikvision", "Dahua",
        "Ezviz", "TP-Link", "Ubiquiti", "Sonos", "Signify", "Nvidia", "Adobe", "Cloudflare",
        "Akamai", "Amazon Web Services", "Kingsoft Cloud",
    }  # fmt: skip
    assert wanted <= set(vm.vendors)
    # every company has at least one name or an ASN pattern
    named = {e.vendor for e in vm.entries.values()}
    for v in vm.vendors.values():
        assert v.name in named or v.asn_patterns, v.name


def test_every_domain_is_registrable_and_every_host_is_below_one() -> None:
    # independent of the loader: ask the PSL directly
    icann = PublicSuffixList(only_icann=True)
    seen: set[str] = set()
    for block in _raw()["vendor"]:
        for key in ("domains", *CATEGORIES):
            for domain in block.get(key, []):
                assert icann.privatesuffix(domain) == domain, (block["name"], domain)
                assert domain not in seen, domain
                seen.add(domain)
        for host, category in block.get("hosts", {}).items():
            registrable = icann.privatesuffix(host)
            assert registrable is not None and registrable != host, (block["name"], host)
            assert host.endswith("." + registrable)
            assert category in CATEGORIES
            assert host not in seen, host
            seen.add(host)


def test_no_unknown_keys_and_known_categories() -> None:
    allowed = {"name", "parent", "note", "asn", "domains", "hosts", *CATEGORIES}
    for block in _raw()["vendor"]:
        assert set(block) <= allowed, block["name"]


@pytest.mark.parametrize(
    ("domain", "vendor"),
    [
        ("xiaomi.com", "Xiaomi"),
        ("xiaomi.net", "Xiaomi"),
        ("mi.com", "Xiaomi"),
        ("miui.com", "Xiaomi"),
        ("mi-img.com", "Xiaomi"),
        ("xiaomiyoupin.com", "Xiaomi"),
        ("dbankcloud.com", "Huawei"),
        ("hicloud.com", "Huawei"),
        ("huaweicloud.com", "Huawei"),
        ("heytapmobi.com", "Oppo"),
        ("coloros.com", "Oppo"),
        ("vivo.com.cn", "Vivo"),
        ("samsungcloud.com", "Samsung"),
        ("samsungapps.com", "Samsung"),
        ("gstatic.com", "Google"),
        ("googleapis.com", "Google"),
        ("icloud.com", "Apple"),
        ("apple-cloudkit.com", "Apple"),
        ("amazon.com", "Amazon"),
        ("amazonaws.com", "Amazon Web Services"),
        ("fbcdn.net", "Meta"),
        ("tiktokv.com", "ByteDance"),
        ("byteoversea.com", "ByteDance"),
        ("qq.com", "Tencent"),
        ("gtimg.com", "Tencent"),
        ("alicdn.com", "Alibaba"),
        ("bdstatic.com", "Baidu"),
        ("tuyaus.com", "Tuya"),
        ("tuyaeu.com", "Tuya"),
        ("ring.com", "Ring"),
        ("nflxvideo.net", "Netflix"),
        ("scdn.co", "Spotify"),
    ],
)
def test_issue_domains(vm: VendorMap, domain: str, vendor: str) -> None:
    match = vm.vendor_for_name(domain)
    assert match is not None and match.vendor == vendor
    assert match.domain == domain


# --- name lookups ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("api.account.xiaomi.com", VendorMatch("Xiaomi", "xiaomi.com", None)),
        ("foo.vivo.com.cn", VendorMatch("Vivo", "vivo.com.cn", None)),
        ("a.b.c.vivo.com.cn", VendorMatch("Vivo", "vivo.com.cn", None)),
        ("api.xmpush.global.xiaomi.com", VendorMatch("Xiaomi", "xmpush.global.xiaomi.com", "push")),
        ("fcm.googleapis.com", VendorMatch("Google", "fcm.googleapis.com", "push")),
        ("sub.fcm.googleapis.com", VendorMatch("Google", "fcm.googleapis.com", "push")),
        ("www.googleapis.com", VendorMatch("Google", "googleapis.com", "api")),
        (
            "data.mistat.intl.xiaomi.com",
            VendorMatch("Xiaomi", "mistat.intl.xiaomi.com", "telemetry"),
        ),
        ("grs.dbankcloud.cn", VendorMatch("Huawei", "dbankcloud.cn", "api")),
        ("p16-sign-va.tiktokcdn.com", VendorMatch("ByteDance", "tiktokcdn.com", "cdn")),
        ("ipv4-c001-lhr001-ix.1.oca.nflxvideo.net", VendorMatch("Netflix", "nflxvideo.net", "cdn")),
        ("m1.tuyaeu.com", VendorMatch("Tuya", "tuyaeu.com", "cloud")),
        ("www.oneplus.com", VendorMatch("OnePlus", "oneplus.com", None, parent="Oppo")),
        ("fw.ring.com", VendorMatch("Ring", "ring.com", None, parent="Amazon")),
        # a vendor's name on someone else's CDN: the host override wins over akamaized.net
        (
            "audio-ak-spotify-com.akamaized.net",
            VendorMatch("Spotify", "audio-ak-spotify-com.akamaized.net", "cdn"),
        ),
        (
            "feelinsonice-hrd.appspot.com",
            VendorMatch("Snap", "feelinsonice-hrd.appspot.com", "api"),
        ),
    ],
)
def test_vendor_for_name(vm: VendorMap, name: str, expected: VendorMatch) -> None:
    assert vm.vendor_for_name(name) == expected


def test_aws_bucket_is_the_cloud_provider_with_tenant(vm: VendorMap) -> None:
    # documented choice: the operator (AWS, category hosting), with the customer's part kept
    m = vm.vendor_for_name("x.s3.ap-southeast-1.amazonaws.com")
    assert m == VendorMatch(
        vendor="Amazon Web Services",
        domain="amazonaws.com",
        category="hosting",
        parent="Amazon",
        tenant="x.s3.ap-southeast-1.amazonaws.com",
    )
    cf = vm.vendor_for_name("d111111abcdef8.cloudfront.net")
    assert cf is not None and cf.vendor == "Amazon Web Services"
    assert cf.tenant == "d111111abcdef8.cloudfront.net"
    blob = vm.vendor_for_name("acct.blob.core.windows.net")
    assert blob is not None and (blob.vendor, blob.category) == ("Microsoft", "hosting")
    assert blob.tenant == "acct.blob.core.windows.net"
    # own names are not tenants
    own = vm.vendor_for_name("api.account.xiaomi.com")
    assert own is not None and own.tenant is None


@pytest.mark.parametrize(
    "name",
    [
        "API.Account.XIAOMI.com.",
        "  api.account.xiaomi.com  ",
        "api.account.xiaomi.com:443",
    ],
)
def test_names_are_normalised(vm: VendorMap, name: str) -> None:
    m = vm.vendor_for_name(name)
    assert m is not None and (m.vendor, m.domain) == ("Xiaomi", "xiaomi.com")


@pytest.mark.parametrize(
    "name",
    [
        "example.org",
        "www.example.co.uk",
        "xiaomi.com.evil.example",  # the vendor domain as a label, not a suffix
        "notxiaomi.com",
        "com",
        "com.cn",
        "localhost",
        "router.lan",
        "1.2.3.4",
        "2001:db8::1",
        "[2001:db8::1]:443",
        "",
        ".",
        "bad..name.com",
        "has space.com",
    ],
)
def test_unknown_names_give_none(vm: VendorMap, name: str) -> None:
    assert vm.vendor_for_name(name) is None


def test_idn_names_are_looked_up_in_punycode(vm: VendorMap) -> None:
    assert normalize_name("Bücher.example") == "xn--bcher-kva.example"
    assert vm.vendor_for_name("bücher.example") is None


def test_registrable_domain(vm: VendorMap) -> None:
    assert vm.registrable_domain("x.s3.ap-southeast-1.amazonaws.com") == "amazonaws.com"
    assert vm.registrable_domain("foo.vivo.com.cn") == "vivo.com.cn"
    assert vm.registrable_domain("com.cn") is None
    assert vm.registrable_domain("10.0.0.1") is None


def test_lookups_are_cached(psl: PublicSuffixes) -> None:
    small = VendorMap.load(psl=psl, cache_size=2)
    for _ in range(3):
        small.vendor_for_name("api.account.xiaomi.com")
    info = small.cache_info()
    assert info["name_hits"] == 2 and info["name_misses"] == 1
    for name in ("a.mi.com", "b.mi.com", "c.mi.com"):
        small.vendor_for_name(name)
    assert small.cache_info()["name_size"] == 2  # bounded


# --- AS organisation fallback ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("org", "vendor"),
    [
        ("Beijing Kingsoft Cloud Internet Technology Co., Ltd", "Kingsoft Cloud"),
        ("Huawei Cloud Service data center", "Huawei"),
        ("HUAWEI CLOUDS", "Huawei"),
        ("Alibaba (US) Technology Co., Ltd.", "Alibaba"),
        ("Hangzhou Alibaba Advertising Co.,Ltd.", "Alibaba"),
        ("Tencent Building, Kejizhongyi Avenue", "Tencent"),
        ("Shenzhen Tencent Computer Systems Company Limited", "Tencent"),
        ("AMAZON-02", "Amazon Web Services"),
        ("AMAZON-AES", "Amazon Web Services"),
        ("GOOGLE", "Google"),
        ("GOOGLE-CLOUD-PLATFORM", "Google"),
        ("MICROSOFT-CORP-MSN-AS-BLOCK", "Microsoft"),
        ("FACEBOOK", "Meta"),
        ("AKAMAI-AS", "Akamai"),
        ("Akamai International B.V.", "Akamai"),
        ("CLOUDFLARENET", "Cloudflare"),
        ("FASTLY", "Fastly"),
        ("Beijing Baidu Netcom Science and Technology Co., Ltd.", "Baidu"),
        ("Bytedance Inc.", "ByteDance"),
        ("Beijing Volcano Engine Technology Co., Ltd.", "ByteDance"),
        ("YANDEX LLC", "Yandex"),
        ("APPLE-ENGINEERING", "Apple"),
        ("Netflix Streaming Services Inc.", "Netflix"),
        ("Hetzner Online GmbH", "Hetzner"),
    ],
)
def test_vendor_for_asn_org(vm: VendorMap, org: str, vendor: str) -> None:
    assert vm.vendor_for_asn_org(org) == vendor


@pytest.mark.parametrize(
    "org", ["China Unicom Beijing Province Network", "Deutsche Telekom AG", "", "   "]
)
def test_unknown_asn_org_gives_none(vm: VendorMap, org: str) -> None:
    assert vm.vendor_for_asn_org(org) is None


def test_enrich_flow_by_name_then_asn(vm: VendorMap) -> None:
    flow = Flow("u1", "tcp", "192.168.1.5", 40000, "203.0.113.9", 443, None, 0.0, 0.0)
    flow.server_name = "tracking.intl.miui.com"
    m = vm.enrich(flow, asn_org="AMAZON-02")
    assert isinstance(m, VendorMatch)
    assert flow.extra["vendor"] == "Xiaomi"
    assert flow.extra["vendor_source"] == "name"
    assert flow.extra["vendor_category"] == "telemetry"
    assert "vendor_tenant" not in flow.extra

    bare = Flow("u2", "tcp", "192.168.1.5", 40001, "203.0.113.10", 443, None, 0.0, 0.0)
    assert vm.enrich(bare, asn_org="Beijing Kingsoft Cloud Internet Technology Co., Ltd") == (
        "Kingsoft Cloud"
    )
    assert bare.extra == {"vendor": "Kingsoft Cloud", "vendor_source": "asn"}

    nothing = Flow("u3", "udp", "192.168.1.5", 40002, "203.0.113.11", 443, None, 0.0, 0.0)
    nothing.server_name = "example.org"
    assert vm.enrich(nothing) is None and nothing.extra == {}


# --- loader validation -------------------------------------------------------------------------


def _doc(**vendor: Any) -> dict[str, Any]:
    return {"format": 1, "vendor": [{"name": "Acme", **vendor}]}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"format": 1, "vendor": [{"name": "Acme"}], "extra": 1}, "extra: unknown key"),
        ({"format": 2, "vendor": [{"name": "Acme"}]}, "format: expected 1"),
        ({"format": 1}, "expected an array of tables"),
        (_doc(colour="red"), "colour: unknown key"),
        (_doc(domains=["api.acme.com"]), "list it under hosts instead"),
        (_doc(domains=["co.uk"]), "it is a public suffix"),
        (_doc(domains=["Acme.com"]), "not a lower-case ASCII host name"),
        (_doc(domains="acme.com"), "expected a list of strings"),
        (_doc(hosts={"acme.com": "api"}), "not a host below one"),
        (_doc(hosts={"api.acme.com": "spying"}), "category must be one of"),
        (_doc(domains=["acme.com"], api=["acme.com"]), "listed twice"),
        (_doc(asn=["(unclosed"]), "bad pattern"),
        (_doc(parent="Nobody"), "is not a vendor in this file"),
        ({"format": 1, "vendor": [{"name": "A"}, {"name": "A"}]}, "duplicate 'A'"),
        ({"format": 1, "vendor": [{"domains": ["acme.com"]}]}, "name: expected a non-empty"),
    ],
)
def test_loader_rejects_bad_data(psl: PublicSuffixes, doc: dict[str, Any], message: str) -> None:
    with pytest.raises(VendorDataError, match=message.replace("(", r"\(")) as info:
        VendorMap.from_data(doc, source="test.toml", psl=psl)
    assert str(info.value).startswith("test.toml: ")


def test_load_from_path_and_errors(tmp_path: Path, psl: PublicSuffixes) -> None:
    good = tmp_path / "v.toml"
    good.write_text(
        "format = 1\n[[vendor]]\nname = \"Acme\"\nasn = ['\\bacme\\b']\n"
        'api = ["acme.com"]\n[vendor.hosts]\n"push.acme.com" = "push"\n',
        encoding="utf-8",
    )
    vm = VendorMap.load(good, psl=psl)
    assert vm.vendor_for_name("x.push.acme.com") == VendorMatch("Acme", "push.acme.com", "push")
    assert vm.vendor_for_name("www.acme.com") == VendorMatch("Acme", "acme.com", "api")
    assert vm.vendor_for_asn_org("ACME Networks") == "Acme"

    with pytest.raises(VendorDataError, match="cannot read"):
        VendorMap.load(tmp_path / "missing.toml", psl=psl)
    bad = tmp_path / "bad.toml"
    bad.write_text("format = [", encoding="utf-8")
    with pytest.raises(VendorDataError, match="invalid TOML"):
        VendorMap.load(bad, psl=psl)


def test_redacted_names_keep_their_domain() -> None:
    """Names with data labels cut (sensor.names.redact_name) still find their vendor."""
    from sensor.enrich.vendors import normalize_name

    assert normalize_name("….d.xiaomi.com") == "d.xiaomi.com"
    assert normalize_name("….….x.example.com") == "x.example.com"
    assert normalize_name("…") is None


# --- part 2: services and SDKs ---------------------------------------------------------------


def test_services_file_gives_every_company_a_source() -> None:
    doc = tomllib.loads(
        resources.files("sensor").joinpath("data/vendors_services.toml").read_text(encoding="utf-8")
    )
    for block in doc["vendor"]:
        assert block.get("source", "").strip(), block["name"]


def test_map_size(vm: VendorMap) -> None:
    # issue 19: at least 300 companies and 3,000 names
    assert len(vm.vendors) >= 300
    assert len(vm.entries) >= MIN_NAMES


MIN_NAMES = 3000


@pytest.mark.parametrize(
    ("name", "vendor", "category"),
    [
        ("api2.branch.io", "Branch", "telemetry"),
        ("control.kochava.com", "Kochava", "telemetry"),
        ("api.mixpanel.com", "Mixpanel", "telemetry"),
        ("api2.amplitude.com", "Amplitude", "telemetry"),
        ("notify.bugsnag.com", "Bugsnag", "telemetry"),
        ("ads.inmobi.com", "InMobi", "ads"),
        ("cdn.cookielaw.org", "OneTrust", "api"),
        ("www.google.co.id", "Google", None),
        ("mybucket.myshopify.com", "Shopify", "hosting"),
    ],
)
def test_sdk_and_service_names(vm: VendorMap, name: str, vendor: str, category: str) -> None:
    m = vm.vendor_for_name(name)
    assert m is not None and (m.vendor, m.category) == (vendor, category)


def test_later_files_add_to_earlier_companies(tmp_path: Path, psl: PublicSuffixes) -> None:
    from sensor.enrich.vendors import _combine

    first = {"format": 1, "vendor": [{"name": "Acme", "domains": ["acme.example"]}]}
    second = {
        "format": 1,
        "vendor": [
            {"name": "Acme", "source": "s", "ads": ["acme-ads.example"]},
            {"name": "Beta", "source": "s", "domains": ["beta.example"]},
        ],
    }
    vm = VendorMap.from_data(_combine([("a", first), ("b", second)]), psl=psl)
    assert {k: e.vendor for k, e in vm.entries.items()} == {
        "acme.example": "Acme",
        "acme-ads.example": "Acme",
        "beta.example": "Beta",
    }
    bad = {"format": 1, "vendor": [{"name": "Acme", "parent": "Beta"}]}
    with pytest.raises(VendorDataError, match="carries only name, source and name lists"):
        _combine([("a", first), ("b", bad)])
    with pytest.raises(VendorDataError, match="duplicate 'Acme'"):
        _combine([("a", {"format": 1, "vendor": [{"name": "Acme"}, {"name": "Acme"}]})])
