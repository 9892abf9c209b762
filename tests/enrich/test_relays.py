"""Relay lists and matching: Tor's consensus (Onionoo and raw), VPN lists, handshake shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sensor.enrich.relays import (
    ICLOUD_PRIVATE_RELAY,
    TOR_FILE,
    VPN_PROTON_FILE,
    AddressList,
    RelayDataError,
    RelayMatcher,
    TorRelays,
    embedded,
    vpn_protocol,
)
from sensor.model import Flow
from tests.relay_fixtures import (
    CONSENSUS,
    ONIONOO,
    PROTON_ENTRY,
    PROTONVPN,
    TOR_GUARD,
    TOR_GUARD_PORT,
    TOR_MIDDLE,
    TOR_STOPPED,
    TOR_V6,
)


def flow(dst: str, port: int = 443, name: str | None = None, source: str | None = None) -> Flow:
    f = Flow("F1", "tcp", "192.168.1.23", 40000, dst, port, None, 0.0, 1.0)
    f.server_name = name
    f.name_source = source  # type: ignore[assignment]
    return f


def test_onionoo_running_relays() -> None:
    tor = TorRelays.parse(ONIONOO)
    assert tor.kind == "onionoo"
    assert tor.endpoints == {(TOR_GUARD, TOR_GUARD_PORT), (TOR_V6, 9001), (TOR_MIDDLE, 443)}
    assert tor.guards == 1
    assert (TOR_STOPPED, 9001) not in tor


def test_consensus_document() -> None:
    tor = TorRelays.parse(CONSENSUS)
    assert tor.kind == "consensus"
    assert tor.endpoints == TorRelays.parse(ONIONOO).endpoints
    assert tor.guards == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{}", "no 'relays' list"),
        (json.dumps({"relays": []}).encode(), "no running relays"),
        (json.dumps({"relays": [{"or_addresses": ["x:1"]}]}).encode(), "not address:port"),
        (json.dumps({"relays": [{"or_addresses": "1.2.3.4:1"}]}).encode(), "expected a list"),
        (b"<html>busy</html>", "neither"),
        (b"network-status-version 3\nr broken\n", "malformed 'r' line"),
        (b"\xff\xfe", "not ASCII"),
        (b"{" * 100_000, "not JSON"),
    ],
)
def test_bad_tor_lists_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(RelayDataError, match=reason):
        TorRelays.parse(data)


def test_address_lists() -> None:
    vpn = AddressList.parse(PROTONVPN)
    assert len(vpn) == 3
    assert PROTON_ENTRY in vpn and "198.51.100.140" in vpn and "2001:db8:77::10" in vpn
    assert "198.51.100.144" not in vpn and "203.0.113.78" not in vpn and "nonsense" not in vpn
    js = AddressList.parse(json.dumps([PROTON_ENTRY, "2001:db8::/64"]).encode())
    assert "2001:db8::5" in js and PROTON_ENTRY in js
    mullvad = AddressList.parse(
        json.dumps([{"hostname": "se-got-wg-001", "ipv4_addr_in": "198.51.100.5"}]).encode()
    )
    assert "198.51.100.5" in mullvad
    with pytest.raises(RelayDataError, match="line 2: not an address"):
        AddressList.parse(b"198.51.100.1\nexample.com\n")
    with pytest.raises(RelayDataError, match="no addresses"):
        AddressList.parse(b"# nothing\n")


def test_overlapping_prefixes_merge() -> None:
    a = AddressList.parse(b"198.51.100.0/25\n198.51.100.64/26\n198.51.100.128/25\n")
    assert a.starts[0] == (int.from_bytes(bytes([198, 51, 100, 0]), "big"),)
    assert "198.51.100.255" in a and "198.51.101.0" not in a


def test_embedded_table() -> None:
    names, tor = embedded()
    assert "mask.icloud.com" in names and "mask-h2.icloud.com" in names
    assert ("131.188.40.189", 443) in tor  # gabelmoo, a directory authority
    assert tor.kind == "embedded" and len(tor) >= 9


def test_matching_order_and_names(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / TOR_FILE).write_bytes(ONIONOO)
    (data / VPN_PROTON_FILE).write_bytes(PROTONVPN)
    own = tmp_path / "office.txt"
    own.write_text("192.0.2.200\n")
    m, errors = RelayMatcher.load(data, {"office": str(own)})
    assert errors == []
    assert m.match(flow("17.0.0.1", name="mask.icloud.com", source="dns")) == ICLOUD_PRIVATE_RELAY
    assert m.match(flow("17.0.0.1", name="x.mask-h2.icloud.com", source="tls")) == (
        ICLOUD_PRIVATE_RELAY
    )
    assert m.match(flow("17.0.0.1", name="mask-api.icloud.com", source="dns")) is None
    assert m.match(flow("17.0.0.1", name="notmask.icloud.com", source="dns")) is None
    assert m.match(flow(TOR_GUARD, TOR_GUARD_PORT)) == "tor"
    assert m.match(flow(TOR_GUARD, 80)) is None  # another service on a relay's host
    assert m.match(flow(TOR_STOPPED, 9001)) is None
    assert m.match(flow("131.188.40.189", 443)) is None  # the fetched list replaces the embedded
    assert m.match(flow(PROTON_ENTRY, 1194)) == "vpn:protonvpn"
    assert m.match(flow("192.0.2.200", 51820)) == "vpn:office"
    assert m.match(flow("192.0.2.201")) is None
    assert any("tor: 3 ORPorts" in line for line in m.describe())


def test_broken_lists_are_errors_not_fatal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / TOR_FILE).write_bytes(b"{}")
    m, errors = RelayMatcher.load(data, {"gone": str(tmp_path / "missing.txt")})
    assert len(errors) == 2 and "tor relays" in errors[0] and "vpn list gone" in errors[1]
    assert m.match(flow("131.188.40.189", 443)) == "tor"  # the embedded authorities stand in


def test_vpn_handshake_shapes() -> None:
    wg = b"\x01\x00\x00\x00" + bytes(144)
    assert vpn_protocol("udp", 51820, wg) == "wireguard"
    assert vpn_protocol("udp", 51820, wg + b"x") is None
    assert vpn_protocol("udp", 51820, b"\x02" + wg[1:]) is None
    reset = b"\x38" + bytes(8) + b"\x00" + bytes(4)
    assert vpn_protocol("udp", 1194, reset) == "openvpn"
    assert vpn_protocol("udp", 5000, reset) is None  # a leading 0x38 means nothing elsewhere
    tcp = len(reset).to_bytes(2, "big") + reset + bytes(2)
    assert vpn_protocol("tcp", 443, tcp[:2] + tcp[2:]) is None  # length prefix must agree
    tcp = (len(reset) + 2).to_bytes(2, "big") + reset + bytes(2)
    assert vpn_protocol("tcp", 443, tcp) == "openvpn"
    assert vpn_protocol("tcp", 443, b"\x16\x03\x01" + bytes(40)) is None


def test_oversized_lists_are_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    from sensor.enrich import relays

    monkeypatch.setattr(relays, "MAX_VPN_ENTRIES", 100)
    monkeypatch.setattr(relays, "MAX_TOR_ENDPOINTS", 2)
    with pytest.raises(RelayDataError, match="more than 100 entries"):
        AddressList.parse(b"192.0.2.1\n" * 101)
    with pytest.raises(RelayDataError, match="more than 100 entries"):
        AddressList.parse(json.dumps(["192.0.2.1"] * 101).encode())
    with pytest.raises(RelayDataError, match="not JSON"):
        AddressList.parse(b'["192.0.2.1"')  # cut short
    with pytest.raises(RelayDataError, match="more than 2 ORPorts"):
        TorRelays.parse(ONIONOO)
    with pytest.raises(RelayDataError, match="more than 2 ORPorts"):
        TorRelays.parse(CONSENSUS)
