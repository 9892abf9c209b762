"""Cloud provider, region and service of a server address, from the providers' own files.

Each provider publishes its address ranges in a machine-readable file (see `CLOUD_SOURCES`;
`datafiles.py` downloads them into the state directory's data folder). A parser per format
turns a file into `CloudPrefix` entries and rejects anything malformed, so the same parsers
validate downloads. `CloudRanges` loads every file present, one broken file not stopping the
others, and flattens all prefixes into disjoint intervals (`geo.RangeIndex`) where the most
specific prefix wins. Fields a specific entry lacks are inherited from the enclosing prefix of
the same provider: an Azure service tag without a region gets the region of the `AzureCloud`
block it sits in; an AWS "AMAZON" entry takes the service name of a more specific or
equal-prefix entry such as "EC2".

Regions map to a country and city through `sensor/data/cloud_regions.toml`; RFC 8805 geofeeds
(DigitalOcean, Linode, Vultr, Huawei Cloud) carry their own country and city per prefix.
"""

from __future__ import annotations

import csv
import functools
import ipaddress
import json
import logging
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, NamedTuple

from sensor.enrich.geo import IpKey, RangeIndex, flatten, ip_key, parse_prefix

log = logging.getLogger(__name__)

MAX_RECORDS: Final = 2_000_000
"""A range file with more entries than this is rejected (the largest, Azure, has ~90k)."""

REGION_TABLE: Final = "data/cloud_regions.toml"


class CloudDataError(ValueError):
    """A range file that does not parse; the message says why."""


@dataclass(frozen=True, slots=True)
class CloudInfo:
    """Which cloud an address belongs to, and where."""

    provider: str
    """Short provider name: aws, google, azure, oracle, cloudflare, fastly, digitalocean, ..."""
    region: str | None = None
    """The provider's region name (e.g. "ap-southeast-1"); for geofeed sources the RFC 8805
    region (ISO 3166-2, e.g. "US-NJ"). None for global/anycast ranges."""
    service: str | None = None
    """The provider's service label where it publishes one (AWS "EC2", Azure "AzureStorage")."""
    country: str | None = None
    """ISO 3166-1 alpha-2 code of the region's location."""
    city: str | None = None


class CloudPrefix(NamedTuple):
    """One range-file entry, as parsed."""

    net: tuple[int, int, int]
    """(family, first, last) from `geo.parse_prefix`."""
    region: str | None = None
    service: str | None = None
    generic: bool = False
    """The service is the provider-wide catch-all (AWS "AMAZON", Azure "AzureCloud"), so a
    more specific service label for the same addresses is preferred."""
    located: bool = False
    """The entry says where it is, even if that is "global": it does not inherit a location
    from an enclosing prefix."""
    country: str | None = None
    """Country and city given by the file itself (geofeeds)."""
    city: str | None = None
    border_group: str | None = None
    """AWS network border group (Local/Wavelength Zone), when it names a different location."""


Parser = Callable[[bytes], list[CloudPrefix]]


# --- parsers --------------------------------------------------------------------------------------


