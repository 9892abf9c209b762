"""Country and ASN lookups: address parsing, the interval index, embedded data, MaxMind files,
overrides."""

from __future__ import annotations

import gzip
import ipaddress
import os
import pickle
import random
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.config import GeoConfig
from sensor.enrich import geo
from sensor.enrich.geo import (
    EMPTY_GEO,
    EmbeddedGeo,
    GeoDataError,
    GeoDB,
    GeoInfo,
    MaxMindDB,
    RangeIndex,
    build_index,
    flatten,
    ip_key,
    key_text,
    load_overrides,
    parse_prefix,
)

T = TypeVar("T")

# --- addresses --------------------------------------------------------------------------------


def test_ip_key_families() -> None:
    assert ip_key("1.2.3.4") == (4, 0x01020304, 0)
    assert ip_key("2001:db8::1") == (6, 0x20010DB800000000, 1)
    # IPv4 carried in IPv6 is looked up as IPv4
    assert ip_key("::ffff:8.8.8.8") == ip_key("8.8.8.8")
    assert ip_key("64:ff9b::808:808") == ip_key("8.8.8.8")
    assert ip_key("fe80::1%eth0") == ip_key("fe80::1")
    for bad in ("", "junk", "1.2.3", "1.2.3.4.5", "1.2.3.256", "::g", "1.2.3.4\0", "02001:db8::"):
        assert ip_key(bad) is None, bad


def test_key_text_round_trip() -> None:
    for text in ("0.0.0.0", "255.255.255.255", "2001:db8::1", "ffff:ffff::"):
        key = ip_key(text)
        assert key is not None
        assert key_text(key) == text


def test_parse_prefix() -> None:
    assert parse_prefix("192.0.2.0/24") == (4, 0xC0000200, 0xC00002FF)
    assert parse_prefix("192.0.2.77/24") == (4, 0xC0000200, 0xC00002FF)  # host bits masked
    assert parse_prefix("10.1.2.3") == (4, 0x0A010203, 0x0A010203)
    assert parse_prefix("0.0.0.0/0") == (4, 0, 0xFFFFFFFF)
    fam, first, last = parse_prefix("2001:db8::/32")
    assert (fam, first, last - first + 1) == (6, 0x20010DB8 << 96, 1 << 96)
    for bad in ("192.0.2.0/33", "2001:db8::/129", "192.0.2.0/", "192.0.2.0/x", "a/8", "1.2.3/8"):
        with pytest.raises(ValueError):
            parse_prefix(bad)


# --- flattening and the index -----------------------------------------------------------------


def _innermost(inner: T, outer: T | None) -> T:
    return inner


def test_flatten_most_specific_wins() -> None:
    rows = [(0, 99, 0, "a"), (10, 19, 0, "b"), (12, 13, 0, "c"), (50, 59, 0, "d")]
    assert flatten(rows, _innermost) == [
        (0, 9, "a"),
        (10, 11, "b"),
        (12, 13, "c"),
        (14, 19, "b"),
        (20, 49, "a"),
        (50, 59, "d"),
        (60, 99, "a"),
    ]


def test_flatten_identical_prefixes_rank_decides_and_inner_inherits() -> None:
    def combine(inner: str, outer: str | None) -> str:
        return inner if outer is None else f"{inner}<{outer}"

    rows = [(0, 9, 1, "hi"), (0, 9, 0, "lo"), (20, 29, 0, "x")]
    assert flatten(rows, combine) == [(0, 9, "hi<lo"), (20, 29, "x")]


def test_flatten_merges_equal_neighbours() -> None:
    rows = [(0, 9, 0, "a"), (10, 19, 0, "a"), (21, 30, 0, "a")]
    assert flatten(rows, _innermost) == [(0, 19, "a"), (21, 30, "a")]


def test_range_index_v6_ranges_within_one_slash64() -> None:
    index, values = build_index(
        [
            ("2001:db8::/64", 0, "net"),
            ("2001:db8::10/124", 0, "ten"),
            ("2001:db8::40/122", 0, "forty"),
            ("2001:db8:0:1::/64", 0, "next"),
        ],
        _innermost,
    )

    def find(ip: str) -> str | None:
        key = ip_key(ip)
        assert key is not None
        i = index.find(key)
        return values[i] if i >= 0 else None

    assert find("2001:db8::1") == "net"
    assert find("2001:db8::10") == "ten"
    assert find("2001:db8::1f") == "ten"
    assert find("2001:db8::20") == "net"
    assert find("2001:db8::7f") == "forty"
    assert find("2001:db8::ffff:ffff:ffff:ffff") == "net"
    assert find("2001:db8:0:1::") == "next"
    assert find("2001:db8:0:2::") is None
    assert find("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff") is None
    assert find("10.0.0.1") is None


