"""Tests for sensor.enrich.device: OUI, randomized MACs, DHCP and User-Agent hints, precedence."""

from __future__ import annotations

import pytest

from sensor.config import DEVICE_KINDS, DeviceConfig
from sensor.enrich.device import (
    DeviceIdentifier,
    DeviceIdentity,
    OuiRegistry,
    dhcp_params_hint,
    identify,
    is_randomized_mac,
    normalize_org,
    parse_dhcp_hostname,
    parse_dhcp_vendor_class,
    parse_user_agent,
)
from sensor.model import Device

REDMI_UA = "Dalvik/2.1.0 (Linux; U; Android 10; Redmi Note 8 Pro MIUI/V12.0.3.0.QGGMIXM)"
GALAXY_UA = (
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/112.0.0.0 Mobile Safari/537.36"
)
TIZEN_UA = (
    "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "76.0.3809.146/6.0 TV Safari/537.36"
)
WINDOWS_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)

# OUIs below are asserted against the registry we ship (netaddr's IEEE copy), not assumed.
XIAOMI_MAC = "64:09:80:12:34:56"
SAMSUNG_MAC = "8c:79:f5:00:00:01"
APPLE_MAC = "60:fd:a6:00:00:01"
HUAWEI_MAC = "e0:06:30:00:00:01"
ESPRESSIF_MAC = "d8:f1:5b:00:00:01"
ROKU_MAC = "34:5e:08:00:00:01"
INTEL_MAC = "f0:d5:bf:00:00:01"
RANDOM_MAC = "da:a1:19:6b:2c:01"


@pytest.fixture(scope="module")
def oui() -> OuiRegistry:
    return OuiRegistry()


# --- OUI registry ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mac", "org", "vendor"),
    [
        (XIAOMI_MAC, "Xiaomi Communications Co Ltd", "Xiaomi"),
        (SAMSUNG_MAC, "Samsung Electronics Co.,Ltd", "Samsung"),
        (APPLE_MAC, "Apple, Inc.", "Apple"),
        (HUAWEI_MAC, "HUAWEI TECHNOLOGIES CO.,LTD", "Huawei"),
        (ESPRESSIF_MAC, "Espressif Inc.", "Espressif"),
        (ROKU_MAC, "Roku, Inc", "Roku"),
        (INTEL_MAC, "Intel Corporate", "Intel"),
    ],
)
def test_shipped_registry_knows_real_ouis(
    oui: OuiRegistry, mac: str, org: str, vendor: str
) -> None:
    assert oui.organization(mac) == org
    v = oui.vendor(mac)
    assert v is not None and v.vendor == vendor and v.known_brand


def test_registry_accepts_any_mac_spelling(oui: OuiRegistry) -> None:
    assert oui.organization("64-09-80-AB-CD-EF") == oui.organization("640980abcdef")
    assert oui.organization("64:09:80:ab:cd:ef") == "Xiaomi Communications Co Ltd"


def test_registry_unassigned_and_randomized(oui: OuiRegistry) -> None:
    assert oui.organization(RANDOM_MAC) is None  # locally administered: never looked up
    # an MA-M/MA-S container block: organisation known, no vendor
    assert oui.organization("70:b3:d5:00:00:01") == "IEEE Registration Authority"
    assert oui.vendor("70:b3:d5:00:00:01") is None
    with pytest.raises(ValueError):
        oui.organization("not-a-mac")


def test_registry_from_table() -> None:
    reg = OuiRegistry({"AC-BB-CC": "AzureWave Technology Inc.", "001122": "Apple, Inc."})
    assert reg.organization("ac:bb:cc:00:00:01") == "AzureWave Technology Inc."
    assert reg.organization("00:11:22:33:44:55") == "Apple, Inc."
    assert reg.organization("00:11:23:33:44:55") is None
    with pytest.raises(ValueError):
        OuiRegistry({"aabb": "x"})


