"""Tests for sensor.enrich.party: who is behind a server name, apart from who hosts it."""

from __future__ import annotations

import json

import pytest

from sensor.enrich.party import DomainOwners, OwnersDataError, PartyMatch, PartyResolver
from sensor.enrich.vendors import PublicSuffixes, VendorMap

# Exodus Privacy's trackers export, in its real layout (ids as keys, network signatures as
# regular expressions of alternatives); the trackers and hosts are made up.
EXODUS = {
    "trackers": {
        "1": {
            "id": 1,
            "name": "Examplytics",
            "description": "",
            "creation_date": "2017-09-24",
            "code_signature": "com.examplytics.",
            "network_signature": "examplytics\\.example|\\.sdk-metrics\\.example\\.net",
            "website": "https://examplytics.example",
            "categories": ["Analytics"],
            "documentation": [],
        },
        "2": {
            "id": 2,
            "name": "AdWidget",
            "code_signature": "com.adwidget.",
            "network_signature": "ads\\.widget\\.example\\.org|[0-9]+\\.adw\\.example",
            "website": "",
            "categories": ["Advertisement"],
        },
        "3": {"id": 3, "name": "NoNetwork", "code_signature": "x.", "network_signature": ""},
    }
}

# Disconnect's entity list layout (also DuckDuckGo's entity_map without the wrapper).
ENTITIES = {
    "license": "a licence text, not an entity",
    "entities": {
        "Sample Media": {
            "properties": ["samplemedia.example"],
            "resources": ["smcdn.example", "Bad Name!"],
        },
    },
}


@pytest.fixture(scope="module")
def vm() -> VendorMap:
    return VendorMap.load(psl=PublicSuffixes())


@pytest.fixture(scope="module")
def resolver(vm: VendorMap) -> PartyResolver:
    return PartyResolver(vm, DomainOwners.parse(json.dumps(EXODUS).encode()))


def test_names_in_the_vendor_map(resolver: PartyResolver) -> None:
    # the examples: the owner of the name, not its host
    for name, party in [
        ("api-v2.soundcloud.com", "SoundCloud"),
        ("kerve.last.fm", "Paramount Global"),
        ("www.gitlab.com", "GitLab"),
        ("inapps.appsflyersdk.com", "AppsFlyer"),
        ("sdk.iad-01.braze.com", "Braze"),
    ]:
        m = resolver.party_for_name(name)
        assert m is not None and (m.party, m.source) == (party, "map"), name
    m = resolver.party_for_name("api.account.xiaomi.com")
    assert m == PartyMatch("Xiaomi", "map", "xiaomi.com")
    fcm = resolver.party_for_name("fcm.googleapis.com")
    assert fcm is not None and (fcm.party, fcm.source) == ("Google", "map")


def test_organisations_behind_test_servers_but_not_people(resolver: PartyResolver) -> None:
    """The QUIC interop servers in the public captures (vendors_services.toml, issue 19):
    companies and open-source projects get their name; a host on a person's own domain keeps
    the bare domain, even when it serves a project (the map names no people)."""
    for name, party in [
        ("quic.tech", "Cloudflare"),
        ("quic.rocks", "Google"),
        ("test.privateoctopus.com", "Private Octopus"),
        ("nghttp2.org", "nghttp2 project"),
        ("quic.aiortc.org", "aiortc project"),
        ("h2o.examp1e.net", "H2O project"),
        ("quic.examp1e.net", "H2O project"),
        ("cognito-identity.us-east-1.amazonaws.com", "Amazon Web Services"),
    ]:
        m = resolver.party_for_name(name)
        assert m is not None and (m.party, m.source) == (party, "map"), name
    # only the project's two documented hosts: the rest of examp1e.net is not known to be its
    assert resolver.party_for_name("www.examp1e.net") == PartyMatch(
        "examp1e.net", "domain", "examp1e.net"
    )
    for name, domain in [
        ("quant.eggert.org", "eggert.org"),
        ("quic.seemann.io", "seemann.io"),
        ("mew.org", "mew.org"),
        ("h3.stammw.eu", "stammw.eu"),
        ("quic.ogre.com", "ogre.com"),
    ]:
        assert resolver.party_for_name(name) == PartyMatch(domain, "domain", domain), name


