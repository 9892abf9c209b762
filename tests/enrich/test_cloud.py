"""Cloud provider ranges: parsers on small fixtures and on the real published files, the region
table, most-specific-wins lookups."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.enrich.cloud import (
    CLOUD_SOURCES,
    CloudDataError,
    CloudInfo,
    CloudPrefix,
    CloudRanges,
    load_region_table,
    parse_aws,
    parse_azure,
    parse_fastly,
    parse_geofeed,
    parse_google,
    parse_oracle,
    parse_prefix_list,
    parse_vultr,
)
from tests.shared_data import CLOUD_FILES, SHARED, shared

SHARED_FILES = CLOUD_FILES


def shared_source(name: str) -> bytes:
    """The shared file of source `name` (skips without it)."""
    return shared(SHARED_FILES[name])


def j(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# --- small fixtures -------------------------------------------------------------------------------

AWS = j(
    {
        "syncToken": "1",
        "createDate": "2025-07-24-20-23-14",
        "prefixes": [
            # the same /16 listed as AMAZON and as EC2: EC2 names the service
            {"ip_prefix": "52.74.0.0/16", "region": "ap-southeast-1", "service": "AMAZON",
             "network_border_group": "ap-southeast-1"},
            {"ip_prefix": "52.74.0.0/16", "region": "ap-southeast-1", "service": "EC2",
             "network_border_group": "ap-southeast-1"},
            # an AMAZON /24 inside it: most specific, but keeps the EC2 name
            {"ip_prefix": "52.74.9.0/24", "region": "ap-southeast-1", "service": "AMAZON",
             "network_border_group": "ap-southeast-1"},
            # a more specific S3 block: its own service
            {"ip_prefix": "52.74.10.0/24", "region": "ap-southeast-1", "service": "S3",
             "network_border_group": "ap-southeast-1"},
            {"ip_prefix": "13.32.0.0/15", "region": "GLOBAL", "service": "CLOUDFRONT",
             "network_border_group": "GLOBAL"},
            {"ip_prefix": "15.181.0.0/20", "region": "us-east-1", "service": "EC2",
             "network_border_group": "us-east-1-mia-1"},
            {"ip_prefix": "54.222.0.0/19", "region": "cn-north-1", "service": "AMAZON",
             "network_border_group": "cn-north-1"},
        ],
        "ipv6_prefixes": [
            {"ipv6_prefix": "2406:da18::/32", "region": "ap-southeast-1", "service": "AMAZON",
             "network_border_group": "ap-southeast-1"},
            {"ipv6_prefix": "2406:da18:8000::/40", "region": "ap-southeast-1",
             "service": "EC2", "network_border_group": "ap-southeast-1"},
        ],
    }
)  # fmt: skip

GOOGLE = j(
    {
        "syncToken": "1",
        "creationTime": "2025-07-24T19:16:28",
        "prefixes": [
            {"ipv4Prefix": "34.87.0.0/17", "service": "Google Cloud", "scope": "asia-southeast1"},
            {"ipv6Prefix": "2600:1900:4080::/44", "service": "Google Cloud",
             "scope": "asia-southeast1"},
            {"ipv4Prefix": "34.149.0.0/16", "service": "Google Cloud", "scope": "global"},
        ],
    }
)  # fmt: skip

AZURE = j(
    {
        "changeNumber": 1,
        "cloud": "Public",
        "values": [
            {"name": "AzureCloud.southeastasia", "id": "AzureCloud.southeastasia",
             "properties": {"region": "southeastasia", "systemService": "",
                            "addressPrefixes": ["20.43.128.0/18", "2603:1040::/47"]}},
            {"name": "Storage.SoutheastAsia", "id": "Storage.SoutheastAsia",
             "properties": {"region": "southeastasia", "systemService": "AzureStorage",
                            "addressPrefixes": ["20.43.130.0/24"]}},
            # a global tag: its /30 sits in the regional block and takes its region
            {"name": "ActionGroup", "id": "ActionGroup",
             "properties": {"region": "", "systemService": "ActionGroup",
                            "addressPrefixes": ["20.43.129.4/30", "4.145.74.52/30"]}},
            # the global Storage tag repeats the regional prefix: the regional entry wins
            {"name": "Storage", "id": "Storage",
             "properties": {"region": "", "systemService": "AzureStorage",
                            "addressPrefixes": ["20.43.130.0/24"]}},
        ],
    }
)  # fmt: skip

ORACLE = j(
    {
        "last_updated_timestamp": "2025-07-21T07:13:25",
        "regions": [
            {"region": "ap-singapore-1", "cidrs": [
                {"cidr": "138.2.64.0/20", "tags": ["OCI"]},
                {"cidr": "138.2.80.0/22", "tags": ["OSN", "OBJECT_STORAGE"]},
            ]},
            {"region": "us-ashburn-1", "cidrs": [{"cidr": "129.80.0.0/16", "tags": ["OCI"]}]},
        ],
    }
)  # fmt: skip

CLOUDFLARE_V4 = b"173.245.48.0/20\n103.21.244.0/22\n104.16.0.0/13"  # no final newline, as served
CLOUDFLARE_V6 = b"2400:cb00::/32\n2606:4700::/32\n"
FASTLY = j({"addresses": ["151.101.0.0/16"], "ipv6_addresses": ["2a04:4e40::/32"]})
GEOFEED = (
    b"# RFC 8805 geofeed\n"
    b"# ip_prefix,alpha2code,region,city,postal_code\n"
    b"5.101.96.0/21,NL,NL-NH,Amsterdam,1098 XH\n"
    b"\n"
    b'2600:3c00::/32,us,US-TX,"Richardson, Dallas",\n'
    b"192.0.2.0/24,,,,\n"
)
VULTR = j(
    {
        "updated": "2025-07-24",
        "subnets": [
            {"ip_prefix": "45.32.0.0/20", "alpha2code": "US", "region": "US-NJ",
             "city": "Piscataway"},
            {"ip_prefix": "2001:19f0:7000::/38", "region": "JP-13", "city": "Tokyo"},
        ],
    }
)  # fmt: skip


def fixture_ranges() -> CloudRanges:
    return CloudRanges(
        {
            "aws": parse_aws(AWS),
            "google": parse_google(GOOGLE),
            "azure": parse_azure(AZURE),
            "oracle": parse_oracle(ORACLE),
            "cloudflare-v4": parse_prefix_list(CLOUDFLARE_V4),
            "cloudflare-v6": parse_prefix_list(CLOUDFLARE_V6),
            "fastly": parse_fastly(FASTLY),
            "digitalocean": parse_geofeed(GEOFEED),
            "vultr": parse_vultr(VULTR),
        }
    )


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("52.74.1.1", CloudInfo("aws", "ap-southeast-1", "EC2", "SG", "Singapore")),
        ("52.74.9.1", CloudInfo("aws", "ap-southeast-1", "EC2", "SG", "Singapore")),
        ("52.74.10.1", CloudInfo("aws", "ap-southeast-1", "S3", "SG", "Singapore")),
        ("13.33.0.1", CloudInfo("aws", None, "CLOUDFRONT", None, None)),
        ("15.181.1.1", CloudInfo("aws", "us-east-1", "EC2", "US", "Miami")),  # Local Zone
        ("54.222.0.1", CloudInfo("aws", "cn-north-1", "AMAZON", "CN", "Beijing")),
        ("2406:da18::1", CloudInfo("aws", "ap-southeast-1", "AMAZON", "SG", "Singapore")),
        ("2406:da18:80ff::1", CloudInfo("aws", "ap-southeast-1", "EC2", "SG", "Singapore")),
        ("34.87.1.1", CloudInfo("google", "asia-southeast1", "Google Cloud", "SG", "Singapore")),
        ("2600:1900:4080::1", CloudInfo("google", "asia-southeast1", "Google Cloud", "SG",
                                        "Singapore")),
        ("34.149.1.1", CloudInfo("google", None, "Google Cloud", None, None)),
        ("20.43.128.1", CloudInfo("azure", "southeastasia", "AzureCloud", "SG", "Singapore")),
        ("20.43.130.1", CloudInfo("azure", "southeastasia", "AzureStorage", "SG", "Singapore")),
        ("20.43.129.5", CloudInfo("azure", "southeastasia", "ActionGroup", "SG", "Singapore")),
        ("4.145.74.53", CloudInfo("azure", None, "ActionGroup", None, None)),
        ("2603:1040:1::1", CloudInfo("azure", "southeastasia", "AzureCloud", "SG", "Singapore")),
        ("138.2.65.1", CloudInfo("oracle", "ap-singapore-1", "OCI", "SG", "Singapore")),
        ("138.2.81.1", CloudInfo("oracle", "ap-singapore-1", "OSN,OBJECT_STORAGE", "SG",
                                 "Singapore")),
        ("104.16.1.1", CloudInfo("cloudflare")),
        ("2606:4700::6810:1", CloudInfo("cloudflare")),
        ("151.101.1.1", CloudInfo("fastly")),
        ("5.101.97.1", CloudInfo("digitalocean", "NL-NH", None, "NL", "Amsterdam")),
        ("2600:3c00::1", CloudInfo("digitalocean", "US-TX", None, "US", "Richardson, Dallas")),
        ("192.0.2.1", CloudInfo("digitalocean")),
        ("45.32.1.1", CloudInfo("vultr", "US-NJ", None, "US", "Piscataway")),
        ("2001:19f0:7001::1", CloudInfo("vultr", "JP-13", None, "JP", "Tokyo")),
        ("::ffff:52.74.1.1", CloudInfo("aws", "ap-southeast-1", "EC2", "SG", "Singapore")),
        ("8.8.8.8", None),
        ("2001:4860::1", None),
        ("not an address", None),
    ],
)  # fmt: skip
def test_fixture_lookups(ip: str, expected: CloudInfo | None) -> None:
    assert fixture_ranges().lookup(ip) == expected


def test_counts_and_sources() -> None:
    ranges = fixture_ranges()
    assert ranges.counts["aws"] == 9
    assert ranges.counts["azure"] == 6
    assert ranges.sources[0] == "aws"
    assert ranges.errors == {}
    assert ranges.unknown_regions == set()
    assert len(ranges) > 0 and ranges.nbytes > 0


def test_unknown_region_is_reported_not_fatal() -> None:
    doc = {"prefixes": [{"ip_prefix": "3.0.0.0/24", "region": "xx-new-1", "service": "EC2"}]}
    ranges = CloudRanges({"aws": parse_aws(j(doc))})
    assert ranges.lookup("3.0.0.1") == CloudInfo("aws", "xx-new-1", "EC2", None, None)
    assert ranges.unknown_regions == {("aws", "xx-new-1")}


def test_geofeed_fields() -> None:
    rows = parse_geofeed(GEOFEED)
    assert [r.country for r in rows] == ["NL", "US", None]
    assert rows[1].city == "Richardson, Dallas"
    assert all(isinstance(r, CloudPrefix) for r in rows)


# --- malformed and hostile input ----------------------------------------------------------------

PARSERS = {
    "aws": parse_aws,
    "google": parse_google,
    "azure": parse_azure,
    "oracle": parse_oracle,
    "fastly": parse_fastly,
    "vultr": parse_vultr,
    "list": parse_prefix_list,
    "geofeed": parse_geofeed,
}

BAD_INPUTS = [
    b"",
    b"<!DOCTYPE html><html><body>Captive portal</body></html>",
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
    b"\0\0\0\0",
    b"[1, 2, 3]",
    b"{}",
    b"[" * 100_000 + b"]" * 100_000,
    b"\xff\xfe\xfd",
]


@pytest.mark.parametrize("parser", sorted(PARSERS))
@pytest.mark.parametrize("data", BAD_INPUTS, ids=range(len(BAD_INPUTS)))
def test_parsers_reject_garbage(parser: str, data: bytes) -> None:
    with pytest.raises(CloudDataError):
        PARSERS[parser](data)


@pytest.mark.parametrize(
    ("parser", "data"),
    [
        ("aws", AWS[: len(AWS) // 2]),
        ("aws", j({"prefixes": [{"ip_prefix": "52.74.0.0/33", "region": "x", "service": "y"}]})),
        ("aws", j({"prefixes": [{"ip_prefix": 5, "region": "x", "service": "y"}]})),
        ("aws", j({"prefixes": [{"ip_prefix": "1.0.0.0/8", "service": "y"}]})),
        ("aws", j({"prefixes": "all of them"})),
        ("aws", j({"prefixes": []})),
        ("google", j({"prefixes": [{"scope": "us-east1"}]})),
        ("azure", j({"values": [{"name": "X", "properties": None}]})),
        ("azure", j({"values": [{"name": "X", "properties": {"addressPrefixes": ["bad"]}}]})),
        ("oracle", j({"regions": [{"region": "r", "cidrs": [{"cidr": "1.2.3.4/40"}]}]})),
        ("fastly", j({"addresses": ["151.101.0.0/16", None]})),
        ("vultr", j({"subnets": [{"ip_prefix": "1.0.0.0/8", "alpha2code": "USA"}]})),
        ("list", CLOUDFLARE_V4[:-3]),  # cut inside the last prefix: "104.16.0.0"
        ("list", CLOUDFLARE_V4[:-6]),  # "104.16.0"
        ("list", b"173.245.48.0/20\n<html>\n"),
        ("geofeed", GEOFEED + b"24.144.6"),  # cut inside a line
        ("geofeed", b"5.101.96.0/21,NLD,,,\n"),
    ],
)
def test_parsers_reject_malformed(parser: str, data: bytes) -> None:
    with pytest.raises(CloudDataError):
        PARSERS[parser](data)


def test_too_many_records(monkeypatch: pytest.MonkeyPatch) -> None:
    from sensor.enrich import cloud

    monkeypatch.setattr(cloud, "MAX_RECORDS", 2)
    with pytest.raises(CloudDataError, match="limit"):
        parse_prefix_list(CLOUDFLARE_V4)


def test_load_dir_isolates_broken_files(tmp_path: Path) -> None:
    (tmp_path / "ip-ranges.json").write_bytes(AWS)
    (tmp_path / "cloud.json").write_bytes(b'{"prefixes": [')  # truncated
    (tmp_path / "ips-v4").write_bytes(CLOUDFLARE_V4)
    (tmp_path / "unrelated.txt").write_text("ignored")
    ranges = CloudRanges.load_dir(tmp_path)
    assert ranges.sources == ["aws", "cloudflare-v4"]
    assert set(ranges.errors) == {"google"}
    assert "cloud.json" in ranges.errors["google"]
    assert ranges.lookup("52.74.1.1") is not None
    assert ranges.lookup("104.16.0.1") == CloudInfo("cloudflare")


def test_load_dir_empty_and_unknown_source(tmp_path: Path) -> None:
    ranges = CloudRanges.load_dir(tmp_path)
    assert ranges.sources == [] and ranges.errors == {}
    assert ranges.lookup("52.74.1.1") is None
    ranges = CloudRanges.load_files({"nonesuch": tmp_path / "x"})
    assert ranges.errors == {"nonesuch": "unknown source"}


def test_source_table_is_consistent() -> None:
    names = [s.name for s in CLOUD_SOURCES]
    assert len(names) == len(set(names))
    files = [s.filename for s in CLOUD_SOURCES]
    assert len(files) == len(set(files))
    for s in CLOUD_SOURCES:
        assert s.import_names, s.name


# --- region table ---------------------------------------------------------------------------------


def test_region_table_shape() -> None:
    table = load_region_table()
    assert table["aws"]["ap-southeast-1"] == ("SG", "Singapore")
    assert table["aws"]["cn-north-1"] == ("CN", "Beijing")
    assert table["azure"]["southeastasia"] == ("SG", "Singapore")
    assert table["google"]["asia-southeast1"][0] == "SG"
    assert table["oracle"]["ap-singapore-1"] == ("SG", "Singapore")
    for provider, regions in table.items():
        for region, (country, city) in regions.items():
            assert country is None or (len(country) == 2 and country.isupper()), region
            assert city is None or city.strip() == city, (provider, region)


@pytest.mark.parametrize(
    "text",
    [
        '[aws]\n"r" = { country = "sg" }',
        '[aws]\n"r" = { country = "SG", town = "x" }',
        '[aws]\n"r" = "SG"',
        "aws = 1",
        "[aws",
    ],
)
def test_region_table_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "regions.toml"
    path.write_text(text)
    with pytest.raises(CloudDataError):
        load_region_table(path)


# --- the real files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_ranges() -> CloudRanges:
    missing = [n for n, f in SHARED_FILES.items() if not (SHARED / f).is_file()]
    if missing:
        pytest.skip(f"shared data files missing: {missing}")
    return CloudRanges.load_files({n: SHARED / f for n, f in SHARED_FILES.items()})


@pytest.mark.parametrize(
    ("name", "minimum"),
    [
        ("aws", 10_000),
        ("google", 500),
        ("azure", 50_000),
        ("oracle", 500),
        ("cloudflare-v4", 10),
        ("cloudflare-v6", 5),
        ("fastly", 10),
        ("digitalocean", 1_000),
        ("linode", 4_000),
    ],
)
def test_real_file_parses(name: str, minimum: int) -> None:
    parse = {s.name: s.parse for s in CLOUD_SOURCES}[name]
    rows = parse(shared_source(name))
    assert len(rows) >= minimum
    assert any(r.net[0] == 6 for r in rows) or name in ("cloudflare-v4", "oracle")


def _real_regions(name: str) -> set[str]:
    doc = json.loads(shared_source(name))
    if name == "aws":
        entries = doc["prefixes"] + doc["ipv6_prefixes"]
        return {p["region"] for p in entries} - {"GLOBAL"}
    if name == "google":
        return {p["scope"] for p in doc["prefixes"]} - {"global"}
    if name == "azure":
        return {v["properties"]["region"] for v in doc["values"]} - {""}
    return {r["region"] for r in doc["regions"]}


@pytest.mark.parametrize(
    ("name", "provider"),
    [("aws", "aws"), ("google", "google"), ("azure", "azure"), ("oracle", "oracle")],
)
def test_region_table_covers_real_files(name: str, provider: str) -> None:
    regions = _real_regions(name)
    table = load_region_table()[provider]
    assert sorted(regions - set(table)) == []
    # and every named region has at least a country, except the ones nobody has published
    unplaced = {r for r in regions if table[r][0] is None}
    assert unplaced <= {"me-west-1", "northeurope2"}


def test_region_table_covers_aws_border_groups() -> None:
    doc = json.loads(shared_source("aws"))
    groups = {
        p["network_border_group"]
        for p in doc["prefixes"] + doc["ipv6_prefixes"]
        if p["network_border_group"] not in (p["region"], "GLOBAL")
    }
    table = load_region_table()["aws-border-groups"]
    assert sorted(groups - set(table)) == []


def test_real_loads_everything(real_ranges: CloudRanges) -> None:
    assert real_ranges.errors == {}
    assert real_ranges.unknown_regions == set()
    assert set(real_ranges.sources) == set(SHARED_FILES)


@pytest.mark.parametrize(
    ("ip", "provider", "region", "country", "city"),
    [
        ("52.74.0.1", "aws", "ap-southeast-1", "SG", "Singapore"),
        ("13.228.0.1", "aws", "ap-southeast-1", "SG", "Singapore"),
        ("2406:da18::1", "aws", "ap-southeast-1", "SG", "Singapore"),
        ("54.222.0.1", "aws", "cn-north-1", "CN", "Beijing"),
        ("15.230.15.29", "aws", "eu-central-1", "DE", "Frankfurt"),  # a /32 entry
        ("20.43.128.5", "azure", "southeastasia", "SG", "Singapore"),
        ("34.87.0.1", "google", "asia-southeast1", "SG", "Singapore"),
        ("129.80.0.1", "oracle", "us-ashburn-1", "US", "Ashburn"),
        ("104.16.1.1", "cloudflare", None, None, None),
        ("2606:4700::1", "cloudflare", None, None, None),
        ("151.101.1.1", "fastly", None, None, None),
        ("5.101.96.5", "digitalocean", "NL-NH", "NL", "Amsterdam"),
        ("2600:3c00::1", "linode", "US-TX", "US", "Richardson"),
    ],
)
def test_real_lookups(
    real_ranges: CloudRanges,
    ip: str,
    provider: str,
    region: str | None,
    country: str | None,
    city: str | None,
) -> None:
    info = real_ranges.lookup(ip)
    assert info is not None
    assert (info.provider, info.region, info.country, info.city) == (
        provider,
        region,
        country,
        city,
    )


def test_real_aws_singapore_service_is_specific(real_ranges: CloudRanges) -> None:
    info = real_ranges.lookup("52.74.0.1")
    assert info is not None and info.service == "EC2"


def test_real_most_specific_wins(real_ranges: CloudRanges) -> None:
    # every AWS /32 answers with its own region, whatever prefix encloses it
    doc = json.loads(shared_source("aws"))
    singles = [p for p in doc["prefixes"] if p["ip_prefix"].endswith("/32")][:200]
    assert singles
    for p in singles:
        info = real_ranges.lookup(p["ip_prefix"].partition("/")[0])
        assert info is not None and info.provider == "aws"
        expected = None if p["region"] == "GLOBAL" else p["region"]
        assert info.region == expected, p


# --- fuzzing: parsers fail only with CloudDataError ------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.sampled_from(["1.2.3.0/24", "2001:db8::/32", "us-east-1", "", "GLOBAL", "1.2.3.4/99"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["prefixes", "ipv6_prefixes", "ip_prefix", "ipv6_prefix", "region",
                         "service", "network_border_group", "ipv4Prefix", "ipv6Prefix", "scope",
                         "values", "name", "properties", "systemService", "addressPrefixes",
                         "regions", "cidrs", "cidr", "tags", "addresses", "ipv6_addresses",
                         "subnets", "alpha2code", "city"]),
        inner, max_size=5),
    max_leaves=25,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(PARSERS)), _json_values)
def test_parsers_fail_cleanly_on_odd_json(parser: str, doc: Any) -> None:
    try:
        rows = PARSERS[parser](json.dumps(doc).encode())
    except CloudDataError:
        return
    assert rows and all(isinstance(r, CloudPrefix) for r in rows)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(PARSERS)), st.binary(max_size=200))
def test_parsers_fail_cleanly_on_odd_bytes(parser: str, data: bytes) -> None:
    with contextlib.suppress(CloudDataError):
        PARSERS[parser](data)


# --- clouds without range files, by AS ----------------------------------------------------------


def test_shipped_cloud_asn_table() -> None:
    from sensor.enrich.cloud import CloudAsns

    t = CloudAsns.load()
    for asn, provider in [
        (45102, "alibaba"),
        (37963, "alibaba"),
        (45090, "tencent"),
        (132203, "tencent"),
        (59019, "kingsoft"),
        (38365, "baidu"),
        (55967, "baidu"),
    ]:
        assert t.provider_for(asn, None) == provider
    assert t.labels["alibaba"] == "Alibaba Cloud"
    # a known number that is no cloud: no guess from the name
    assert t.provider_for(16509, "Tencent Building, Kejizhongyi Avenue") is None
    # the embedded data's names (no numbers)
    for org, provider in [
        ("Hangzhou Alibaba Advertising Co.,Ltd.", "alibaba"),
        ("Alibaba US Technology Co., Ltd.", "alibaba"),
        ("Shenzhen Tencent Computer Systems Company Limited", "tencent"),
        ("Tencent Building, Kejizhongyi Avenue", "tencent"),
        ("Beijing Kingsoft Cloud Internet Technology Co., Ltd", "kingsoft"),
        ("Beijing Baidu Netcom Science and Technology Co., Ltd.", "baidu"),
    ]:
        assert t.provider_for(None, org) == provider
    assert t.provider_for(None, "AMAZON-02") is None
    assert t.provider_for(None, None) is None
    assert t.provider_for(None, "Alibaba Travel Company (LTD)") is None


def test_every_cloud_asn_entry_has_a_source() -> None:
    import tomllib
    from importlib import resources

    doc = tomllib.loads(resources.files("sensor").joinpath("data/cloud_asns.toml").read_text())
    assert len(doc["provider"]) >= 6
    for entry in doc["provider"]:
        assert entry["source"].strip() and (entry["asns"] or entry["orgs"])
        for asn in entry["asns"]:
            assert f"AS{asn} " in entry["source"], (entry["name"], asn)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("format = 2\n", "format = 1"),
        ('format = 1\n[[provider]]\nname = "x"\nlabel = "X"\n', "non-empty strings"),
        (
            'format = 1\n[[provider]]\nname = "x"\nlabel = "X"\nsource = "s"\nasns = ["1"]\n',
            "asns: expected a list of AS numbers",
        ),
        (
            'format = 1\n[[provider]]\nname = "x"\nlabel = "X"\nsource = "s"\nasns = [1, 1]\n',
            "AS1 is listed twice",
        ),
        (
            'format = 1\n[[provider]]\nname = "x"\nlabel = "X"\nsource = "s"\norgs = ["("]\n',
            "bad pattern",
        ),
        ('format = 1\n[[provider]]\nname = "x"\nwhat = 1\n', "expected name, label"),
        ("format = ", "cloud_asns.toml"),
    ],
)
def test_cloud_asn_table_errors(tmp_path: Path, text: str, message: str) -> None:
    from sensor.enrich.cloud import CloudAsns, CloudDataError

    p = tmp_path / "cloud_asns.toml"
    p.write_text(text)
    with pytest.raises(CloudDataError, match=message):
        CloudAsns.load(p)