@pytest.mark.parametrize(
    ("org", "vendor", "known"),
    [
        ("Xiaomi Communications Co Ltd", "Xiaomi", True),
        ("Beijing Xiaomi Mobile Software Co., Ltd", "Xiaomi", True),
        ("Samsung Electronics Co.,Ltd", "Samsung", True),
        ("Apple, Inc.", "Apple", True),
        ("Huawei Technologies Co.,Ltd", "Huawei", True),
        ("Huawei Device Co., Ltd.", "Huawei", True),
        ("Honor Device Co., Ltd.", "Honor", True),
        ("GUANGDONG OPPO MOBILE TELECOMMUNICATIONS CORP.,LTD", "Oppo", True),
        ("vivo Mobile Communication Co., Ltd.", "Vivo", True),
        ("Realme Chongqing Mobile Telecommunications Corp.,Ltd.", "Realme", True),
        ("TECNO MOBILE LIMITED", "Transsion", True),
        ("Motorola Mobility LLC, a Lenovo Company", "Motorola", True),
        ("Amazon Technologies Inc.", "Amazon", True),
        ("Sony Interactive Entertainment Inc.", "Sony", True),
        ("Raspberry Pi Trading Ltd", "Raspberry Pi", True),
        ("Fiberhome Telecommunication Technologies Co.,LTD", "Fiberhome", False),
        ("ARRIS Group, Inc.", "ARRIS", False),
        ("Motorola Solutions Inc.", "Motorola Solutions", False),
        ("AzureWave Technology Inc.", "AzureWave", False),
    ],
)
def test_normalize_org(org: str, vendor: str, known: bool) -> None:
    v = normalize_org(org)
    assert v is not None and (v.vendor, v.known_brand) == (vendor, known)


@pytest.mark.parametrize("org", ["IEEE Registration Authority", "Private", "", "  "])
def test_normalize_org_without_vendor(org: str) -> None:
    assert normalize_org(org) is None


# --- MACs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mac", "randomized"),
    [
        (XIAOMI_MAC, False),
        (RANDOM_MAC, True),  # 0xda = 1101 1010: bit 0x02 set
        ("02:00:00:00:00:01", True),
        ("3e:22:33:44:55:66", True),
        ("00:00:00:00:00:00", False),
        ("F6-12-34-56-78-9A", True),
    ],
)
def test_is_randomized_mac(mac: str, randomized: bool) -> None:
    assert is_randomized_mac(mac) is randomized


