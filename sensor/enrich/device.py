"""Who a LAN device is: vendor, model and kind, from its MAC, DHCP, User-Agents and the owner.

Each source is read by a small pure parser that returns a `Hint` (what it says, how much a
kind claim from it is worth, and a short evidence string); `identify` combines them.

Precedence (what `identify` does):

- kind: the owner's ``[[devices]] kind`` wins outright (evidence "config"). Otherwise the hint
  with the highest rank decides, ties going to the earlier source in the order User-Agent,
  DHCP vendor class, DHCP host name, OUI, DHCP parameter list. Ranks, high to low: a
  User-Agent that names the form factor (iPhone, iPad, "Mobile" Android browser, smart-TV
  platforms, consoles, desktop OSes, ESP HTTP clients, known tablet/TV models) 80; a host
  name that does (iPhone, LGwebOSTV, espressif) 70; DHCP "MSFT 5.0" and softer User-Agent
  guesses (X11 Linux, Windows service agents, an Android browser without "Mobile", taken as a
  tablet) 60; an Android app User-Agent without a telling model (assumed phone) 50; Android
  DHCP vendor class and weaker host names 40; an OUI whose company makes one kind of device
  (Espressif, Roku) 35; BusyBox udhcp 30; the DHCP parameter-request-list fingerprint 15.
  No claim at all gives "unknown". Game consoles count as "tv" (living-room screen devices;
  DEVICE_KINDS has no console kind).
- vendor: the OUI company when the MAC is globally unique and the OUI names a brand this
  module knows; else the brand a User-Agent model names (so for a randomized MAC, where no OUI
  lookup is done, the User-Agent decides); else a brand from the DHCP host name or vendor
  class; else the cleaned-up OUI organisation (module makers such as AzureWave or Hon Hai,
  and organisations this module has no brand for).
- model: the most specific User-Agent model (an Android model string or Apple machine id
  beats a family name such as "iPhone"), the most frequent one among equals.
- name: the owner's ``name``, else the DHCP host name.

`evidence` lists "config" first when the owner set something, then every hint's evidence
string ordered by rank (the first one after "config" decided the kind), then kind-less facts
such as "oui:Xiaomi" or "mac:randomized".

The brand and form-factor tables (OUI organisations, Android models, User-Agents, DHCP host
names) are data, ``sensor/data/devices.toml`` (read once by `device_tables`); the parsers and the
precedence above are code. Vendor names are spelled as in ``sensor/data/vendors.toml`` so a
device's vendor can be compared with the vendor of the servers it talks to.

OUI data: `netaddr`'s copy of the IEEE MA-L registry (35k assignments, netaddr 1.3.0, 2024),
chosen over `manuf` (Wireshark's list as of its 2022 release) for the newer data and the smaller
footprint: netaddr keeps only a 0.6 MB offset index in memory and seeks into its 5.7 MB text
file per lookup. Measured on the 2-core dev machine: `OuiRegistry()` (netaddr import + index)
80-110 ms and +15-18 MB RSS, an uncached lookup 0.1-0.4 ms (cached per OUI here);
`manuf.MacParser()` 155-220 ms and +27 MB RSS. netaddr has no MA-M/MA-S (28/36-bit) blocks:
those OUIs read as "IEEE Registration Authority" and give no vendor.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from sensor.config import DEVICE_KINDS, DeviceConfig, normalize_mac
from sensor.enrich.device_tables import default_tables
from sensor.model import Device

RANK_UA_FORM_FACTOR = 80
RANK_HOSTNAME_STRONG = 70
RANK_UA_DESKTOP_WEAK = 60
RANK_DHCP_WINDOWS = 60
RANK_UA_ANDROID_ASSUMED = 50
RANK_HOSTNAME_WEAK = 40
RANK_DHCP_ANDROID = 40
RANK_OUI_KIND = 35
RANK_DHCP_EMBEDDED = 30
RANK_OUI_COMPUTER = 20
RANK_DHCP_PARAMS = 15

_SOURCE_ORDER = ("ua", "dhcp-vendor", "dhcp-hostname", "oui", "dhcp-params")
_HOSTNAME_RANKS = {"strong": RANK_HOSTNAME_STRONG, "weak": RANK_HOSTNAME_WEAK, "none": 0}
"""The ranks of the host-name table's (``sensor/data/devices.toml``) named strengths."""