def test_range_index_edges() -> None:
    empty = RangeIndex()
    assert empty.find((4, 0, 0)) == -1
    assert empty.find((6, 0, 0)) == -1
    index = RangeIndex([(0, 0, 1), (0xFFFFFFFF, 0xFFFFFFFF, 2)], [(0, (1 << 128) - 1, 3)])
    assert index.find((4, 0, 0)) == 1
    assert index.find((4, 1, 0)) == -1
    assert index.find((4, 0xFFFFFFFF, 0)) == 2
    assert index.find((6, (1 << 64) - 1, (1 << 64) - 1)) == 3
    assert len(index) == 3
    assert index.nbytes > 0
    with pytest.raises(ValueError):
        RangeIndex([(0, 10, 1), (5, 20, 2)])


def _brute_force(prefixes: list[tuple[str, int]], ip: str) -> int | None:
    addr = ipaddress.ip_address(ip)
    best: tuple[int, int] | None = None
    for i, (text, _) in enumerate(prefixes):
        net = ipaddress.ip_network(text, strict=False)
        # later duplicates win ties, like a higher rank
        if addr in net and (best is None or net.prefixlen >= best[0]):
            best = (net.prefixlen, i)
    return None if best is None else prefixes[best[1]][1]


@st.composite
def _prefix_sets(draw: st.DrawFn) -> tuple[list[tuple[str, int]], list[str]]:
    v6 = draw(st.booleans())
    bits = 128 if v6 else 32
    base = 0x20010DB8 << 96 if v6 else 0xC0A80000
    # addresses confined to a small block so that prefixes nest often
    span = 12
    prefixes = []
    for n in range(draw(st.integers(1, 12))):
        plen = bits - draw(st.integers(0, span))
        host = draw(st.integers(0, (1 << span) - 1))
        addr = ipaddress.ip_address(base + host)
        prefixes.append((f"{addr}/{plen}", n))
    probes = [
        str(ipaddress.ip_address(base + draw(st.integers(-2, (1 << span) + 1)))) for _ in range(20)
    ]
    return prefixes, probes


@settings(max_examples=150, deadline=None)
@given(_prefix_sets())
def test_index_matches_longest_prefix_match(case: tuple[list[tuple[str, int]], list[str]]) -> None:
    prefixes, probes = case
    index, values = build_index(
        [(text, order, value) for order, (text, value) in enumerate(prefixes)], _innermost
    )
    for ip in probes:
        key = ip_key(ip)
        assert key is not None
        i = index.find(key)
        assert (values[i] if i >= 0 else None) == _brute_force(prefixes, ip), ip


# --- embedded data (synthetic file in geoip2fast's layout) --------------------------------------


def _fake_embedded(path: Path) -> Path:
    """A tiny data file shaped like geoip2fast's country+ASN file."""
    v6 = int(ipaddress.ip_address("2001:db8::")) + (1 << 120)  # 2101:db8::
    names_c = ["01:Reserved", "02:Private", "99:<not found in database>", "CN:China", "US:USA"]
    names_asn = ["<unknown>", "IANA.ORG", "Kingsoft", "Example v6"]
    first = [[0, 0x78000000, 0x78010000, 0x78020000], [v6]]
    nlen = [[8, 16, 16, 24], [32]]
    id_c = [[0, 3, 3, 4], [4]]  # 120.0/16 and 120.1/16 merge into one CN range
    first_asn = [[0x78000000, 0x78008000], [v6]]
    nlen_asn = [[17, 17], [48]]
    id_asn = [[2, 0], [3]]
    tables = (
        [0, v6],
        [0, v6],
        names_c,
        names_asn,
        first,
        first_asn,
        id_c,
        id_asn,
        nlen,
        nlen_asn,
    )
    info = {"info": "FAKE-1", "country": True, "city": False, "asn": True, "ipv6": True}
    with gzip.open(path, "wb") as fh:
        pickle.dump((120, info, 6, tables), fh)
    return path