# --- User-Agents -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ua", "model", "vendor", "kind"),
    [
        (REDMI_UA, "Redmi Note 8 Pro", "Xiaomi", "phone"),
        (GALAXY_UA, "SM-S911B", "Samsung", "phone"),
        ("Dalvik/2.1.0 (Linux; U; Android 11; SM-A515F Build/RP1A.200720.012)",
         "SM-A515F", "Samsung", "phone"),
        ("Dalvik/2.1.0 (Linux; U; Android 10; VOG-L29 Build/HUAWEIVOG-L29)",
         "VOG-L29", "Huawei", "phone"),
        ("Dalvik/2.1.0 (Linux; U; Android 12; M2101K6G Build/SKQ1.210908.001)",
         "M2101K6G", "Xiaomi", "phone"),
        ("Dalvik/2.1.0 (Linux; U; Android 13; 2201117TG Build/TKQ1.221114.001)",
         "2201117TG", "Xiaomi", "phone"),
        ("Dalvik/2.1.0 (Linux; U; Android 12; CPH2239 Build/SP1A.210812.016)",
         "CPH2239", "Oppo", "phone"),
        ("Dalvik/2.1.0 (Linux; U; Android 11; Infinix X6816 Build/RP1A.200720.011)",
         "Infinix X6816", "Transsion", "phone"),
        ("Mozilla/5.0 (Linux; U; Android 4.0.3; ko-kr; LG-L160L Build/IML74K) "
         "AppleWebkit/534.30 (KHTML, like Gecko) Version/4.0 Mobile Safari/534.30",
         "LG-L160L", "LG", "phone"),
        ("Mozilla/5.0 (Linux; Android 12; SM-X200) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/112.0.0.0 Safari/537.36", "SM-X200", "Samsung", "tablet"),
        ("Dalvik/2.1.0 (Linux; U; Android 11; Lenovo TB-X606F Build/RP1A.200720.011)",
         "Lenovo TB-X606F", "Lenovo", "tablet"),
        ("Mozilla/5.0 (Linux; Android 9; AFTMM Build/PS7233; wv) AppleWebKit/537.36 "
         "(KHTML, like Gecko) Version/4.0 Chrome/91.0.4472.120 Mobile Safari/537.36",
         "AFTMM", "Amazon", "tv"),
        ("Dalvik/2.1.0 (Linux; U; Android 9; BRAVIA 4K GB Build/PTT1.190515.001.S52)",
         "BRAVIA 4K GB", "Sony", "tv"),
        ("Dalvik/2.1.0 (Linux; U; Android 9; MiTV-MSSP3 MIUI/1.3.87)",
         "MiTV-MSSP3", "Xiaomi", "tv"),
        ("Dalvik/2.1.0 (Linux; U; Android 11; SHIELD Android TV Build/RQ1A.210105.003)",
         "SHIELD Android TV", "Nvidia", "tv"),
        (IPHONE_UA, "iPhone", "Apple", "phone"),
        ("Instagram 275.0.0.27.98 (iPhone14,2; iOS 16_3; en_US; en-US; scale=3.00; "
         "1170x2532; 458203273)", "iPhone14,2", "Apple", "phone"),
        ("Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
         "(KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1", "iPad", "Apple", "tablet"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
         "(KHTML, like Gecko) Version/17.1 Safari/605.1.15", "Mac", "Apple", "computer"),
        (WINDOWS_UA, None, None, "computer"),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
         None, None, "computer"),
        (TIZEN_UA, None, "Samsung", "tv"),
        ("Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/79.0.3945.79 Safari/537.36 WebAppManager", None, "LG", "tv"),
        ("Roku/DVP-9.10 (519.10E04111A)", None, "Roku", "tv"),
        ("Mozilla/5.0 (X11; Linux armv7l) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/114.0.0.0 Safari/537.36 CrKey/1.56.500000", "Chromecast", "Google", "tv"),
        ("Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 "
         "(KHTML, like Gecko) Version/13.0 Safari/605.1.15", "PlayStation 5", "Sony", "tv"),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox Series X) AppleWebKit/537.36 "
         "(KHTML, like Gecko) Chrome/48.0.2564.82 Safari/537.36 Edge/20.02",
         "Xbox Series X", "Microsoft", "tv"),
        ("AppleCoreMedia/1.0.0.20K71 (Apple TV; U; CPU OS 16_1 like Mac OS X; en_us)",
         "Apple TV", "Apple", "tv"),
        ("HbbTV/1.4.1 (+DRM; Panasonic; VIERA 2016; 3.101; 4301-0003 0002-0000; ;)",
         "VIERA 2016", "Panasonic", "tv"),
        ("ESP32HTTPClient", None, "Espressif", "iot"),
    ],
)  # fmt: skip
def test_user_agent_model_vendor_kind(
    ua: str, model: str | None, vendor: str | None, kind: str
) -> None:
    hint = parse_user_agent(ua)
    assert hint is not None
    assert (hint.model, hint.vendor, hint.kind) == (model, vendor, kind)
    assert hint.rank > 0 and hint.evidence.startswith("ua:")


def test_user_agent_evidence_strings() -> None:
    redmi = parse_user_agent(REDMI_UA)
    assert redmi is not None
    assert redmi.evidence == "ua:Android phone model Redmi Note 8 Pro"
    assert redmi.os == "Android 10"
    galaxy = parse_user_agent(GALAXY_UA)
    assert galaxy is not None and galaxy.evidence == "ua:Android phone model SM-S911B"


@pytest.mark.parametrize(
    "ua",
    [
        "okhttp/4.9.2",  # an HTTP library used by apps and IoT alike: proves nothing
        "curl/8.4.0",
        "Go-http-client/1.1",
        "python-requests/2.31.0",
        "",
    ],
)
def test_generic_clients_say_nothing(ua: str) -> None:
    assert parse_user_agent(ua) is None


def test_chrome_reduced_android_ua_has_no_model() -> None:
    hint = parse_user_agent(
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Mobile Safari/537.36"
    )
    assert hint is not None and hint.model is None and hint.kind == "phone"


