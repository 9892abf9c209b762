"""Tests for sensor.enrich.asn and the AS precedence in GeoDB."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from sensor.enrich.asn import AsnDataError, parse
from sensor.enrich.geo import (
    EmbeddedGeo,
    GeoDB,
    GeoInfo,
    IpKey,
    MaxMindDB,
    embedded_data_path,
    ip_key,
)

# iptoasn's ip2asn-combined.tsv: start, end, AS number, country, description; IPv4 then IPv6.
TSV = (
    "1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n"
    "1.0.1.0\t1.0.3.255\t0\tNone\tNot routed\n"
    "8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\n"
    "8.8.9.0\t8.8.9.255\t15169\tUS\tGOOGLE\n"
    "47.74.0.0\t47.74.255.255\t45102\tCN\tALIBABA-CN-NET Alibaba US Technology Co., Ltd.\n"
    "120.92.0.0\t120.92.255.255\t59019\tCN\t\n"
    "2001:4860::\t2001:4860:ffff:ffff:ffff:ffff:ffff:ffff\t15169\tUS\tGOOGLE\n"
    "2400:cb00::\t2400:cb00:ffff:ffff:ffff:ffff:ffff:ffff\t13335\tUS\tCLOUDFLARENET\n"
)
# DB-IP's IP to ASN Lite CSV: start, end, AS number, organisation.
DBIP = (
    '1.0.0.0,1.0.0.255,13335,"Cloudflare, Inc."\n'
    '2400:cb00::,2400:cb00:ffff:ffff:ffff:ffff:ffff:ffff,13335,"Cloudflare, Inc."\n'
)


def _key(ip: str) -> IpKey:
    key = ip_key(ip)
    assert key is not None
    return key


def test_iptoasn_tsv_plain_and_gzipped() -> None:
    for data in (TSV.encode(), gzip.compress(TSV.encode())):
        asn = parse(data)
        assert asn.kind == "iptoasn"
        assert asn.lookup_key(_key("1.0.0.7")) == (13335, "CLOUDFLARENET")
        assert asn.lookup_key(_key("1.0.2.1")) is None  # not routed
        assert asn.lookup_key(_key("2400:cb00:1::1")) == (13335, "CLOUDFLARENET")
        assert asn.lookup_key(_key("120.92.65.10")) == (59019, None)
        assert asn.lookup_key(_key("9.9.9.9")) is None
        assert len(asn) == 6  # the two adjacent GOOGLE rows merged
        assert asn.asns == 4


def test_dbip_csv() -> None:
    asn = parse(DBIP.encode())
    assert asn.kind == "dbip"
    assert asn.lookup_key(_key("1.0.0.1")) == (13335, "Cloudflare, Inc.")
    assert asn.lookup_key(_key("2400:cb00::5")) == (13335, "Cloudflare, Inc.")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.0.0.0\t1.0.0.255\tAS1\tUS\tX\n", "line 1: not an AS number"),
        ("1.0.0.0\t1.0.0.255\t1\tUS\n", "line 1: expected 5 tab-separated fields"),
        ("1.0.0.0\tnope\t1\tUS\tX\n", "line 1: not an address"),
        ("1.0.0.9\t1.0.0.1\t1\tUS\tX\n", "line 1: bad range"),
        ("1.0.0.0\t1.0.0.255\t1\tUS\tX\n1.0.0.9\t1.0.1.0\t2\tUS\tY\n", "line 2: ranges not sorted"),
        ("1.0.0.0\t::5\t1\tUS\tX\n", "line 1: bad range"),
        ("1.0.0.0\t1.0.0.255\t0\tNone\tNot routed\n", "no routed ranges"),
        ("", "no routed ranges"),
        ("1.0.0.0,1.0.0.255,1\n", "line 1: expected start,end,asn,organisation"),
    ],
)
def test_malformed_files_are_rejected(text: str, message: str) -> None:
    with pytest.raises(AsnDataError, match=message):
        parse(text.encode())


def test_bad_gzip_is_rejected() -> None:
    with pytest.raises(AsnDataError, match="truncated gzip"):
        parse(gzip.compress(TSV.encode())[:-12])
    with pytest.raises(AsnDataError, match="bad gzip"):
        parse(b"\x1f\x8b" + b"\0" * 20)


# --- precedence in GeoDB --------------------------------------------------------------------


def test_dataset_gives_numbers_and_names() -> None:
    db = GeoDB(asn_data=parse(TSV.encode()))
    assert db.lookup("47.74.1.1") == GeoInfo(
        None, 45102, "ALIBABA-CN-NET Alibaba US Technology Co., Ltd."
    )
    assert "asn: iptoasn dataset, 6 ranges" in db.describe()


def test_embedded_names_the_organisation_where_the_dataset_has_only_a_number() -> None:
    if embedded_data_path() is None:
        pytest.skip("geoip2fast is not installed")
    db = GeoDB(embedded=EmbeddedGeo.load(), asn_data=parse(TSV.encode()))
    kingsoft = db.lookup("120.92.65.10")
    assert kingsoft.asn == 59019 and kingsoft.country == "CN"
    assert kingsoft.asn_org is not None and "Kingsoft" in kingsoft.asn_org
    google = db.lookup("8.8.8.8")
    assert (google.asn, google.asn_org) == (15169, "GOOGLE")
    # outside the dataset: the embedded organisation, still no number
    other = db.lookup("52.74.0.1")
    assert other.asn is None and other.asn_org == "AMAZON-02"


def test_a_configured_maxmind_asn_database_wins(mmdb_asn: Path) -> None:
    db = GeoDB(asn_db=MaxMindDB(mmdb_asn), asn_data=parse(TSV.encode()))
    assert db.lookup("120.92.65.10").asn_org == "Beijing Kingsoft Cloud Internet Technology"
    assert db.lookup("47.74.1.1").asn is None  # the database does not know it: no mixing


@pytest.fixture
def mmdb_asn(tmp_path: Path) -> Path:
    from tests.enrich.test_geo import write_mmdb

    return write_mmdb(
        tmp_path / "asn.mmdb",
        {
            "120.92.0.0/16": {
                "autonomous_system_number": 59019,
                "autonomous_system_organization": "Beijing Kingsoft Cloud Internet Technology",
            }
        },
        "GeoLite2-ASN",
    )