def test_embedded_conversion(tmp_path: Path) -> None:
    emb = EmbeddedGeo.load(_fake_embedded(tmp_path / "fake.dat.gz"))
    assert emb.info == "FAKE-1"
    assert len(emb.country_index) == 3  # 0/8 is a private marker and dropped; CN merged
    db = GeoDB(embedded=emb)
    assert db.lookup("120.0.0.1") == GeoInfo("CN", None, "Kingsoft")
    assert db.lookup("120.1.255.255") == GeoInfo("CN", None, None)  # '<unknown>' AS dropped
    assert db.lookup("120.2.0.9") == GeoInfo("US", None, None)
    assert db.lookup("120.3.0.1") == EMPTY_GEO
    assert db.lookup("2101:db8::1") == GeoInfo("US", None, "Example v6")
    assert db.lookup("2101:db8:1::1") == GeoInfo("US", None, None)


def test_embedded_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _fake_embedded(tmp_path / "fake.dat.gz")
    cache_dir = tmp_path / "cache"
    first = EmbeddedGeo.load(src, cache_dir=cache_dir)
    cache = cache_dir / geo.CACHE_FILE
    assert cache.is_file()

    # the second load must not touch the pickle at all
    def no_unpickling(*args: Any) -> Any:
        raise AssertionError("unpickled despite a valid cache")

    monkeypatch.setattr(geo, "_NoGlobals", no_unpickling)
    second = EmbeddedGeo.load(src, cache_dir=cache_dir)
    assert second.countries == first.countries and second.orgs == first.orgs
    for ip in ("120.0.0.1", "120.2.0.9", "2101:db8::1", "8.8.8.8"):
        key = ip_key(ip)
        assert key is not None
        assert (second.country(key), second.asn_org(key)) == (
            first.country(key),
            first.asn_org(key),
        )
    monkeypatch.undo()

    # a damaged cache is ignored and rewritten
    raw = bytearray(cache.read_bytes())
    raw[-1] ^= 0xFF
    cache.write_bytes(bytes(raw))
    third = EmbeddedGeo.load(src, cache_dir=cache_dir)
    assert third.countries == first.countries
    assert cache.read_bytes() != bytes(raw)

    # a changed source file makes the cache stale
    os.utime(src, ns=(1, 1))
    monkeypatch.setattr(geo, "_NoGlobals", no_unpickling)
    with pytest.raises(AssertionError):
        EmbeddedGeo.load(src, cache_dir=cache_dir)


def test_embedded_cache_is_private_whatever_the_umask(tmp_path: Path) -> None:
    src = _fake_embedded(tmp_path / "fake.dat.gz")
    cache_dir = tmp_path / "state" / "cache"
    old = os.umask(0o022)  # a daemon started by hand
    try:
        EmbeddedGeo.load(src, cache_dir=cache_dir)
    finally:
        os.umask(old)
    assert cache_dir.stat().st_mode & 0o777 == 0o700
    assert (cache_dir / geo.CACHE_FILE).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in cache_dir.iterdir()] == [geo.CACHE_FILE]  # no temporary left


def test_embedded_cache_dir_not_writable_is_not_fatal(tmp_path: Path) -> None:
    src = _fake_embedded(tmp_path / "fake.dat.gz")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    emb = EmbeddedGeo.load(src, cache_dir=blocker / "cache")
    assert emb.countries == ["CN", "US"]


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned > /dev/null",))


def test_embedded_refuses_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.dat.gz"
    with gzip.open(path, "wb") as fh:
        pickle.dump((120, {}, 0, [_Evil()]), fh)
    with pytest.raises(GeoDataError, match="not allowed"):
        EmbeddedGeo.load(path)


@pytest.mark.parametrize(
    "payload",
    [{"a": 1}, (120, {"country": True, "asn": False}, 0, []), (99, {}, 0, []), (120, {}, 0)],
)
def test_embedded_rejects_other_layouts(tmp_path: Path, payload: Any) -> None:
    path = tmp_path / "odd.dat.gz"
    with gzip.open(path, "wb") as fh:
        pickle.dump(payload, fh)
    with pytest.raises(GeoDataError):
        EmbeddedGeo.load(path)