def test_app_ua_with_country_code_is_not_a_model() -> None:
    hint = parse_user_agent("com.google.android.youtube/17.36.4(Linux; U; Android 12; GB) gzip")
    assert hint is not None and hint.model is None and hint.os == "Android 12"


def test_cfnetwork_names_apple_without_kind() -> None:
    hint = parse_user_agent("Weather/1.0 CFNetwork/1404.0.5 Darwin/22.3.0")
    assert hint is not None and hint.vendor == "Apple" and hint.kind is None and hint.rank == 0


# --- DHCP --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vendor_class", "kind", "os"),
    [
        ("android-dhcp-13", "phone", "Android 13"),
        ("MSFT 5.0", "computer", "Windows"),
        ("udhcp 1.30.1", "iot", "Linux (BusyBox)"),
        ("dhcpcd-9.4.1:Linux-6.1.21-v8+:aarch64:BCM2835", None, "Linux"),
        ("SomethingElse 1.0", None, None),
    ],
)
def test_dhcp_vendor_class(vendor_class: str, kind: str | None, os: str | None) -> None:
    hint = parse_dhcp_vendor_class(vendor_class)
    assert hint is not None
    assert (hint.kind, hint.os) == (kind, os)
    assert hint.evidence == f"dhcp-vendor:{vendor_class}"


@pytest.mark.parametrize(
    ("hostname", "vendor", "kind"),
    [
        ("Johns-iPhone", "Apple", "phone"),
        ("Annas-iPad", "Apple", "tablet"),
        ("DESKTOP-4F2K9QX", None, "computer"),
        ("LGwebOSTV", "LG", "tv"),
        ("espressif", "Espressif", "iot"),
        ("ESP_3A1B2C", "Espressif", "iot"),
        ("zhimi-airpurifier-m1_miio12345678", "Xiaomi", "iot"),
        ("android-1a2b3c4d5e6f7a8b", None, "phone"),
        ("Galaxy-S21", "Samsung", "phone"),
        ("Galaxy-Tab-S7", None, "tablet"),
        ("Redmi-Note-8-Pro", "Xiaomi", "phone"),
        ("Chromecast", "Google", "tv"),
    ],
)
def test_dhcp_hostname(hostname: str, vendor: str | None, kind: str) -> None:
    hint = parse_dhcp_hostname(hostname)
    assert hint is not None and (hint.vendor, hint.kind) == (vendor, kind)


def test_dhcp_hostname_without_meaning() -> None:
    assert parse_dhcp_hostname("kitchen") is None
    assert parse_dhcp_hostname("") is None


@pytest.mark.parametrize(
    ("params", "kind", "os"),
    [
        ((1, 3, 6, 15, 31, 33, 43, 44, 46, 47, 119, 121, 249, 252), "computer", "Windows"),
        ((1, 121, 3, 6, 15, 108, 114, 119, 252, 95, 44, 46), None, "iOS/macOS"),
        ((1, 3, 6, 15, 26, 28, 51, 58, 59, 43), "phone", "Android"),
        ((1, 3, 28, 6), "iot", None),
    ],
)
def test_dhcp_params_weak_hints(params: tuple[int, ...], kind: str | None, os: str | None) -> None:
    hint = dhcp_params_hint(params)
    assert hint is not None and (hint.kind, hint.os) == (kind, os)
    assert hint.evidence.endswith("(weak)")


def test_dhcp_params_without_hint() -> None:
    assert dhcp_params_hint(()) is None
    assert dhcp_params_hint((1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42)) is None


# --- identify: precedence and evidence ---------------------------------------------------------


def test_xiaomi_phone_all_sources(oui: OuiRegistry) -> None:
    ident = identify(
        XIAOMI_MAC,
        dhcp_hostname="Redmi-Note-8-Pro",
        dhcp_vendor_class="android-dhcp-10",
        dhcp_params=(1, 3, 6, 15, 26, 28, 51, 58, 59, 43),
        user_agents=[REDMI_UA, "okhttp/4.9.2", REDMI_UA],
        owner=None,
        oui=oui,
    )
    assert ident == DeviceIdentity(
        vendor="Xiaomi",
        model="Redmi Note 8 Pro",
        kind="phone",
        randomized_mac=False,
        name="Redmi-Note-8-Pro",
        evidence=(
            "ua:Android phone model Redmi Note 8 Pro",
            "dhcp-vendor:android-dhcp-10",
            "dhcp-hostname:Redmi-Note-8-Pro",
            "dhcp-params:looks like Android (weak)",
            "oui:Xiaomi",
        ),
        os="Android 10",
    )


