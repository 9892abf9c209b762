"""Server name -> the company that runs it (and what the name is for).

The mapping is data: ``sensor/data/vendors.toml`` (its header documents the format, the sources
and how to add entries). This module loads and validates it and answers two questions:

- `VendorMap.vendor_for_name`: "api.account.xiaomi.com" -> Xiaomi (registrable domain
  xiaomi.com), "fcm.googleapis.com" -> Google, category push (a full-host override).
- `VendorMap.vendor_for_asn_org`: the fallback when the name is unknown or missing, from the AS
  organisation string of the server address ("Beijing Kingsoft Cloud ..." -> Kingsoft Cloud).

Registrable domains come from the Public Suffix List through `publicsuffixlist`
(https://pypi.org/project/publicsuffixlist/), chosen over `tldextract` because it is pure Python
with no dependencies, ships a dated PSL snapshot inside the wheel (its version carries the
snapshot date) and never touches the network or a cache directory unless asked to;
`tldextract` pulls in requests/filelock and needs `suffix_list_urls=()` plus `cache_dir=None`
to stay offline. Measured on the 2-core dev machine: `VendorMap.load()` takes about 80 ms
(55 ms of it building both PSL views, ICANN-only and full) and +4.8 MB RSS; `vendor_for_name`
about 10 us uncached and under 0.1 us from the cache. tldextract (offline, with its imports)
took about 125 ms and +25 MB RSS.

Only the ICANN section of the PSL cuts names into vendor domains: the private section lists
platforms that hand sub-domains to customers (S3 buckets, CloudFront distributions, appspot
apps), and the company running those names is the platform operator. A match of category
"hosting" keeps the customer's part as `VendorMatch.tenant` (cut by the full PSL), so
"x.s3.ap-southeast-1.amazonaws.com" is Amazon Web Services, category hosting, tenant
"x.s3.ap-southeast-1.amazonaws.com". (Some vendors list their own API domains in the private
section too, e.g. googleapis.com, which is why only "hosting" matches get a tenant.)
"""

from __future__ import annotations

import functools
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from sensor.names import REDACTED

if TYPE_CHECKING:
    from sensor.model import Flow

CATEGORIES = ("api", "push", "telemetry", "cdn", "cloud", "ads", "hosting")
"""What a name is for; see the header of vendors.toml for their meaning."""

DATA_FORMAT = 1
DEFAULT_CACHE_SIZE = 16_384

_VENDOR_KEYS = frozenset(
    {"name", "parent", "note", "source", "asn", "domains", "hosts", *CATEGORIES}
)
SHIPPED_FILES: Final = ("vendors.toml", "vendors_services.toml")
"""The map's data files in sensor/data: the hand-curated device and platform vendors, then
the services, SDKs and ad/analytics companies (every block with its `source`). A block in a
later file whose name is already taken adds domains to that company."""
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_CUT_LABEL: Final = REDACTED + "."