def test_names_only_in_the_dataset(resolver: PartyResolver) -> None:
    assert resolver.party_for_name("events.examplytics.example") == PartyMatch(
        "Examplytics", "dataset", "examplytics.example"
    )
    assert resolver.party_for_name("eu.sdk-metrics.example.net") == PartyMatch(
        "Examplytics", "dataset", "sdk-metrics.example.net"
    )
    # a host-level entry covers that host (and below it), not its siblings
    assert resolver.party_for_name("ads.widget.example.org") == PartyMatch(
        "AdWidget", "dataset", "ads.widget.example.org"
    )
    other = resolver.party_for_name("www.widget.example.org")
    assert other == PartyMatch("example.org", "domain", "example.org")


def test_names_in_neither_give_the_registrable_domain(resolver: PartyResolver) -> None:
    assert resolver.party_for_name("api.indie-radio-app.com") == PartyMatch(
        "indie-radio-app.com", "domain", "indie-radio-app.com"
    )
    assert resolver.party_for_name("x.y.podcasts.co.uk") == PartyMatch(
        "podcasts.co.uk", "domain", "podcasts.co.uk"
    )
    # a customer's name on a platform of the PSL's private section is its own party
    m = resolver.party_for_name("my-app.herokuapp.com")
    assert m is not None and m.party == "my-app.herokuapp.com" and m.source == "domain"


def test_a_customer_on_a_hosting_platform_is_the_party(resolver: PartyResolver) -> None:
    m = resolver.party_for_name("photos.s3.ap-southeast-1.amazonaws.com")
    assert m is not None and m.source == "domain"
    assert m.party == "photos.s3.ap-southeast-1.amazonaws.com"


@pytest.mark.parametrize("name", [None, "", "192.0.2.1", "[2001:db8::1]", "com", "localhost"])
def test_no_usable_name_no_party(resolver: PartyResolver, name: str | None) -> None:
    assert resolver.party_for_name(name) is None


def test_without_a_dataset(vm: VendorMap) -> None:
    bare = PartyResolver(vm)
    m = bare.party_for_name("events.examplytics.example")
    assert m == PartyMatch("examplytics.example", "domain", "examplytics.example")


def test_exodus_layout_keeps_only_plain_host_alternatives() -> None:
    owners = DomainOwners.parse(json.dumps(EXODUS).encode())
    assert owners.kind == "exodus"
    assert dict(owners.owners) == {
        "examplytics.example": "Examplytics",
        "sdk-metrics.example.net": "Examplytics",
        "ads.widget.example.org": "AdWidget",
    }
    as_list = DomainOwners.parse(
        json.dumps({"trackers": list(EXODUS["trackers"].values())}).encode()
    )
    assert dict(as_list.owners) == dict(owners.owners)


def test_entities_layout() -> None:
    owners = DomainOwners.parse(json.dumps(ENTITIES).encode())
    assert owners.kind == "entities"
    assert dict(owners.owners) == {
        "samplemedia.example": "Sample Media",
        "smcdn.example": "Sample Media",
    }
    ddg = {"Sample Media Inc.": {"displayName": "Sample Media", "properties": ["sm.example"]}}
    assert dict(DomainOwners.parse(json.dumps(ddg).encode()).owners) == {
        "sm.example": "Sample Media"
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"trackers": 3}', "expected an object or a list"),
        (b'{"trackers": {"1": {"network_signature": "a\\\\.example"}}}', "non-empty name"),
        (b'{"trackers": {}}', "no host names"),
        (b'{"entities": {"X": {"properties": "x.example"}}}', "expected a list"),
        (b"{}", "no host names"),
    ],
)
def test_bad_datasets_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(OwnersDataError, match=message):
        DomainOwners.parse(data)


def test_lookups_are_cached(resolver: PartyResolver) -> None:
    before = resolver.cache_info()["hits"]
    resolver.party_for_name("cached.examplytics.example")
    resolver.party_for_name("cached.examplytics.example")
    assert resolver.cache_info()["hits"] == before + 1