def test_embedded_missing_or_not_gzip(tmp_path: Path) -> None:
    with pytest.raises(GeoDataError):
        EmbeddedGeo.load(tmp_path / "absent.dat.gz")
    junk = tmp_path / "junk.dat.gz"
    junk.write_bytes(b"not gzip at all")
    with pytest.raises(GeoDataError):
        EmbeddedGeo.load(junk)


# --- the real embedded data (geoip2fast) --------------------------------------------------------


@pytest.fixture(scope="module")
def real_geo() -> GeoDB:
    if geo.embedded_data_path() is None:
        pytest.skip("geoip2fast is not installed")
    return GeoDB(embedded=EmbeddedGeo.load())


def test_real_kingsoft_address(real_geo: GeoDB) -> None:
    # What geoip2fast 1.2.2 (GeoLite2, 2024-06-18) says about a Kingsoft Cloud address used by
    # Xiaomi: China, AS organisation Kingsoft; its data has AS names but no AS numbers.
    info = real_geo.lookup("120.92.65.10")
    assert info.country == "CN"
    assert info.asn is None
    assert info.asn_org is not None and "Kingsoft" in info.asn_org


@pytest.mark.parametrize(
    ("ip", "country", "org"),
    [
        ("8.8.8.8", "US", "GOOGLE"),
        ("2001:4860:4860::8888", "US", "GOOGLE"),
        ("::ffff:8.8.8.8", "US", "GOOGLE"),
        ("52.74.0.1", "SG", "AMAZON-02"),
        ("2a03:2880:f10d:83:face:b00c:0:25de", "US", "FACEBOOK"),
    ],
)
def test_real_known_addresses(real_geo: GeoDB, ip: str, country: str, org: str) -> None:
    assert real_geo.lookup(ip) == GeoInfo(country, None, org)


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3",
        "192.168.1.1",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.1.1",
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.5",
        "224.0.0.251",
        "255.255.255.255",
        "0.0.0.0",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "ff02::fb",
        "2001:db8::1",
        "3fff::1",
        "not-an-ip",
    ],
)
def test_real_special_addresses_are_empty(real_geo: GeoDB, ip: str) -> None:
    assert real_geo.lookup(ip) is EMPTY_GEO


def test_lookup_cache_is_bounded(tmp_path: Path) -> None:
    db = GeoDB(embedded=EmbeddedGeo.load(_fake_embedded(tmp_path / "f.dat.gz")), cache_size=2)
    for ip in ("120.0.0.1", "120.0.0.2", "120.0.0.3", "120.0.0.3"):
        db.lookup(ip)
    assert db.cache_stats() == {"hits": 1, "misses": 3, "size": 2, "maxsize": 2}
    db.cache_clear()
    assert db.cache_stats()["size"] == 0
    uncached = GeoDB(embedded=db.embedded, cache_size=0)
    assert uncached.lookup("120.0.0.1") == db.lookup("120.0.0.1")
    assert uncached.cache_stats()["maxsize"] == 0
    assert db.describe() == ["embedded: geoip2fast FAKE-1"]


# --- overrides --------------------------------------------------------------------------------

OVERRIDES = """
[[prefix]]
net = "203.0.113.0/24"
country = "CN"
asn = 4808
asn_org = "China Unicom Beijing Province Network"

[[prefix]]
net = "203.0.113.128/25"
country = "SG"

[[prefix]]
net = "2001:db8:cafe::/48"
country = "DE"
asn = 64500

[[prefix]]
net = "120.0.0.0/24"
asn = 64501
"""


