"""The public encrypted-DNS resolver list: DNS stamps, DNSCrypt's markdown list, the embedded
TOML, and which one `load` picks."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from sensor.enrich import doh
from sensor.enrich.doh import ResolverList, ResolverListError, Stamp, parse_stamp


def _lp(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


def make_stamp(proto: int, addr: str, host: str, path: str = "/dns-query") -> str:
    """A DNS stamp as dnscrypt.info/stamps-specifications lays it out: protocol, properties,
    LP(addr), VLP(hashes: one 32-byte hash here), LP(hostname), then LP(path) for DoH."""
    body = bytes([proto]) + (7).to_bytes(8, "little") + _lp(addr)
    body += bytes([32]) + bytes(range(32))
    body += _lp(host)
    if proto == 0x02:
        body += _lp(path)
    return "sdns://" + base64.urlsafe_b64encode(body).decode().rstrip("=")


SAMPLE_MD = f"""# public-resolvers

A list in DNSCrypt's format (made-up entries, built by make_stamp).

## example-doh

Hosted nowhere.

{make_stamp(0x02, "192.0.2.53", "doh.example.net")}
{make_stamp(0x02, "[2001:db8::53]:443", "doh.example.net")}

## example-dot

{make_stamp(0x03, "", "dot.example.net:853")}

## example-doq

{make_stamp(0x04, "198.51.100.53", "doq.example.net")}

## example-dnscrypt

{make_stamp(0x01, "203.0.113.1:5443", "2.dnscrypt-cert.example.net")}
""".encode()


def test_stamps() -> None:
    assert parse_stamp(make_stamp(0x02, "192.0.2.53:443", "DoH.Example.net")) == Stamp(
        "doh", "192.0.2.53", "doh.example.net"
    )
    assert parse_stamp(make_stamp(0x03, "[2001:db8::53]", "dot.example.net:853")) == Stamp(
        "dot", "2001:db8::53", "dot.example.net"
    )
    # An address where the host name belongs is no name (DNSCrypt's Google entry does that).
    assert parse_stamp(make_stamp(0x02, "8.8.8.8", "8.8.8.8")) == Stamp("doh", "8.8.8.8", None)
    assert parse_stamp(make_stamp(0x01, "192.0.2.1", "2.dnscrypt-cert.example")) is None
    for bad in ("sdns://", "sdns://AgcA", "sdns://!!!", "sdns://" + "A" * 5000, "sdns://Ag"):
        assert parse_stamp(bad) is None


def test_markdown_list() -> None:
    res = ResolverList.parse(SAMPLE_MD)
    assert [r.name for r in res.resolvers] == ["example-doh", "example-dot", "example-doq"]
    assert res.resolvers[0].addresses == ("192.0.2.53", "2001:db8::53")
    assert res.host("doh.example.net") == "doh.example.net"
    assert res.host("user1.dot.example.net") == "dot.example.net"
    assert res.host("example.net") is None and res.host(None) is None
    assert res.address("2001:db8::53") == "doh.example.net"
    assert res.address("203.0.113.1") is None  # a DNSCrypt resolver: not DoH
    with pytest.raises(ResolverListError):
        ResolverList.parse(b"# public-resolvers\n\n## nothing\n\nsdns://AQcAAAAAAAAA\n")


def test_embedded_list_is_valid_and_attributed() -> None:
    res = doh.embedded()
    assert res.origin == "embedded" and len(res) > 300
    assert {r.source for r in res.resolvers} == {"operators", "dnscrypt"}
    assert res.address("8.8.8.8") == "dns.google"
    assert res.address("1.1.1.1") == "cloudflare-dns.com"
    assert res.host("dns.quad9.net") == "dns.quad9.net"
    text = (Path(doh.__file__).parent.parent / "data" / doh.EMBEDDED).read_text()
    assert "BSD-2-Clause" in text and "Frank Denis" in text


def test_embedded_toml_rejects_unknown_sources() -> None:
    bad = b'[[resolvers]]\nname = "x"\nhosts = ["x.example"]\nsource = "nowhere"\n'
    with pytest.raises(ResolverListError, match="unknown source"):
        ResolverList.parse(bad)


def test_load_prefers_a_good_fetched_list(tmp_path: Path) -> None:
    res, errors = doh.load(tmp_path)
    assert res.origin == "embedded" and errors == []
    (tmp_path / doh.LIST_FILE).write_bytes(SAMPLE_MD)
    res, errors = doh.load(tmp_path)
    assert res.origin.endswith(doh.LIST_FILE) and errors == [] and len(res) == 3
    (tmp_path / doh.LIST_FILE).write_bytes(b"<html>not a list</html>")
    res, errors = doh.load(tmp_path)
    assert res.origin == "embedded" and "doh resolvers" in errors[0]
