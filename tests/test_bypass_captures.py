"""DNS bypass on real encrypted-DNS clients: DoT, DoH and DoQ first flights from nDPI's test
suite (tests/captures/dnsbypass/, sources and licences in tests/README.md) make `analyze`
report `dns_bypass` with the right protocol, resolver and evidence, and raise the rule once
per device and resolver; a resolver the owner allows is not a bypass.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from sensor.analyze import analyze

CAPTURES = Path(__file__).with_name("captures") / "dnsbypass"

# (file, client, resolver address, port, protocol, resolver, evidence)
CASES = [
    # Android-style DoT to Google Public DNS: no SNI, no ALPN; the port says it.
    ("ndpi-dns_dot.pcap", "192.168.1.185", "8.8.8.8", 853, "dot", "dns.google", "tcp/853"),
    # Firefox's DoH to Cloudflare: the SNI is a listed resolver's name.
    (
        "ndpi-dns_doh.pcap",
        "172.20.10.4",
        "104.16.248.249",
        443,
        "doh",
        "mozilla.cloudflare-dns.com",
        "sni=mozilla.cloudflare-dns.com,alpn=h2",
    ),
    # DoH by address alone: no SNI, but 1.1.1.1 on port 443 is on the resolver list.
    (
        "ndpi-doh.pcapng",
        "192.168.1.253",
        "1.1.1.1",
        443,
        "doh",
        "cloudflare-dns.com",
        "doh-list-address,alpn=h2",
    ),
    # DoQ (draft ALPN doq-i00, old port 784) to AdGuard: the ALPN says it, not the port.
    (
        "ndpi-doq_adguard.pcapng",
        "192.168.12.169",
        "94.140.14.14",
        784,
        "doq",
        "dns.adguard.com",
        "alpn=doq-i00",
    ),
]


def _records(capture: Path, tmp_path: Path, config: str = "") -> list[dict[str, Any]]:
    path = tmp_path / "phonehome.toml"
    path.write_text(config)
    out, err = io.StringIO(), io.StringIO()
    rc = analyze([str(capture)], config_path=str(path), as_json=True, out=out, err=err)
    assert rc == 0, err.getvalue()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_captures_are_small() -> None:
    files = sorted(CAPTURES.iterdir())
    assert {f.name for f in files} == {c[0] for c in CASES}
    assert all(f.stat().st_size < 50_000 for f in files)


@pytest.mark.parametrize(
    ("name", "client", "address", "port", "protocol", "resolver", "evidence"), CASES
)
def test_encrypted_dns_is_reported(
    tmp_path: Path,
    name: str,
    client: str,
    address: str,
    port: int,
    protocol: str,
    resolver: str,
    evidence: str,
) -> None:
    recs = _records(CAPTURES / name, tmp_path)
    (flow,) = [r for r in recs if r["type"] == "flow" and r["dst_ip"] == address]
    assert (flow["src_ip"], flow["dst_port"]) == (client, port)
    assert flow["dns_bypass"] == {"protocol": protocol, "resolver": resolver, "evidence": evidence}
    assert flow["ja4"]  # a real hello was decoded, not just a port seen
    alerts = [r for r in recs if r["type"] == "alert" and r["rule"] == "dns_bypass"]
    assert len(alerts) == 1
    assert alerts[0]["severity"] == "info" and resolver in alerts[0]["summary"]
    assert alerts[0]["flow_uid"] == flow["uid"]


def test_dot_to_an_allowed_resolver_is_not_a_bypass(tmp_path: Path) -> None:
    """The same real DoT session, with 8.8.8.8 the network's own resolver (as when DHCP hands
    it out and Android's automatic Private DNS upgrades to DoT): nothing is reported."""
    recs = _records(
        CAPTURES / "ndpi-dns_dot.pcap",
        tmp_path,
        '[dns_bypass]\nallowed_resolvers = ["8.8.8.8"]\n',
    )
    (flow,) = [r for r in recs if r["type"] == "flow" and r["dst_ip"] == "8.8.8.8"]
    assert flow.get("dns_bypass") is None and flow["dst_port"] == 853
    assert not [r for r in recs if r["type"] == "alert" and r["rule"] == "dns_bypass"]