def test_overrides_most_specific_wins_and_inherits(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(OVERRIDES)
    db = GeoDB(
        embedded=EmbeddedGeo.load(_fake_embedded(tmp_path / "f.dat.gz")),
        overrides=load_overrides(path),
    )
    org = "China Unicom Beijing Province Network"
    assert db.lookup("203.0.113.5") == GeoInfo("CN", 4808, org)
    assert db.lookup("203.0.113.200") == GeoInfo("SG", 4808, org)  # /25 inside the /24
    assert db.lookup("2001:db8:cafe::1") == GeoInfo("DE", 64500, None)
    assert db.lookup("2001:db8:beef::1") is EMPTY_GEO  # documentation range, no override
    # an override on public space only replaces the fields it sets
    assert db.lookup("120.0.0.9") == GeoInfo("CN", 64501, "Kingsoft")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[prefix]]\ncountry = "CN"', r"prefix\[0\]\.net: required"),
        ('[[prefix]]\nnet = "300.0.0.0/8"', r"prefix\[0\]\.net"),
        ('[[prefix]]\nnet = "1.0.0.0/8"\ncountry = "cn"', r"prefix\[0\]\.country"),
        ('[[prefix]]\nnet = "1.0.0.0/8"\nasn = -1', r"prefix\[0\]\.asn"),
        ('[[prefix]]\nnet = "1.0.0.0/8"\nasn = true', r"prefix\[0\]\.asn"),
        ('[[prefix]]\nnet = "1.0.0.0/8"\ncity = "x"', r"prefix\[0\]\.city: unknown key"),
        ('[[other]]\nnet = "1.0.0.0/8"', r"other: unknown key"),
        ("prefix = 3", r"prefix: expected an array"),
        ("[[prefix]", r"cannot read"),
    ],
)
def test_overrides_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(GeoDataError, match=message) as exc:
        load_overrides(path)
    assert str(path) in str(exc.value)


# --- MaxMind DB files (written here, format per the MaxMind DB spec 2.0) -----------------------


def _ctrl(type_: int, size: int) -> bytes:
    first, ext = (type_ << 5, b"") if type_ <= 7 else (0, bytes([type_ - 7]))
    if size < 29:
        return bytes([first | size]) + ext
    if size < 29 + 256:
        return bytes([first | 29]) + ext + bytes([size - 29])
    return bytes([first | 30]) + ext + (size - 285).to_bytes(2, "big")