def _json(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CloudDataError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CloudDataError("not a JSON object")
    return doc


def _list(doc: Mapping[str, Any], key: str, *, required: bool = True) -> list[Any]:
    value = doc.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise CloudDataError(f"{key!r}: expected a list")
    return value


def _str(entry: Any, key: str, *, required: bool = True) -> str | None:
    if not isinstance(entry, dict):
        raise CloudDataError(f"expected an object, got {type(entry).__name__}")
    value = entry.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise CloudDataError(f"{key!r}: expected a string in {str(entry)[:80]}")
    return value


def _net(text: Any) -> tuple[int, int, int]:
    if not isinstance(text, str):
        raise CloudDataError(f"expected a prefix string, got {type(text).__name__}")
    try:
        return parse_prefix(text)
    except ValueError as exc:
        raise CloudDataError(str(exc)) from None


def _checked(entries: list[CloudPrefix]) -> list[CloudPrefix]:
    if not entries:
        raise CloudDataError("no prefixes")
    if len(entries) > MAX_RECORDS:
        raise CloudDataError(f"{len(entries)} prefixes, more than the limit of {MAX_RECORDS}")
    return entries


def parse_aws(data: bytes) -> list[CloudPrefix]:
    """AWS ip-ranges.json: prefixes / ipv6_prefixes with region, service, network_border_group.

    Region "GLOBAL" (CloudFront, Route 53, Global Accelerator edges) becomes None.
    """
    doc = _json(data)
    out: list[CloudPrefix] = []
    for key, field in (("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")):
        for entry in _list(doc, key, required=key == "prefixes"):
            net = _net(_str(entry, field))
            region = _str(entry, "region")
            service = _str(entry, "service")
            nbg = _str(entry, "network_border_group", required=False)
            out.append(
                CloudPrefix(
                    net,
                    region=None if region == "GLOBAL" else region,
                    service=service,
                    generic=service == "AMAZON",
                    located=True,
                    border_group=nbg if nbg and nbg not in (region, "GLOBAL") else None,
                )
            )
    return _checked(out)


def parse_google(data: bytes) -> list[CloudPrefix]:
    """Google Cloud cloud.json: prefixes with ipv4Prefix or ipv6Prefix, scope, service."""
    doc = _json(data)
    out: list[CloudPrefix] = []
    for entry in _list(doc, "prefixes"):
        text = _str(entry, "ipv4Prefix", required=False) or _str(entry, "ipv6Prefix")
        scope = _str(entry, "scope", required=False)
        service = _str(entry, "service", required=False)
        out.append(
            CloudPrefix(
                _net(text),
                region=None if scope in (None, "", "global") else scope,
                service=service,
                generic=service in (None, "Google Cloud"),
                located=True,
            )
        )
    return _checked(out)


def parse_azure(data: bytes) -> list[CloudPrefix]:
    """Azure Service Tags (ServiceTags_Public_*.json): values[].properties.addressPrefixes.

    The region is properties.region; an empty region marks a global tag, whose prefixes take
    the region of the regional block that contains them, if any.
    """
    doc = _json(data)
    out: list[CloudPrefix] = []
    for value in _list(doc, "values"):
        name = _str(value, "name")
        props = value.get("properties")
        if not isinstance(props, dict):
            raise CloudDataError(f"{name}: 'properties': expected an object")
        region = _str(props, "region", required=False) or None
        service = _str(props, "systemService", required=False) or (name or "").split(".")[0]
        for text in _list(props, "addressPrefixes"):
            out.append(
                CloudPrefix(
                    _net(text),
                    region=region,
                    service=service or None,
                    generic=service in ("", "AzureCloud"),
                    located=region is not None,
                )
            )
    return _checked(out)


def parse_oracle(data: bytes) -> list[CloudPrefix]:
    """Oracle public_ip_ranges.json: regions[].cidrs[] with cidr and tags (OCI, OSN, ...)."""
    doc = _json(data)
    out: list[CloudPrefix] = []
    for region_entry in _list(doc, "regions"):
        region = _str(region_entry, "region")
        for cidr in _list(region_entry, "cidrs"):
            tags = cidr.get("tags") if isinstance(cidr, dict) else None
            tag_list = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
            service = ",".join(tag_list) or None
            out.append(
                CloudPrefix(
                    _net(_str(cidr, "cidr")),
                    region=region or None,
                    service=service,
                    generic=service in (None, "OCI"),
                    located=True,
                )
            )
    return _checked(out)


def parse_fastly(data: bytes) -> list[CloudPrefix]:
    """Fastly public-ip-list: {"addresses": [...], "ipv6_addresses": [...]} (anycast)."""
    doc = _json(data)
    out = [
        CloudPrefix(_net(text), located=True)
        for key in ("addresses", "ipv6_addresses")
        for text in _list(doc, key, required=key == "addresses")
    ]
    return _checked(out)


def parse_vultr(data: bytes) -> list[CloudPrefix]:
    """Vultr's geofeed as JSON: {"subnets": [{"ip_prefix", "alpha2code", "region", "city"}]}.

    The country is alpha2code, or else the part before "-" of the ISO 3166-2 region.
    """
    doc = _json(data)
    out: list[CloudPrefix] = []
    for entry in _list(doc, "subnets"):
        net = _net(_str(entry, "ip_prefix"))
        region = _str(entry, "region", required=False) or None
        city = _str(entry, "city", required=False) or None
        country = _str(entry, "alpha2code", required=False) or (
            region.partition("-")[0] if region else None
        )
        if country is not None and not (len(country) == 2 and country.isascii()):
            raise CloudDataError(f"bad country code {country!r}")
        out.append(
            CloudPrefix(
                net,
                region=region,
                country=country.upper() if country else None,
                city=city,
                located=True,
            )
        )
    return _checked(out)


def _text_lines(data: bytes) -> list[str]:
    if b"\0" in data:
        raise CloudDataError("binary data, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CloudDataError(f"not UTF-8: {exc}") from None
    return text.splitlines()


def parse_prefix_list(data: bytes) -> list[CloudPrefix]:
    """A plain list, one prefix per line (Cloudflare ips-v4 / ips-v6); '#' starts a comment.

    Every line must be a prefix with a length, so a file cut inside its last line is rejected.
    """
    out: list[CloudPrefix] = []
    for n, line in enumerate(_text_lines(data), 1):
        line = line.partition("#")[0].strip()
        if not line:
            continue
        if "/" not in line:
            raise CloudDataError(f"line {n}: not a prefix: {line[:60]!r}")
        try:
            out.append(CloudPrefix(parse_prefix(line), located=True))
        except ValueError as exc:
            raise CloudDataError(f"line {n}: {exc}") from None
    return _checked(out)


def parse_geofeed(data: bytes) -> list[CloudPrefix]:
    """RFC 8805 geofeed CSV: prefix,country,region,city[,postal]; '#' lines are comments."""
    out: list[CloudPrefix] = []
    try:
        for n, row in enumerate(csv.reader(_text_lines(data)), 1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            try:
                net = parse_prefix(row[0])
            except ValueError as exc:
                raise CloudDataError(f"line {n}: {exc}") from None
            fields = [f.strip() for f in row[1:4]] + [""] * (4 - len(row))
            country, region, city = (f or None for f in fields[:3])
            if country is not None:
                country = country.upper()
                if len(country) != 2 or not country.isascii() or not country.isalpha():
                    raise CloudDataError(f"line {n}: bad country code {fields[0]!r}")
            out.append(CloudPrefix(net, region=region, country=country, city=city, located=True))
    except csv.Error as exc:
        raise CloudDataError(f"bad CSV: {exc}") from None
    return _checked(out)


# --- sources ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CloudSource:
    """One published range file."""

    name: str
    """Source name, as used in `[update.urls]` and the manifest."""
    provider: str
    filename: str
    """Name in the data folder: the one the provider publishes it under."""
    parse: Parser
    import_names: tuple[str, ...]
    """Glob patterns `update-data --from DIR` accepts; with several matches the last in sort
    order wins (so the newest of dated Azure files)."""


CLOUD_SOURCES: Final[tuple[CloudSource, ...]] = (
    CloudSource("aws", "aws", "ip-ranges.json", parse_aws, ("ip-ranges.json",)),
    CloudSource("google", "google", "cloud.json", parse_google, ("cloud.json",)),
    CloudSource(
        "azure",
        "azure",
        "ServiceTags_Public.json",
        parse_azure,
        ("ServiceTags_Public.json", "ServiceTags_Public_*.json"),
    ),
    CloudSource(
        "oracle", "oracle", "public_ip_ranges.json", parse_oracle, ("public_ip_ranges.json",)
    ),
    CloudSource(
        "cloudflare-v4", "cloudflare", "ips-v4", parse_prefix_list, ("ips-v4", "ips-v4.txt")
    ),
    CloudSource(
        "cloudflare-v6", "cloudflare", "ips-v6", parse_prefix_list, ("ips-v6", "ips-v6.txt")
    ),
    CloudSource(
        "fastly",
        "fastly",
        "public-ip-list",
        parse_fastly,
        ("public-ip-list", "public-ip-list.json"),
    ),
    CloudSource("digitalocean", "digitalocean", "google.csv", parse_geofeed, ("google.csv",)),
    CloudSource("linode", "linode", "linode-geofeed.csv", parse_geofeed, ("linode-geofeed.csv",)),
    CloudSource("vultr", "vultr", "vultr-geofeed.json", parse_vultr, ("vultr-geofeed.json",)),
    CloudSource("huawei", "huawei", "google-geo-feed.csv", parse_geofeed, ("google-geo-feed.csv",)),
)

SOURCES_BY_NAME: Final = {s.name: s for s in CLOUD_SOURCES}


# --- region table ------------------------------------------------------------------------------

Location = tuple[str | None, str | None]
"""(country, city)."""
RegionTable = dict[str, dict[str, Location]]
"""provider (or "aws-border-groups") -> region name -> location."""


def load_region_table(path: str | Path | None = None) -> RegionTable:
    """Read `cloud_regions.toml` (default: the copy in the package). CloudDataError if broken."""
    try:
        if path is None:
            text = resources.files("sensor").joinpath(REGION_TABLE).read_text(encoding="utf-8")
            source = f"sensor/{REGION_TABLE}"
        else:
            text = Path(path).read_text(encoding="utf-8")
            source = str(path)
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CloudDataError(f"region table: {exc}") from None
    table: RegionTable = {}
    for provider, regions in data.items():
        if not isinstance(regions, dict):
            raise CloudDataError(f"{source}: {provider}: expected a table")
        table[provider] = {}
        for region, loc in regions.items():
            where = f"{source}: {provider}.{region}"
            if not isinstance(loc, dict) or set(loc) - {"country", "city"}:
                raise CloudDataError(f"{where}: expected {{ country = .., city = .. }}")
            country, city = loc.get("country"), loc.get("city")
            if country is not None and not (
                isinstance(country, str) and len(country) == 2 and country.isupper()
            ):
                raise CloudDataError(f"{where}: country must be a two-letter upper-case code")
            if city is not None and not isinstance(city, str):
                raise CloudDataError(f"{where}: city must be a string")
            table[provider][region] = (country, city)
    return table


# --- lookup -------------------------------------------------------------------------------------


class _Resolved(NamedTuple):
    provider: str
    region: str | None
    service: str | None
    generic: bool
    located: bool
    country: str | None
    city: str | None


def _combine(inner: _Resolved, outer: _Resolved | None) -> _Resolved:
    """An inner (more specific) entry, completed from the enclosing entry of its provider."""
    if outer is None or outer.provider != inner.provider:
        return inner
    if inner.located and not inner.generic and inner.service is not None:
        return inner  # nothing to inherit
    region, located, country, city = inner.region, inner.located, inner.country, inner.city
    if not located and outer.located:
        region, located, country, city = outer.region, True, outer.country, outer.city
    service, generic = inner.service, inner.generic
    if (generic or service is None) and outer.service is not None and not outer.generic:
        service, generic = outer.service, False
    elif service is None:
        service, generic = outer.service, outer.generic
    return _Resolved(inner.provider, region, service, generic, located, country, city)


class CloudRanges:
    """Address -> `CloudInfo` over every loaded range file; most specific prefix wins."""

    def __init__(
        self,
        entries: Mapping[str, Sequence[CloudPrefix]] | None = None,
        *,
        regions: RegionTable | None = None,
    ) -> None:
        """`entries`: source name (a `CLOUD_SOURCES` name, or "provider:anything" for extra
        data) -> parsed entries."""
        self.regions: RegionTable = regions if regions is not None else load_region_table()
        self.errors: dict[str, str] = {}
        """Source name -> why its file was not loaded."""
        self.counts: dict[str, int] = {}
        """Source name -> prefixes loaded."""
        self.unknown_regions: set[tuple[str, str]] = set()
        """(provider, region) pairs missing from the region table."""
        self._index = RangeIndex()
        self._values: list[CloudInfo] = []
        if entries:
            self._build(entries)

    @classmethod
    def load_files(
        cls, files: Mapping[str, str | Path], *, regions: RegionTable | None = None
    ) -> CloudRanges:
        """Source name -> file path; a file that cannot be read or parsed is skipped and noted
        in `errors` (and logged), the others load."""
        parsed: dict[str, list[CloudPrefix]] = {}
        errors: dict[str, str] = {}
        for name, path in files.items():
            source = SOURCES_BY_NAME.get(name)
            if source is None:
                errors[name] = "unknown source"
                continue
            try:
                parsed[name] = source.parse(Path(path).read_bytes())
            except (OSError, CloudDataError) as exc:
                errors[name] = f"{path}: {exc}"
        ranges = cls(parsed, regions=regions)
        ranges.errors.update(errors)
        for name, err in errors.items():
            log.warning("cloud ranges: %s: %s", name, err)
        return ranges

    @classmethod
    def load_dir(cls, data_dir: str | Path, *, regions: RegionTable | None = None) -> CloudRanges:
        """Every `CLOUD_SOURCES` file present in `data_dir` (absent files are not errors)."""
        data_dir = Path(data_dir)
        files = {s.name: data_dir / s.filename for s in CLOUD_SOURCES}
        return cls.load_files({n: p for n, p in files.items() if p.is_file()}, regions=regions)

    def _location(self, provider: str, e: CloudPrefix) -> Location:
        if e.country is not None or e.city is not None:
            return e.country, e.city
        if e.border_group is not None and provider == "aws":
            loc = self.regions.get("aws-border-groups", {}).get(e.border_group)
            if loc is not None:
                return loc
        if e.region is None:
            return None, None
        loc = self.regions.get(provider, {}).get(e.region)
        if loc is None:
            if provider in self.regions:  # geofeed regions are not in the table
                self.unknown_regions.add((provider, e.region))
            return None, None
        return loc

    def _build(self, entries: Mapping[str, Sequence[CloudPrefix]]) -> None:
        v4: list[tuple[int, int, int, _Resolved]] = []
        v6: list[tuple[int, int, int, _Resolved]] = []
        cache: dict[tuple[Any, ...], _Resolved] = {}
        for name, rows in entries.items():
            source = SOURCES_BY_NAME.get(name)
            provider = source.provider if source is not None else name.partition(":")[0]
            for e in rows:
                # many entries share everything but the prefix; resolve each kind once
                shape = (provider, *e[1:])
                resolved = cache.get(shape)
                if resolved is None:
                    country, city = self._location(provider, e)
                    resolved = _Resolved(
                        provider, e.region, e.service, e.generic, e.located, country, city
                    )
                    cache[shape] = resolved
                # identical prefixes: located and specific entries count as the inner ones
                rank = 2 * e.located + (not e.generic and e.service is not None)
                fam, first, last = e.net
                (v4 if fam == 4 else v6).append((first, last, rank, resolved))
            self.counts[name] = len(rows)
        flat4 = flatten(v4, _combine)
        flat6 = flatten(v6, _combine)
        del v4, v6
        infos: dict[_Resolved, CloudInfo] = {}

        def to_info(rows: list[tuple[int, int, _Resolved]]) -> Iterable[tuple[int, int, CloudInfo]]:
            for first, last, r in rows:
                info = infos.get(r)
                if info is None:
                    info = infos[r] = CloudInfo(r.provider, r.region, r.service, r.country, r.city)
                yield first, last, info

        # CloudInfo drops the bookkeeping fields, so neighbours can now be equal: merge them
        self._index, self._values = RangeIndex.from_values(
            _merge_adjacent(to_info(flat4)), _merge_adjacent(to_info(flat6))
        )

    def lookup(self, ip: str) -> CloudInfo | None:
        """The cloud `ip` belongs to, or None (not an address, or in no loaded range)."""
        key = ip_key(ip)
        if key is None:
            return None
        i = self._index.find(key)
        return self._values[i] if i >= 0 else None

    def lookup_key(self, key: IpKey) -> CloudInfo | None:
        i = self._index.find(key)
        return self._values[i] if i >= 0 else None

    def intervals(
        self, provider: str | None = None, region: str | None = None, country: str | None = None
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The IPv4 and IPv6 intervals of one provider (and region), or of every range whose
        region lies in `country` (for the policy's destination sets)."""
        ids = {
            i
            for i, info in enumerate(self._values)
            if (provider is None or info.provider == provider)
            and (region is None or info.region == region)
            and (country is None or info.country == country)
        }
        return self._index.intervals(ids)

    @property
    def sources(self) -> list[str]:
        """Names of the sources loaded."""
        return sorted(self.counts)

    def __len__(self) -> int:
        """Disjoint intervals in the index."""
        return len(self._index)

    @property
    def nbytes(self) -> int:
        return self._index.nbytes


def _merge_adjacent(
    rows: Iterable[tuple[int, int, CloudInfo]],
) -> list[tuple[int, int, CloudInfo]]:
    out: list[tuple[int, int, CloudInfo]] = []
    for first, last, info in rows:
        if out and out[-1][1] + 1 == first and out[-1][2] is info:  # interned
            out[-1] = (out[-1][0], last, info)
        else:
            out.append((first, last, info))
    return out


# --- recognising a file by its content ------------------------------------------------------------

_GEOFEED_ANCHORS: Final[Mapping[str, tuple[str, ...]]] = {
    # RFC 8805 geofeeds all look alike: whose one is, is told by the address blocks it lists
    # (each provider's own, from its AS; a file is theirs when most anchored prefixes are).
    "digitalocean": (
        "5.101.96.0/21", "64.225.0.0/16", "104.131.0.0/16", "134.209.0.0/16", "138.68.0.0/16",
        "143.198.0.0/16", "146.190.0.0/16", "157.245.0.0/16", "159.89.0.0/16", "164.90.0.0/16",
        "165.227.0.0/16", "167.99.0.0/16", "178.128.0.0/16", "188.166.0.0/16", "206.189.0.0/16",
        "2604:a880::/32", "2a03:b0c0::/32",
    ),
    "linode": (
        "23.239.0.0/19", "45.33.0.0/17", "45.56.64.0/18", "45.79.0.0/16", "50.116.0.0/18",
        "66.228.32.0/19", "69.164.192.0/19", "74.207.224.0/19", "96.126.96.0/19",
        "139.162.0.0/16", "172.104.0.0/15", "173.255.192.0/18", "192.155.80.0/20",
        "198.58.96.0/19", "2600:3c00::/24", "2a01:7e00::/24",
    ),
    "huawei": (
        "1.92.0.0/16", "1.178.32.0/19", "94.74.64.0/18", "101.44.0.0/16", "110.238.64.0/18",
        "114.119.160.0/19", "119.8.0.0/16", "119.13.64.0/18", "159.138.0.0/16",
        "2407:c080::/29",
    ),
}  # fmt: skip


def identify(data: bytes) -> str | None:
    """The source (`CloudSource.name`) whose published file `data` is, judged by content
    alone, whatever the file is called (mirrors and aggregators rename them); None when it
    is none of them. Only recognises: `CloudSource.parse` still validates."""
    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            return None
        return _identify_json(doc) if isinstance(doc, dict) else None
    try:
        lines = _text_lines(data)
    except CloudDataError:
        return None
    rows = [ln.split(",")[0].strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    if not rows:
        return None
    for row in rows[:5000]:  # every row starts with a prefix, or it is none of these files
        try:
            parse_prefix(row)
        except ValueError:
            return None
    if all("," not in ln for ln in lines if ln.strip() and not ln.startswith("#")):
        versions = {":" in row for row in rows}
        if versions == {False}:
            return "cloudflare-v4"
        if versions == {True}:
            return "cloudflare-v6"
        return None
    return _geofeed_owner(rows[:5000])


def _identify_json(doc: Mapping[str, Any]) -> str | None:
    def first(key: str) -> Any:
        value = doc.get(key)
        return value[0] if isinstance(value, list) and value else None

    prefix = first("prefixes")
    if isinstance(prefix, dict):
        if "ip_prefix" in prefix:
            return "aws"
        if "ipv4Prefix" in prefix or "ipv6Prefix" in prefix:
            return "google"
    if isinstance(first("ipv6_prefixes"), dict) and "ipv6_prefix" in first("ipv6_prefixes"):
        return "aws"
    value = first("values")
    if isinstance(value, dict) and isinstance(value.get("properties"), dict):
        return "azure"
    region = first("regions")
    if isinstance(region, dict) and "cidrs" in region:
        return "oracle"
    if isinstance(doc.get("addresses"), list) or isinstance(doc.get("ipv6_addresses"), list):
        return "fastly"
    subnet = first("subnets")
    if isinstance(subnet, dict) and "ip_prefix" in subnet:
        return "vultr"
    return None


def _geofeed_owner(rows: Sequence[str]) -> str | None:
    anchors = {
        name: [ipaddress.ip_network(n) for n in nets] for name, nets in _GEOFEED_ANCHORS.items()
    }
    hits = dict.fromkeys(anchors, 0)
    for row in rows:
        try:
            net = ipaddress.ip_network(row, strict=False)
        except ValueError:
            continue
        for name, blocks in anchors.items():
            if any(b.version == net.version and net.subnet_of(b) for b in blocks):  # type: ignore[arg-type]
                hits[name] += 1
                break
    best = max(hits, key=lambda n: hits[n])
    if hits[best] == 0 or hits[best] * 2 <= sum(hits.values()):
        return None
    return best


# --- clouds without range files -----------------------------------------------------------------

ASN_TABLE: Final = "data/cloud_asns.toml"


class CloudAsns:
    """AS number or AS organisation -> provider, for clouds that publish no range file
    (sensor/data/cloud_asns.toml). Only for addresses no range file covers."""

    def __init__(
        self,
        by_asn: Mapping[int, str],
        patterns: Sequence[tuple[str, str]] = (),
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """`by_asn`: AS number -> provider; `patterns`: (regex, provider), tried in order."""
        self.by_asn = dict(by_asn)
        self.labels = dict(labels or {})
        self._patterns = [(re.compile(p, re.IGNORECASE), prov) for p, prov in patterns]
        self._org = functools.lru_cache(maxsize=4096)(self._lookup_org)

    @classmethod
    def load(cls, path: str | Path | None = None) -> CloudAsns:
        """Read and check the table (default: the copy in the package); CloudDataError names
        the entry and what is wrong."""
        source = str(path) if path is not None else f"sensor/{ASN_TABLE}"
        try:
            if path is None:
                raw = resources.files("sensor").joinpath(ASN_TABLE).read_bytes()
            else:
                raw = Path(path).read_bytes()
            doc = tomllib.loads(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise CloudDataError(f"{source}: {exc}") from None
        if doc.get("format") != 1 or set(doc) - {"format", "provider"}:
            raise CloudDataError(f"{source}: expected format = 1 and [[provider]] tables only")
        by_asn: dict[int, str] = {}
        patterns: list[tuple[str, str]] = []
        labels: dict[str, str] = {}
        for i, entry in enumerate(doc.get("provider", [])):
            where = f"{source}: provider[{i}]"
            if not isinstance(entry, dict) or set(entry) - {
                "name",
                "label",
                "asns",
                "orgs",
                "source",
            }:
                raise CloudDataError(f"{where}: expected name, label, asns, orgs, source")
            name, label, src = entry.get("name"), entry.get("label"), entry.get("source")
            if not all(isinstance(v, str) and v for v in (name, label, src)):
                raise CloudDataError(f"{where}: name, label and source must be non-empty strings")
            assert isinstance(name, str) and isinstance(label, str)
            labels[name] = label
            asns = entry.get("asns", [])
            if not isinstance(asns, list) or not all(
                isinstance(a, int) and not isinstance(a, bool) and 0 < a < 1 << 32 for a in asns
            ):
                raise CloudDataError(f"{where}.asns: expected a list of AS numbers")
            for a in asns:
                if a in by_asn:
                    raise CloudDataError(f"{where}.asns: AS{a} is listed twice")
                by_asn[a] = name
            orgs = entry.get("orgs", [])
            if not isinstance(orgs, list) or not all(isinstance(o, str) for o in orgs):
                raise CloudDataError(f"{where}.orgs: expected a list of strings")
            for o in orgs:
                try:
                    re.compile(o)
                except re.error as exc:
                    raise CloudDataError(f"{where}.orgs: bad pattern {o!r}: {exc}") from None
                patterns.append((o, name))
        return cls(by_asn, patterns, labels)

    def provider_for(self, asn: int | None, asn_org: str | None) -> str | None:
        """The provider by AS number, else by organisation name; None if neither matches."""
        if asn is not None:
            return self.by_asn.get(asn)  # a known number that is not a cloud: no name guess
        if asn_org:
            return self._org(asn_org)
        return None

    def _lookup_org(self, asn_org: str) -> str | None:
        for pattern, provider in self._patterns:
            if pattern.search(asn_org):
                return provider
        return None