def test_randomized_mac_takes_vendor_from_user_agent(oui: OuiRegistry) -> None:
    ident = identify(RANDOM_MAC, user_agents=[GALAXY_UA], oui=oui)
    assert ident.randomized_mac is True
    assert (ident.vendor, ident.model, ident.kind) == ("Samsung", "SM-S911B", "phone")
    assert ident.evidence == ("ua:Android phone model SM-S911B", "mac:randomized")
    assert not any(e.startswith("oui:") for e in ident.evidence)


def test_randomized_mac_without_other_facts_is_unknown(oui: OuiRegistry) -> None:
    ident = identify(RANDOM_MAC, oui=oui)
    assert (ident.vendor, ident.model, ident.kind, ident.name) == (None, None, "unknown", None)
    assert ident.evidence == ("mac:randomized",)


def test_samsung_tv(oui: OuiRegistry) -> None:
    ident = identify(SAMSUNG_MAC, user_agents=[TIZEN_UA], dhcp_vendor_class="udhcp 1.30.1", oui=oui)
    assert (ident.vendor, ident.kind, ident.os) == ("Samsung", "tv", "Tizen")
    assert ident.evidence[0] == "ua:Samsung Tizen TV"
    assert "dhcp-vendor:udhcp 1.30.1" in ident.evidence


def test_windows_laptop(oui: OuiRegistry) -> None:
    ident = identify(
        INTEL_MAC,
        dhcp_hostname="DESKTOP-4F2K9QX",
        dhcp_vendor_class="MSFT 5.0",
        dhcp_params=(1, 3, 6, 15, 31, 33, 43, 44, 46, 47, 119, 121, 249, 252),
        user_agents=[WINDOWS_UA, "Microsoft-Delivery-Optimization/10.0"],
        oui=oui,
    )
    assert (ident.vendor, ident.kind, ident.os) == ("Intel", "computer", "Windows")
    assert ident.evidence[0] == "ua:Windows computer"


def test_esp_plug_from_dhcp_and_oui_only(oui: OuiRegistry) -> None:
    ident = identify(ESPRESSIF_MAC, dhcp_hostname="ESP_3A1B2C", dhcp_params=(1, 3, 28, 6), oui=oui)
    assert (ident.vendor, ident.kind) == ("Espressif", "iot")
    assert ident.evidence == (
        "dhcp-hostname:ESP_3A1B2C",
        "oui:Espressif",
        "dhcp-params:looks like an embedded stack (weak)",
    )


def test_oui_alone_can_decide_kind(oui: OuiRegistry) -> None:
    assert identify(ROKU_MAC, oui=oui).kind == "tv"
    assert identify(ESPRESSIF_MAC, oui=oui).evidence == ("oui:Espressif",)
    # a maker of many kinds of devices says nothing about the kind
    assert identify(APPLE_MAC, oui=oui).kind == "unknown"


def test_higher_ranked_hint_beats_lower(oui: OuiRegistry) -> None:
    # an Android TV box: DHCP says Android (phone, weak), its UA names a TV model
    ident = identify(
        XIAOMI_MAC,
        dhcp_vendor_class="android-dhcp-9",
        user_agents=["Dalvik/2.1.0 (Linux; U; Android 9; MiTV-MSSP3 MIUI/1.3.87)"],
        oui=oui,
    )
    assert ident.kind == "tv"
    assert ident.evidence[0] == "ua:Android tv model MiTV-MSSP3"


def test_owner_config_wins(oui: OuiRegistry) -> None:
    owner = DeviceConfig(mac=XIAOMI_MAC, name="Grandma's tablet", kind="tablet")
    ident = identify(XIAOMI_MAC, user_agents=[REDMI_UA], owner=owner, oui=oui)
    assert (ident.kind, ident.name, ident.vendor) == ("tablet", "Grandma's tablet", "Xiaomi")
    assert ident.evidence[0] == "config"
    assert "ua:Android phone model Redmi Note 8 Pro" in ident.evidence