def _uint(type_: int, value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return _ctrl(type_, len(raw)) + raw


def _enc(value: Any) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return _ctrl(2, len(raw)) + raw
    if isinstance(value, dict):
        return _ctrl(7, len(value)) + b"".join(_enc(k) + _enc(v) for k, v in value.items())
    if isinstance(value, list):
        return _ctrl(11, len(value)) + b"".join(_enc(v) for v in value)
    if isinstance(value, tuple):  # (type, int): an explicitly typed unsigned integer
        return _uint(*value)
    if isinstance(value, int):
        return _uint(6, value)  # uint32
    raise TypeError(value)


def write_mmdb(path: Path, records: dict[str, dict[str, Any]], db_type: str) -> Path:
    """An IPv6 tree (IPv4 under ::/96) with 24-bit records mapping prefixes to records."""
    data = b""
    offsets: dict[int, int] = {}
    root: list[Any] = [None, None]
    for i, (net_text, record) in enumerate(records.items()):
        offsets[i] = len(data)
        data += _enc(record)
        net = ipaddress.ip_network(net_text)
        value = int(net.network_address)  # an IPv4 network sits at ::a.b.c.d/(96 + len)
        plen = net.prefixlen + (96 if net.version == 4 else 0)
        node = root
        for depth in range(plen):
            bit = (value >> (127 - depth)) & 1
            if depth == plen - 1:
                node[bit] = ("data", i)
            else:
                child = node[bit]
                if not isinstance(child, list):  # empty, or data to push down
                    child = node[bit] = [child, child]
                node = child
    nodes: list[list[Any]] = []
    queue = [root]
    while queue:  # number the nodes breadth-first
        node = queue.pop(0)
        nodes.append(node)
        queue.extend(c for c in node if isinstance(c, list))
    number = {id(n): i for i, n in enumerate(nodes)}
    count = len(nodes)

    def rec(child: Any) -> int:
        if child is None:
            return count
        if isinstance(child, list):
            return number[id(child)]
        return count + 16 + offsets[child[1]]

    tree = b"".join(rec(n[0]).to_bytes(3, "big") + rec(n[1]).to_bytes(3, "big") for n in nodes)
    meta = {
        "node_count": (6, count),
        "record_size": (5, 24),
        "ip_version": (5, 6),
        "database_type": db_type,
        "languages": ["en"],
        "binary_format_major_version": (5, 2),
        "binary_format_minor_version": (5, 0),
        "build_epoch": (9, 1_700_000_000),
        "description": {"en": "phonehome test database"},
    }
    path.write_bytes(tree + b"\0" * 16 + data + b"\xab\xcd\xefMaxMind.com" + _enc(meta))
    return path


@pytest.fixture
def mmdb_files(tmp_path: Path) -> tuple[Path, Path]:
    pytest.importorskip("maxminddb")
    country = write_mmdb(
        tmp_path / "country.mmdb",
        {
            "120.92.0.0/16": {"country": {"iso_code": "CN", "names": {"en": "China"}}},
            "52.74.0.0/16": {"registered_country": {"iso_code": "SG"}},
            "2a03:2880::/32": {"country": {"iso_code": "IE"}},
            "2a03:2880:f000::/36": {"country": {"iso_code": "US"}},
        },
        "GeoLite2-Country",
    )
    asn = write_mmdb(
        tmp_path / "asn.mmdb",
        {
            "120.92.0.0/16": {
                "autonomous_system_number": 59019,
                "autonomous_system_organization": "Beijing Kingsoft Cloud Internet Technology",
            },
            "2a03:2880::/32": {
                "autonomous_system_number": 32934,
                "autonomous_system_organization": "FACEBOOK",
            },
        },
        "GeoLite2-ASN",
    )
    return country, asn


def test_maxmind_databases(mmdb_files: tuple[Path, Path]) -> None:
    country, asn = mmdb_files
    db = GeoDB(country_db=MaxMindDB(country), asn_db=MaxMindDB(asn))
    assert db.lookup("120.92.65.10") == GeoInfo(
        "CN", 59019, "Beijing Kingsoft Cloud Internet Technology"
    )
    assert db.lookup("::ffff:120.92.65.10").asn == 59019
    assert db.lookup("52.74.1.2") == GeoInfo("SG", None, None)  # registered_country fallback
    assert db.lookup("2a03:2880:f10d::1") == GeoInfo("US", 32934, "FACEBOOK")  # most specific
    assert db.lookup("2a03:2880:1::1") == GeoInfo("IE", 32934, "FACEBOOK")
    assert db.lookup("8.8.8.8") is EMPTY_GEO
    assert db.lookup("10.0.0.1") is EMPTY_GEO


def test_open_from_config_uses_maxmind(mmdb_files: tuple[Path, Path]) -> None:
    country, asn = mmdb_files
    db = GeoDB.open(GeoConfig(country_db=str(country), asn_db=str(asn)))
    assert db.embedded is None  # both fields covered: the embedded data is not loaded
    assert db.errors == []
    assert db.describe() == [f"country: {country}", f"asn: {asn}"]
    assert db.lookup("120.92.65.10").asn == 59019


def test_open_falls_back_to_embedded_when_a_database_is_broken(
    tmp_path: Path, mmdb_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"\0" * 64)
    fake = _fake_embedded(tmp_path / "fake.dat.gz")
    monkeypatch.setattr(geo, "embedded_data_path", lambda: fake)
    _, asn = mmdb_files
    db = GeoDB.open(GeoConfig(country_db=str(broken), asn_db=str(asn)))
    assert len(db.errors) == 1 and str(broken) in db.errors[0]
    assert db.country_db is None and db.embedded is not None
    # country from the (fake) embedded data, ASN from the working MaxMind file
    assert db.lookup("120.0.0.1") == GeoInfo("CN", None, None)
    assert db.lookup("120.92.65.10") == GeoInfo(
        None, 59019, "Beijing Kingsoft Cloud Internet Technology"
    )


def test_open_with_overrides_and_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_embedded(tmp_path / "fake.dat.gz")
    monkeypatch.setattr(geo, "embedded_data_path", lambda: fake)
    lab = tmp_path / "lab.toml"
    lab.write_text(OVERRIDES)
    db = GeoDB.open(None, overrides_path=lab, cache_dir=tmp_path / "cache")
    assert db.lookup("203.0.113.1").asn == 4808
    assert (tmp_path / "cache" / geo.CACHE_FILE).is_file()


def test_random_lookups_never_raise(real_geo: GeoDB) -> None:
    rng = random.Random(7)
    for _ in range(2000):
        ip = str(ipaddress.ip_address(rng.getrandbits(rng.choice((32, 128)))))
        info = real_geo.lookup(ip)
        assert info.country is None or len(info.country) == 2