@dataclass(frozen=True, slots=True)
class Hint:
    """What one source says about a device."""

    source: str
    """"ua", "dhcp-vendor", "dhcp-hostname", "oui" or "dhcp-params"."""
    evidence: str
    """Short human-readable fact, e.g. "ua:Android phone model Redmi Note 8 Pro"."""
    kind: str | None = None
    rank: int = 0
    """Weight of the kind claim (0: no claim); see the module docstring."""
    vendor: str | None = None
    model: str | None = None
    model_specific: bool = False
    """True for an exact model (SM-S911B, iPhone14,2), False for a family ("iPhone")."""
    os: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What we believe a LAN device is, and why."""

    vendor: str | None
    model: str | None
    kind: str
    """One of `sensor.config.DEVICE_KINDS`."""
    randomized_mac: bool
    """The MAC is locally administered (private/randomized); no OUI lookup was done."""
    name: str | None
    evidence: tuple[str, ...]
    os: str | None = None

    def as_extra(self) -> dict[str, object]:
        """The fields `DeviceIdentifier.enrich` stores in `Device.extra`."""
        return {
            "vendor": self.vendor,
            "model": self.model,
            "kind": self.kind,
            "os": self.os,
            "randomized_mac": self.randomized_mac,
            "name": self.name,
            "evidence": list(self.evidence),
        }


# --- MAC and OUI -----------------------------------------------------------------------------


def is_randomized_mac(mac: str) -> bool:
    """True when the locally-administered bit (0x02 of the first octet) is set."""
    return bool(int(normalize_mac(mac)[:2], 16) & 0x02)


# Radio-module and ODM makers: their OUI says who built the Wi-Fi part, not whose device it is.
_OUI_MODULE_RE = re.compile(
    r"hon hai|murata|azurewave|liteon|universal global scientific|wistron neweb|quectel|fn-link"
    r"|cloud network technology|askey|arcadyan|gaoshengda|alpsalpine|t&w electronics"
    r"|texas instruments|silicon laboratories|realtek|mediatek|qualcomm|broadcom|telink",
    re.IGNORECASE,
)
_OUI_NO_VENDOR_RE = re.compile(r"^(ieee registration authority|private)\b", re.IGNORECASE)
_LEGAL_SUFFIX_RE = re.compile(
    r"[\s,.]*\b(co\.?,?\s*ltd|co|corp|corporation|corporate|inc|incorporated|ltd|limited|llc"
    r"|gmbh|s\.?a\.?s?|b\.?v|ag|oy|ab|a/s|plc|pte|pty|s\.?r\.?l|technology|technologies"
    r"|electronics?|communications?|mobile|telecommunications?|holdings?"
    r"|group|company|industrial|manufacturing)\.?[\s,.]*$",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class OuiVendor:
    """A normalised OUI organisation."""

    vendor: str
    known_brand: bool
    """False for module makers and organisations with no brand entry here."""
    kind: str | None = None


def normalize_org(org: str) -> OuiVendor | None:
    """IEEE organisation -> company as reports show it ("Apple, Inc." -> "Apple").

    Known brands get their canonical spelling (shared with vendors.toml); other names lose
    legal-form suffixes ("Co., Ltd", "Inc.", "Technologies", ...). Registration-authority
    blocks and "Private" give None.
    """
    text = " ".join(org.split())
    if not text or _OUI_NO_VENDOR_RE.match(text):
        return None
    for brand in default_tables().oui:
        if brand.pattern.match(text):
            return OuiVendor(brand.vendor, True, brand.kind)
    cleaned = text
    while True:
        shorter = _LEGAL_SUFFIX_RE.sub("", cleaned)
        if shorter == cleaned or not shorter:
            break
        cleaned = shorter
    cleaned = cleaned.strip(" ,.") or text
    if cleaned.isupper() and len(cleaned) > 5:
        cleaned = cleaned.title()
    return OuiVendor(cleaned, False, None)


class OuiRegistry:
    """MAC -> IEEE organisation, from netaddr's shipped registry or a given table.

    `table` maps "aa:bb:cc" prefixes to organisation strings (tests, or a site's own list);
    without it netaddr is imported on construction (its import reads the offset index).
    Lookups are cached per OUI in a bounded LRU owned by the instance.
    """

    def __init__(self, table: Mapping[str, str] | None = None, *, cache_size: int = 4096) -> None:
        self._lookup: Callable[[int], str | None]
        if table is not None:
            prefixes = {_oui_key(k): v for k, v in table.items()}
            self._lookup = lambda oui: prefixes.get(_oui_text(oui))
        else:
            self._lookup = _netaddr_lookup()
        self._org = functools.lru_cache(maxsize=cache_size)(self._lookup)

    def organization(self, mac: str) -> str | None:
        """The registered organisation for the MAC's OUI, or None (unassigned, randomized)."""
        value = int(normalize_mac(mac).replace(":", ""), 16)
        if value >> 40 & 0x02:
            return None
        return self._org(value >> 24)

    def vendor(self, mac: str) -> OuiVendor | None:
        org = self.organization(mac)
        return normalize_org(org) if org is not None else None


def _oui_key(prefix: str) -> str:
    digits = re.sub(r"[^0-9a-f]", "", prefix.lower())
    if len(digits) != 6:
        raise ValueError(f"not an OUI: {prefix!r}")
    return f"{digits[0:2]}:{digits[2:4]}:{digits[4:6]}"


def _oui_text(oui: int) -> str:
    h = f"{oui:06x}"
    return f"{h[0:2]}:{h[2:4]}:{h[4:6]}"


def _netaddr_lookup() -> Callable[[int], str | None]:
    import netaddr  # imported here, not at module level: it costs ~50 ms
    import netaddr.eui.ieee  # loads the offset index now rather than on the first packet

    def lookup(oui: int) -> str | None:
        try:
            org = netaddr.OUI(oui).registration().org
        except (netaddr.NotRegisteredError, IndexError, ValueError):
            return None
        return str(org) if org else None

    return lookup


def oui_hint(oui: OuiVendor | None) -> Hint | None:
    if oui is None:
        return None
    rank = 0
    if oui.kind == "computer":
        rank = RANK_OUI_COMPUTER
    elif oui.kind is not None:
        rank = RANK_OUI_KIND
    return Hint("oui", f"oui:{oui.vendor}", oui.kind, rank, vendor=oui.vendor)


# --- User-Agents -----------------------------------------------------------------------------

_MODEL_TV_RE = re.compile(r"(?i)\b(tv|android ?tv|google ?tv|smart ?tv|tv ?box)\b")
_MODEL_TABLET_RE = re.compile(r"(?i)\b(tab|tablet|pad)\b")
# Segments of an Android UA's parentheses that are not the model.
_LOCALE_RE = re.compile(r"^[a-zA-Z]{2,3}([-_][a-zA-Z]{2,4})?$")
_NOT_MODEL = frozenset({"linux", "u", "k", "wv", "mobile", "tablet", "x11", "arm", "arm64"})
_ANDROID_PARENS_RE = re.compile(r"\(([^()]*\bAndroid[ /]?[\d.]*[^()]*)\)")
_ANDROID_VERSION_RE = re.compile(r"^Android(?:[ /]([\d.]+))?$")
_TRAILING_TOKEN_RE = re.compile(r"\s+\S+/\S*.*$")
_BUILD_BRAND_RE = re.compile(r"\bBuild/(HUAWEI|HONOR)", re.IGNORECASE)


def model_brand(model: str) -> tuple[str | None, str | None]:
    """(company, kind) an Android model string suggests (`[[model]]` in devices.toml)."""
    for brand in default_tables().model:
        if brand.pattern.match(model):
            vendor, kind = brand.vendor, brand.kind
            if kind is None:
                kind = _generic_model_kind(model)
            return vendor, kind
    return None, _generic_model_kind(model)


def _generic_model_kind(model: str) -> str | None:
    if _MODEL_TV_RE.search(model):
        return "tv"
    if _MODEL_TABLET_RE.search(model):
        return "tablet"
    return None


def android_model(ua: str) -> tuple[str | None, str | None, str | None]:
    """(Android version, model, brand from the build id) from an Android UA's parentheses.

    Handles Dalvik ("Dalvik/2.1.0 (Linux; U; Android 10; Redmi Note 8 Pro MIUI/V12...)"),
    browsers ("Mozilla/5.0 (Linux; Android 13; SM-S911B) ...") and apps that copy the same
    layout. Chrome's reduced UA ("Android 10; K") has no model.
    """
    m = _ANDROID_PARENS_RE.search(ua)
    if m is None:
        return None, None, None
    segments = [s.strip() for s in m.group(1).split(";")]
    version = None
    model = None
    for i, seg in enumerate(segments):
        vm = _ANDROID_VERSION_RE.match(seg)
        if vm is None:
            continue
        version = vm.group(1)
        for cand in segments[i + 1 :]:
            cut = _TRAILING_TOKEN_RE.sub("", cand).strip()
            if not cut or cut.lower() in _NOT_MODEL or _LOCALE_RE.match(cut):
                continue
            model = cut
            break
        break
    bm = _BUILD_BRAND_RE.search(m.group(1))
    build_brand = None if bm is None else ("Huawei" if bm.group(1).upper() == "HUAWEI" else "Honor")
    return version, model, build_brand


_UA_ANDROID_RE = re.compile(r"\bAndroid\b")
_UA_WINDOWS_PHONE_RE = re.compile(r"Windows Phone")
_UA_WINDOWS_RE = re.compile(r"Windows NT [\d.]+")
_UA_WINDOWS_AGENT_RE = re.compile(
    r"^(Microsoft-CryptoAPI|Microsoft-Delivery-Optimization|Windows-Update-Agent|Microsoft BITS)/"
)
_UA_MAC_RE = re.compile(r"\bMacintosh\b|\bMac OS X\b")
_UA_DARWIN_RE = re.compile(r"\bCFNetwork/|\bDarwin/")
_UA_CROS_RE = re.compile(r"\bCrOS\b")
_UA_LINUX_DESKTOP_RE = re.compile(r"\bX11; (?:Linux|Ubuntu|Fedora|FreeBSD|OpenBSD)\b")
_UA_IOS_MACHINE_RE = re.compile(r"(iPhone|iPad|iPod)\d+,\d+")
_UA_HBBTV_RE = re.compile(r"HbbTV/[\d.]+ \(([^)]*)\)")


def parse_user_agent(ua: str) -> Hint | None:
    """What one HTTP User-Agent says about the device sending it, or None.

    Generic HTTP libraries (okhttp, curl, Go-http-client, python-requests) say nothing: apps
    and IoT firmware on every platform use them.
    """
    ua = ua.strip()
    if not ua:
        return None
    for rule in default_tables().user_agent:
        m = rule.pattern.search(ua)
        if m is None:
            continue
        model = rule.model
        specific = False
        if rule.model_group is not None:
            model = m.group(rule.model_group)
            specific = bool(_UA_IOS_MACHINE_RE.fullmatch(model))
        kind = rule.kind
        if kind is None and model is not None:  # an Apple machine id: iPhone14,2 / iPad13,4
            kind = {"iPhone": "phone", "iPad": "tablet", "iPod": "phone"}.get(
                re.sub(r"[\d,]+$", "", model)
            )
        vendor = rule.vendor
        if rule.label == "smart TV":
            hb = _UA_HBBTV_RE.search(ua)
            if hb is not None:
                fields = [f.strip() for f in hb.group(1).split(";")]
                if len(fields) > 2 and fields[1]:
                    vendor, model = fields[1], fields[2] or None
        label = rule.label if model is None or model == rule.label else f"{rule.label} {model}"
        return Hint(
            "ua",
            f"ua:{label}",
            kind,
            RANK_UA_FORM_FACTOR if kind is not None else 0,
            vendor=vendor,
            model=model,
            model_specific=specific,
            os=rule.os,
        )
    if _UA_WINDOWS_PHONE_RE.search(ua):
        return Hint("ua", "ua:Windows Phone", "phone", RANK_UA_FORM_FACTOR, os="Windows Phone")
    if _UA_ANDROID_RE.search(ua):
        return _android_hint(ua)
    if _UA_WINDOWS_RE.search(ua):
        return Hint("ua", "ua:Windows computer", "computer", RANK_UA_FORM_FACTOR, os="Windows")
    if _UA_WINDOWS_AGENT_RE.search(ua):
        return Hint("ua", "ua:Windows service", "computer", RANK_UA_DESKTOP_WEAK, os="Windows")
    if _UA_CROS_RE.search(ua):
        return Hint("ua", "ua:ChromeOS computer", "computer", RANK_UA_FORM_FACTOR, os="ChromeOS")
    if _UA_MAC_RE.search(ua):
        # iPadOS Safari asks for desktop sites with this UA too; an iPad's apps usually say iPad
        return Hint(
            "ua",
            "ua:Mac computer",
            "computer",
            RANK_UA_FORM_FACTOR,
            vendor="Apple",
            model="Mac",
            os="macOS",
        )
    if _UA_DARWIN_RE.search(ua):
        return Hint("ua", "ua:Apple CFNetwork", vendor="Apple")
    if _UA_LINUX_DESKTOP_RE.search(ua):
        return Hint("ua", "ua:Linux desktop", "computer", RANK_UA_DESKTOP_WEAK, os="Linux")
    return None


def _android_hint(ua: str) -> Hint:
    version, model, build_brand = android_model(ua)
    os = f"Android {version}" if version else "Android"
    vendor, kind = model_brand(model) if model is not None else (None, None)
    vendor = vendor or build_brand
    rank = RANK_UA_FORM_FACTOR
    if kind is None:
        if ua.startswith("Mozilla/"):
            # browsers: phones send "Mobile", tablets (and TV browsers) leave it out
            kind = "phone" if re.search(r"\bMobile\b", ua) else "tablet"
            rank = RANK_UA_FORM_FACTOR if kind == "phone" else RANK_UA_DESKTOP_WEAK
        else:
            kind, rank = "phone", RANK_UA_ANDROID_ASSUMED
    evidence = f"ua:Android {kind}" + (f" model {model}" if model else "")
    return Hint(
        "ua",
        evidence,
        kind,
        rank,
        vendor=vendor,
        model=model,
        model_specific=model is not None,
        os=os,
    )


# --- DHCP ------------------------------------------------------------------------------------

_DHCP_ANDROID_RE = re.compile(r"^android-dhcp-(\d+)", re.IGNORECASE)
_DHCP_MSFT_RE = re.compile(r"^MSFT( 5\.0| 98)?\b")
_DHCP_DHCPCD_RE = re.compile(r"^dhcpcd-([\d.]+)")
_DHCP_UDHCP_RE = re.compile(r"^udhcpc?\b")
_DHCP_HUAWEI_RE = re.compile(r"^(HUAWEI|HONOR):android:", re.IGNORECASE)


def parse_dhcp_vendor_class(vendor_class: str) -> Hint | None:
    """DHCP option 60 (v4) / 16 (v6): which DHCP client, hence which OS."""
    vc = vendor_class.strip()
    if not vc:
        return None
    evidence = f"dhcp-vendor:{vc[:64]}"
    if m := _DHCP_ANDROID_RE.match(vc):
        return Hint("dhcp-vendor", evidence, "phone", RANK_DHCP_ANDROID, os=f"Android {m[1]}")
    if m := _DHCP_HUAWEI_RE.match(vc):
        brand = "Huawei" if m[1].upper() == "HUAWEI" else "Honor"
        return Hint("dhcp-vendor", evidence, "phone", RANK_DHCP_ANDROID, vendor=brand, os="Android")
    if _DHCP_MSFT_RE.match(vc):
        return Hint("dhcp-vendor", evidence, "computer", RANK_DHCP_WINDOWS, os="Windows")
    if _DHCP_UDHCP_RE.match(vc):
        return Hint("dhcp-vendor", evidence, "iot", RANK_DHCP_EMBEDDED, os="Linux (BusyBox)")
    if _DHCP_DHCPCD_RE.match(vc):
        # Raspberry Pi OS, ChromeOS, old Android alike: names the OS family only
        return Hint("dhcp-vendor", evidence, os="Linux")
    return Hint("dhcp-vendor", evidence)


def parse_dhcp_hostname(hostname: str) -> Hint | None:
    """DHCP option 12 (or the FQDN option): default host names give the platform away."""
    name = hostname.strip().split(".")[0]
    if not name:
        return None
    for entry in default_tables().hostname:
        if entry.pattern.search(name):
            rank = _HOSTNAME_RANKS[entry.rank]
            evidence = f"dhcp-hostname:{name[:64]}"
            return Hint("dhcp-hostname", evidence, entry.kind, rank, vendor=entry.vendor)
    return None


def dhcp_params_hint(params: Sequence[int]) -> Hint | None:
    """Weak hint from the DHCP parameter request list (option 55).

    Only a few option choices that one client family makes are used: 249 (Microsoft classless
    routes) with 252 (WPAD) is Windows; 95 (LDAP) with 252 is Apple; 58/59 (renewal times)
    with 43 and no 249 is Android's client; a bare list of at most four of 1, 3, 6, 28, 42 is
    a small embedded stack such as lwIP on ESP chips.
    """
    if not params:
        return None
    s = set(params)
    if {249, 252} <= s:
        return Hint(
            "dhcp-params",
            "dhcp-params:looks like Windows (weak)",
            "computer",
            RANK_DHCP_PARAMS,
            os="Windows",
        )
    if {95, 252} <= s:
        return Hint("dhcp-params", "dhcp-params:looks like Apple (weak)", os="iOS/macOS")
    if {43, 58, 59} <= s:
        return Hint(
            "dhcp-params",
            "dhcp-params:looks like Android (weak)",
            "phone",
            RANK_DHCP_PARAMS,
            os="Android",
        )
    if len(s) <= 4 and s <= {1, 3, 6, 28, 42}:
        return Hint(
            "dhcp-params",
            "dhcp-params:looks like an embedded stack (weak)",
            "iot",
            RANK_DHCP_PARAMS,
        )
    return None


# --- combining -------------------------------------------------------------------------------


def identify(
    mac: str,
    *,
    dhcp_hostname: str | None = None,
    dhcp_vendor_class: str | None = None,
    dhcp_params: Sequence[int] = (),
    user_agents: Iterable[str] = (),
    owner: DeviceConfig | None = None,
    oui: OuiRegistry,
) -> DeviceIdentity:
    """Combine everything known about one MAC into a `DeviceIdentity` (see module docstring)."""
    mac = normalize_mac(mac)
    randomized = is_randomized_mac(mac)

    ua_hints = [h for h in (parse_user_agent(ua) for ua in dict.fromkeys(user_agents)) if h]
    hints: list[Hint] = list(ua_hints)
    if dhcp_vendor_class and (h := parse_dhcp_vendor_class(dhcp_vendor_class)):
        hints.append(h)
    if dhcp_hostname and (h := parse_dhcp_hostname(dhcp_hostname)):
        hints.append(h)
    oui_vendor = None if randomized else oui.vendor(mac)
    if h := oui_hint(oui_vendor):
        hints.append(h)
    if h := dhcp_params_hint(dhcp_params):
        hints.append(h)

    order = {s: i for i, s in enumerate(_SOURCE_ORDER)}
    ranked = sorted(hints, key=lambda h: (-h.rank, order[h.source]))
    evidence: list[str] = []
    if owner is not None and (owner.kind is not None or owner.name is not None):
        evidence.append("config")
    if owner is not None and owner.kind is not None and owner.kind in DEVICE_KINDS:
        kind = owner.kind
    else:
        kind = next((h.kind for h in ranked if h.kind is not None and h.rank > 0), "unknown")
    evidence.extend(h.evidence for h in ranked)
    if randomized:
        evidence.append("mac:randomized")

    return DeviceIdentity(
        vendor=_pick_vendor(oui_vendor, hints),
        model=_pick_model(ua_hints),
        kind=kind,
        randomized_mac=randomized,
        name=(owner.name if owner is not None and owner.name else None)
        or (dhcp_hostname.strip() if dhcp_hostname and dhcp_hostname.strip() else None),
        evidence=tuple(dict.fromkeys(evidence)),
        os=next((h.os for h in sorted(hints, key=lambda h: -h.rank) if h.os), None),
    )


def _pick_vendor(oui_vendor: OuiVendor | None, hints: Sequence[Hint]) -> str | None:
    if oui_vendor is not None and oui_vendor.known_brand:
        return oui_vendor.vendor
    for source in ("ua", "dhcp-hostname", "dhcp-vendor"):
        for h in sorted((h for h in hints if h.source == source), key=lambda h: -h.rank):
            if h.vendor:
                return h.vendor
    return oui_vendor.vendor if oui_vendor is not None else None


def _pick_model(ua_hints: Sequence[Hint]) -> str | None:
    models = [h for h in ua_hints if h.model]
    if not models:
        return None
    best = max(h.model_specific for h in models)
    counts = Counter(h.model for h in models if h.model_specific == best)
    return counts.most_common(1)[0][0]


class DeviceIdentifier:
    """Holds the OUI registry and the owner's device list; identifies `Device` records."""

    def __init__(self, oui: OuiRegistry, devices: Iterable[DeviceConfig] = ()) -> None:
        self.oui = oui
        self._owner = {normalize_mac(d.mac): d for d in devices}

    def identify(self, device: Device) -> DeviceIdentity:
        return identify(
            device.mac,
            dhcp_hostname=device.hostname,
            dhcp_vendor_class=device.dhcp_vendor_class,
            dhcp_params=device.dhcp_params,
            user_agents=device.user_agents,
            owner=self._owner.get(normalize_mac(device.mac)),
            oui=self.oui,
        )

    def enrich(self, device: Device) -> DeviceIdentity:
        """Identify `device` and store the result in ``device.extra`` (see `as_extra`)."""
        identity = self.identify(device)
        device.extra.update(identity.as_extra())
        return identity