def test_owner_name_only_keeps_evidence_based_kind(oui: OuiRegistry) -> None:
    owner = DeviceConfig(mac=ESPRESSIF_MAC, name="Kitchen plug")
    ident = identify(ESPRESSIF_MAC, dhcp_hostname="espressif", owner=owner, oui=oui)
    assert (ident.name, ident.kind) == ("Kitchen plug", "iot")
    assert ident.evidence[:2] == ("config", "dhcp-hostname:espressif")


def test_module_maker_oui_yields_to_user_agent_brand() -> None:
    reg = OuiRegistry({"50:fe:0c": "AzureWave Technology Inc."})
    ident = identify("50:fe:0c:00:00:01", user_agents=[GALAXY_UA], oui=reg)
    assert ident.vendor == "Samsung"
    assert "oui:AzureWave" in ident.evidence
    alone = identify("50:fe:0c:00:00:01", oui=reg)
    assert alone.vendor == "AzureWave"


def test_brand_oui_beats_conflicting_user_agent(oui: OuiRegistry) -> None:
    ident = identify(XIAOMI_MAC, user_agents=[GALAXY_UA], oui=oui)
    assert ident.vendor == "Xiaomi"  # the hardware's registry entry over an app's claim
    assert ident.model == "SM-S911B"


def test_specific_model_beats_family_and_majority_wins(oui: OuiRegistry) -> None:
    apple_app = "Instagram 275.0.0.27.98 (iPhone14,2; iOS 16_3; en_US; en-US; scale=3.00)"
    ident = identify(APPLE_MAC, user_agents=[IPHONE_UA, apple_app], oui=oui)
    assert (ident.model, ident.kind, ident.vendor) == ("iPhone14,2", "phone", "Apple")
    other = "Spotify/8.8.0 iOS/16.3 (iPhone14,5)"
    majority = identify(APPLE_MAC, user_agents=[other, apple_app, other + " x"], oui=oui)
    assert majority.model == "iPhone14,5"


def test_kind_is_always_a_config_kind(oui: OuiRegistry) -> None:
    for uas in ([], [REDMI_UA], [TIZEN_UA], ["PlayStation 4 5.55"], [WINDOWS_UA]):
        assert identify(RANDOM_MAC, user_agents=uas, oui=oui).kind in DEVICE_KINDS


def test_bad_mac_raises(oui: OuiRegistry) -> None:
    with pytest.raises(ValueError):
        identify("zz:zz", oui=oui)


def test_device_identifier_enriches_device_records(oui: OuiRegistry) -> None:
    owner = DeviceConfig(mac="64:09:80:12:34:56", name="Work phone", kind="phone")
    ident = DeviceIdentifier(oui, [owner])
    dev = Device(
        mac="64:09:80:12:34:56",
        hostname="Redmi-Note-8-Pro",
        dhcp_vendor_class="android-dhcp-10",
        user_agents=[REDMI_UA],
    )
    result = ident.enrich(dev)
    assert result.name == "Work phone"
    assert dev.extra["vendor"] == "Xiaomi"
    assert dev.extra["model"] == "Redmi Note 8 Pro"
    assert dev.extra["kind"] == "phone"
    assert dev.extra["randomized_mac"] is False
    evidence = dev.extra["evidence"]
    assert isinstance(evidence, list) and evidence[0] == "config"
    stranger = Device(mac=RANDOM_MAC)
    assert ident.identify(stranger).kind == "unknown"


def test_vendor_names_match_the_vendor_map() -> None:
    # device vendors and server vendors share spellings, so first-party traffic is comparable
    from sensor.enrich.device_tables import default_tables
    from sensor.enrich.vendors import VendorMap

    known = set(VendorMap.load().vendors)
    tables = default_tables()  # sensor/data/devices.toml
    names = {b.vendor for b in tables.oui}
    names |= {b.vendor for b in tables.model}
    names |= {h.vendor for h in tables.hostname if h.vendor}
    names |= {r.vendor for r in tables.user_agent if r.vendor}
    assert names - known == set()