class VendorDataError(ValueError):
    """A problem in the vendor data file; the message names file, key and reason."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VendorMatch:
    """The company behind a server name."""

    vendor: str
    """Company name as spelled in vendors.toml (and in device identities)."""
    domain: str
    """The entry that matched: a registrable domain, or a full-host override."""
    category: str | None
    """One of `CATEGORIES`, or None when the data file gives none."""
    parent: str | None = None
    """The group owning the vendor (OnePlus -> Oppo), when the data file says so."""
    tenant: str | None = None
    """For a match of category "hosting" on a platform in the PSL's private section (S3,
    CloudFront, appspot, ...): the customer's registrable name there. The vendor is the
    platform operator, not the customer."""


@dataclass(frozen=True, slots=True)
class Vendor:
    name: str
    parent: str | None
    note: str | None
    asn_patterns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VendorEntry:
    """One name in the map."""

    vendor: str
    category: str | None
    host: bool
    """True for a full-host override, False for a registrable domain."""


class PublicSuffixes:
    """The two views of the shipped Public Suffix List the vendor map needs.

    `icann` honours only the ICANN section (registrable domains of companies); `full` also the
    private section (customers' names on shared platforms). Built once and shared: tests and
    the daemon can hand one instance to several `VendorMap`s.
    """

    def __init__(self) -> None:
        from publicsuffixlist import PublicSuffixList  # the only module importing it

        self._icann = PublicSuffixList(only_icann=True)
        self._full = PublicSuffixList()

    def registrable(self, name: str) -> str | None:
        """ICANN registrable domain ("eTLD+1"), or None if `name` is itself a public suffix."""
        result = self._icann.privatesuffix(name)
        return result if isinstance(result, str) else None

    def private_registrable(self, name: str) -> str | None:
        """Registrable domain per the full list (private section included)."""
        result = self._full.privatesuffix(name)
        return result if isinstance(result, str) else None


def normalize_name(server_name: str) -> str | None:
    """Lower-case ASCII host name without trailing dot or port; None for addresses/garbage."""
    name = server_name.strip().rstrip(".").lower()
    # A name whose data-looking labels were cut (sensor.names.redact_name): "….d.xiaomi.com"
    # still belongs to xiaomi.com.
    while name.startswith(_CUT_LABEL):
        name = name[len(_CUT_LABEL) :]
    if not name or name.startswith("["):
        return None
    if name.count(":") == 1:
        host, _, port = name.partition(":")
        if port.isdigit():
            name = host
    if ":" in name:
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(name) > 253:
        return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return None
    labels = name.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        return None
    return name


class VendorMap:
    """Registrable domain / host -> vendor, plus AS-organisation patterns.

    Build it with `load`; lookups are cached in bounded LRU caches owned by the instance.
    """

    def __init__(
        self,
        vendors: Iterable[Vendor],
        entries: Mapping[str, VendorEntry],
        *,
        psl: PublicSuffixes,
        source: str = "<vendors>",
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.source = source
        self._vendors = {v.name: v for v in vendors}
        self._entries = dict(entries)
        self._psl = psl
        self._asn: list[tuple[re.Pattern[str], str]] = [
            (re.compile(p, re.IGNORECASE), v.name)
            for v in self._vendors.values()
            for p in v.asn_patterns
        ]
        # One alternation of every pattern screens AS names first: most match none, and one
        # C-level search is far cheaper than a Python loop over hundreds (the loop, in file
        # order, then decides between vendors).
        self._any_asn: re.Pattern[str] | None = (
            re.compile("|".join(f"(?:{p.pattern})" for p, _ in self._asn), re.IGNORECASE)
            if self._asn
            else None
        )
        self._name_cache = functools.lru_cache(maxsize=cache_size)(self._lookup_name)
        self._asn_cache = functools.lru_cache(maxsize=max(cache_size // 4, 64))(self._lookup_asn)

    # --- construction --------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        psl: PublicSuffixes | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> VendorMap:
        """Read and validate a vendors.toml; None reads the files shipped in sensor/data
        (`SHIPPED_FILES`)."""
        if path is not None:
            source = str(path)
            try:
                raw = Path(path).read_bytes()
            except OSError as exc:
                raise VendorDataError(source, "-", f"cannot read: {exc.strerror or exc}") from None
            data = _parse_toml(raw, source)
            return cls.from_data(data, source=source, psl=psl, cache_size=cache_size)
        docs = []
        for name in SHIPPED_FILES:
            where = f"sensor/data/{name}"
            raw = resources.files("sensor").joinpath(f"data/{name}").read_bytes()
            docs.append((where, _parse_toml(raw, where)))
        source = " + ".join(w for w, _ in docs)
        return cls.from_data(_combine(docs), source=source, psl=psl, cache_size=cache_size)

    @classmethod
    def from_data(
        cls,
        data: Mapping[str, Any],
        *,
        source: str = "<vendors>",
        psl: PublicSuffixes | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> VendorMap:
        """Validate a parsed vendors document (see vendors.toml for the layout)."""
        psl = psl if psl is not None else PublicSuffixes()
        for key in data:
            if key not in ("format", "vendor"):
                raise VendorDataError(source, key, "unknown key")
        if data.get("format") != DATA_FORMAT:
            raise VendorDataError(source, "format", f"expected {DATA_FORMAT}")
        blocks = data.get("vendor")
        if not isinstance(blocks, list) or not blocks:
            raise VendorDataError(source, "vendor", "expected an array of tables [[vendor]]")

        vendors: list[Vendor] = []
        entries: dict[str, VendorEntry] = {}
        for i, block in enumerate(blocks):
            vendor = _parse_vendor(block, source, f"vendor[{i}]")
            if any(v.name == vendor.name for v in vendors):
                raise VendorDataError(source, f"vendor[{i}].name", f"duplicate {vendor.name!r}")
            vendors.append(vendor)
            where = f"vendor[{i}] ({vendor.name})"
            for key in ("domains", *CATEGORIES):
                category = None if key == "domains" else key
                for name in _str_list(block.get(key, []), source, f"{where}.{key}"):
                    _check_domain(name, psl, source, f"{where}.{key}")
                    _add(entries, name, VendorEntry(vendor.name, category, False), source, where)
            hosts = block.get("hosts", {})
            if not isinstance(hosts, dict):
                raise VendorDataError(source, f"{where}.hosts", "expected a table")
            for name, category in hosts.items():
                if category not in CATEGORIES:
                    raise VendorDataError(
                        source,
                        f"{where}.hosts.{name}",
                        f"category must be one of {', '.join(CATEGORIES)}",
                    )
                _check_host(name, psl, source, f"{where}.hosts")
                _add(entries, name, VendorEntry(vendor.name, category, True), source, where)

        names = {v.name for v in vendors}
        for i, v in enumerate(vendors):
            if v.parent is not None and v.parent not in names:
                raise VendorDataError(
                    source, f"vendor[{i}].parent", f"{v.parent!r} is not a vendor in this file"
                )
        return cls(vendors, entries, psl=psl, source=source, cache_size=cache_size)

    # --- lookups -------------------------------------------------------------------------

    def vendor_for_name(self, server_name: str) -> VendorMatch | None:
        """The company behind a DNS/SNI/Host name, or None when the map does not know it.

        The most specific entry wins: the name itself, then each parent, down to its ICANN
        registrable domain. Addresses, empty or malformed names give None.
        """
        return self._name_cache(server_name)

    def vendor_for_asn_org(self, asn_org: str) -> str | None:
        """The company behind an AS organisation string, via the data file's `asn` patterns.

        A fallback for servers whose name is unknown: it names the network operator (AWS,
        Akamai, Kingsoft Cloud, ...), which for clouds and CDNs is not the party sending.
        """
        return self._asn_cache(asn_org)

    def registrable_domain(self, server_name: str) -> str | None:
        """ICANN registrable domain of a name (None for addresses and public suffixes)."""
        name = normalize_name(server_name)
        return self._psl.registrable(name) if name is not None else None

    def enrich(self, flow: Flow, asn_org: str | None = None) -> VendorMatch | str | None:
        """Add vendor fields to `flow.extra` from its server name, else from `asn_org`.

        Sets ``vendor``, ``vendor_source`` ("name" or "asn") and, for name matches,
        ``vendor_domain``, ``vendor_category`` and ``vendor_tenant`` (when present).
        """
        match = self.vendor_for_name(flow.server_name) if flow.server_name else None
        if match is not None:
            flow.extra["vendor"] = match.vendor
            flow.extra["vendor_source"] = "name"
            flow.extra["vendor_domain"] = match.domain
            flow.extra["vendor_category"] = match.category
            if match.tenant is not None:
                flow.extra["vendor_tenant"] = match.tenant
            return match
        if asn_org:
            vendor = self.vendor_for_asn_org(asn_org)
            if vendor is not None:
                flow.extra["vendor"] = vendor
                flow.extra["vendor_source"] = "asn"
                return vendor
        return None

    # --- introspection -------------------------------------------------------------------

    @property
    def vendors(self) -> Mapping[str, Vendor]:
        return MappingProxyType(self._vendors)

    @property
    def entries(self) -> Mapping[str, VendorEntry]:
        return MappingProxyType(self._entries)

    @property
    def psl(self) -> PublicSuffixes:
        return self._psl

    def cache_info(self) -> dict[str, int]:
        """Hits, misses and sizes of the two lookup caches (for metrics)."""
        n, a = self._name_cache.cache_info(), self._asn_cache.cache_info()
        return {
            "name_hits": n.hits,
            "name_misses": n.misses,
            "name_size": n.currsize,
            "asn_hits": a.hits,
            "asn_misses": a.misses,
            "asn_size": a.currsize,
        }

    # --- uncached implementations --------------------------------------------------------

    def _lookup_name(self, server_name: str) -> VendorMatch | None:
        name = normalize_name(server_name)
        if name is None:
            return None
        registrable = self._psl.registrable(name)
        if registrable is None:
            return None
        labels = name.split(".")
        stop = len(labels) - (registrable.count(".") + 1)
        for i in range(stop + 1):
            candidate = ".".join(labels[i:])
            entry = self._entries.get(candidate)
            if entry is None:
                continue
            tenant = None
            if entry.category == "hosting":
                # a customer's name on a shared platform, as the PSL's private section cuts it
                private = self._psl.private_registrable(name)
                if private is not None and private.endswith("." + candidate):
                    tenant = private
            vendor = self._vendors[entry.vendor]
            return VendorMatch(
                vendor=entry.vendor,
                domain=candidate,
                category=entry.category,
                parent=vendor.parent,
                tenant=tenant,
            )
        return None

    def _lookup_asn(self, asn_org: str) -> str | None:
        text = asn_org.strip()
        if not text or self._any_asn is None or self._any_asn.search(text) is None:
            return None
        for pattern, vendor in self._asn:
            if pattern.search(text):
                return vendor
        return None


# --- validation helpers ----------------------------------------------------------------------


def _parse_toml(raw: bytes, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise VendorDataError(source, "-", f"not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise VendorDataError(source, "-", f"invalid TOML: {exc}") from None


def _combine(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Several vendor documents as one; a later block whose name an earlier one has adds its
    name lists to it (it may carry nothing but name, source and name lists)."""
    blocks: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    for where, doc in docs:
        for key in doc:
            if key not in ("format", "vendor"):
                raise VendorDataError(where, key, "unknown key")
        if doc.get("format") != DATA_FORMAT:
            raise VendorDataError(where, "format", f"expected {DATA_FORMAT}")
        vendors = doc.get("vendor")
        if not isinstance(vendors, list):
            raise VendorDataError(where, "vendor", "expected an array of tables [[vendor]]")
        seen: set[str] = set()
        for i, block in enumerate(vendors):
            if not isinstance(block, dict):
                raise VendorDataError(where, f"vendor[{i}]", "expected a table")
            name = block.get("name")
            if isinstance(name, str) and name in seen:
                raise VendorDataError(where, f"vendor[{i}].name", f"duplicate {name!r}")
            if isinstance(name, str):
                seen.add(name)
            earlier = by_name.get(name) if isinstance(name, str) else None
            if earlier is None:
                copy = dict(block)
                blocks.append(copy)
                if isinstance(name, str):
                    by_name[name] = copy
                continue
            for key, value in block.items():
                if key in ("name", "source"):
                    continue
                if key not in ("domains", *CATEGORIES):
                    raise VendorDataError(
                        where,
                        f"vendor[{i}] ({name}).{key}",
                        "an addition to a company "
                        "from an earlier file carries only name, source and name lists",
                    )
                earlier[key] = [*earlier.get(key, []), *_str_list(value, where, key)]
    return {"format": DATA_FORMAT, "vendor": blocks}


def _parse_vendor(block: Any, source: str, key: str) -> Vendor:
    if not isinstance(block, dict):
        raise VendorDataError(source, key, "expected a table")
    for k in block:
        if k not in _VENDOR_KEYS:
            raise VendorDataError(source, f"{key}.{k}", "unknown key")
    name = block.get("name")
    if not isinstance(name, str) or not name.strip():
        raise VendorDataError(source, f"{key}.name", "expected a non-empty string")
    parent = block.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise VendorDataError(source, f"{key}.parent", "expected a string")
    note = block.get("note")
    if note is not None and not isinstance(note, str):
        raise VendorDataError(source, f"{key}.note", "expected a string")
    where_from = block.get("source")
    if where_from is not None and (not isinstance(where_from, str) or not where_from.strip()):
        raise VendorDataError(source, f"{key}.source", "expected a non-empty string")
    patterns = tuple(_str_list(block.get("asn", []), source, f"{key}.asn"))
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise VendorDataError(source, f"{key}.asn", f"bad pattern {p!r}: {exc}") from None
    return Vendor(name=name, parent=parent, note=note, asn_patterns=patterns)


def _str_list(value: Any, source: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise VendorDataError(source, key, "expected a list of strings")
    return value


def _check_syntax(name: str, source: str, key: str) -> None:
    if normalize_name(name) != name:
        raise VendorDataError(
            source, key, f"{name!r} is not a lower-case ASCII host name (use punycode for IDN)"
        )


def _check_domain(name: str, psl: PublicSuffixes, source: str, key: str) -> None:
    _check_syntax(name, source, key)
    registrable = psl.registrable(name)
    if registrable != name:
        hint = (
            "it is a public suffix"
            if registrable is None
            else f"its registrable domain is {registrable!r}; list it under hosts instead"
        )
        raise VendorDataError(source, key, f"{name!r} is not a registrable domain: {hint}")


def _check_host(name: str, psl: PublicSuffixes, source: str, key: str) -> None:
    _check_syntax(name, source, key)
    registrable = psl.registrable(name)
    if registrable is None or registrable == name:
        raise VendorDataError(
            source,
            key,
            f"{name!r} is a registrable domain or public suffix, not a host below one",
        )


def _add(
    entries: dict[str, VendorEntry], name: str, entry: VendorEntry, source: str, key: str
) -> None:
    previous = entries.get(name)
    if previous is not None:
        raise VendorDataError(
            source, key, f"{name!r} is listed twice ({previous.vendor} and {entry.vendor})"
        )
    entries[name] = entry
