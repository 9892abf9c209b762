"""Configuration: TOML into typed settings; errors name the file, the dotted key, the reason."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from sensor.cli import main
from sensor.config import (
    DEFAULT_LAN_NETWORKS,
    DEVICE_KINDS,
    Config,
    ConfigError,
    DeviceConfig,
    DnsConfig,
    FlowsConfig,
    GeoConfig,
    PathsConfig,
    SiteConfig,
    UpdateConfig,
    load_config,
    normalize_mac,
)
from sensor.synth import PHONE, Capture, PcapWriter, TcpSession, client_hello


def write(tmp_path: Path, text: str, name: str = "phonehome.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    err = exc.value
    assert err.source == str(path)
    assert str(err) == f"{path}: {err.key}: {err.reason}"
    return err


# --- defaults and a full file ------------------------------------------------------------------


def test_defaults() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.source == "<defaults>"
    assert cfg.site.lan_networks == DEFAULT_LAN_NETWORKS
    assert "192.168.0.0/16" in cfg.site.lan_networks and "fc00::/7" in cfg.site.lan_networks
    assert cfg.site.home_country is None
    assert cfg.paths.state_dir == "/var/lib/phonehome"
    assert cfg.flows == FlowsConfig(200_000, 300.0, 60.0, 6, 65536, 4096, 8)
    assert cfg.dns == DnsConfig(65_536, 0.0)
    assert cfg.geo == GeoConfig(None, None)
    assert cfg.update == UpdateConfig({}, 60.0, 64 << 20)
    assert cfg.devices == ()


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing set\n")
    cfg = load_config(path)
    assert cfg == Config(source=str(path))


def test_every_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[site]
lan_networks = ["192.168.1.0/24", "fd00:1::/64", "10.9.8.7/16"]
home_country = "NL"

[paths]
state_dir = "/tmp/phonehome-state"

[flows]
max_flows = 5000
tcp_idle_timeout = 120      # an integer where a number is expected
udp_idle_timeout = 30.5
inspect_packets = 10
inspect_bytes = 32768
http_body_budget = 0
max_http_requests = 2

[dns]
max_cache = 1024
ttl_grace = 5

[geo]
country_db = "/usr/share/GeoIP/dbip-country-lite.mmdb"
asn_db = "/usr/share/GeoIP/GeoLite2-ASN.mmdb"

[update]
timeout = 10
max_bytes = 1048576
[update.urls]
geo-country = "https://downloads.example.com/country.mmdb"

[[devices]]
mac = "64-09-80-12-34-56"
name = "Living room TV"
kind = "tv"

[[devices]]
mac = "3C22FBAABBCC"
""",
    )
    cfg = load_config(path)
    assert cfg.source == str(path)
    assert cfg.site == SiteConfig(("192.168.1.0/24", "fd00:1::/64", "10.9.8.7/16"), "NL")
    assert cfg.paths == PathsConfig("/tmp/phonehome-state")
    assert cfg.flows == FlowsConfig(5000, 120.0, 30.5, 10, 32768, 0, 2)
    assert isinstance(cfg.flows.tcp_idle_timeout, float)
    assert cfg.dns == DnsConfig(1024, 5.0) and isinstance(cfg.dns.ttl_grace, float)
    assert cfg.geo == GeoConfig(
        "/usr/share/GeoIP/dbip-country-lite.mmdb", "/usr/share/GeoIP/GeoLite2-ASN.mmdb"
    )
    assert cfg.update == UpdateConfig(
        {"geo-country": "https://downloads.example.com/country.mmdb"}, 10.0, 1 << 20
    )
    assert cfg.devices == (
        DeviceConfig("64:09:80:12:34:56", "Living room TV", "tv"),
        DeviceConfig("3c:22:fb:aa:bb:cc", None, None),
    )


# --- unknown names -----------------------------------------------------------------------------


def test_unknown_section(tmp_path: Path) -> None:
    err = error(tmp_path, "[sites]\nhome_country = 'DE'\n")
    assert (err.key, err.reason) == ("sites", "unknown section")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[site]\nlan_network = ['10.0.0.0/8']\n", "site.lan_network"),
        ("[paths]\nstatedir = '/x'\n", "paths.statedir"),
        ("[flows]\nmax_flow = 100\n", "flows.max_flow"),
        ("[dns]\nttl = 1\n", "dns.ttl"),
        ("[geo]\ncity_db = '/x'\n", "geo.city_db"),
        ("[update]\nurl = 'x'\n", "update.url"),
        ("[flows.timeouts]\ntcp = 1\n", "flows.timeouts"),
        (
            "[[devices]]\nmac = '02:00:00:00:00:01'\n[[devices]]\nmac = '02:00:00:00:00:02'\n"
            "colour = 'red'\n",
            "devices[1].colour",
        ),
    ],
)
def test_unknown_key(tmp_path: Path, text: str, key: str) -> None:
    err = error(tmp_path, text)
    assert (err.key, err.reason) == (key, "unknown key")


# --- types -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[flows]\nmax_flows = '100000'\n", "flows.max_flows", "expected an integer, got str"),
        ("[flows]\nmax_flows = 1e5\n", "flows.max_flows", "expected an integer, got float"),
        ("[flows]\nmax_flows = true\n", "flows.max_flows", "expected an integer, got bool"),
        ("[flows]\ntcp_idle_timeout = '5m'\n", "flows.tcp_idle_timeout", "expected a number"),
        ("[dns]\nttl_grace = false\n", "dns.ttl_grace", "expected a number, got bool"),
        ("[site]\nlan_networks = '10.0.0.0/8'\n", "site.lan_networks", "expected a list"),
        ("[site]\nlan_networks = ['10.0.0.0/8', 172]\n", "site.lan_networks[1]", "string"),
        ("[site]\nhome_country = 49\n", "site.home_country", "expected a string, got int"),
        ("[paths]\nstate_dir = ['/a']\n", "paths.state_dir", "expected a string, got list"),
        ("[geo]\nasn_db = 2024-01-01\n", "geo.asn_db", "expected a string, got date"),
        ("[update]\nurls = ['x']\n", "update.urls", "expected a table, got list"),
        ("[update.urls]\ngeo = 1\n", "update.urls.geo", "expected a string, got int"),
        ("site = 'home'\n", "site", "expected a table"),
        ("devices = 'tv'\n", "devices", "expected an array of tables"),
        ("devices = ['tv']\n", "devices[0]", "expected a table"),
        ("[[devices]]\nmac = 6409801234\n", "devices[0].mac", "expected a string, got int"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, key: str, reason: str) -> None:
    err = error(tmp_path, text)
    assert err.key == key
    assert reason in err.reason


# --- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["10.0.0.0/33", "192.168.1", "lan", "fd00::/129", ""])
def test_bad_lan_networks(tmp_path: Path, net: str) -> None:
    err = error(tmp_path, f"[site]\nlan_networks = ['10.0.0.0/8', '{net}']\n")
    assert err.key == "site.lan_networks"
    assert err.reason  # ipaddress says what is wrong


def test_lan_networks_with_host_bits_are_accepted(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[site]\nlan_networks = ['192.168.1.1/24', '::1/128']\n"))
    assert cfg.site.lan_networks == ("192.168.1.1/24", "::1/128")


@pytest.mark.parametrize("country", ["de", "DEU", "D", "D1", "", "De"])
def test_bad_home_country(tmp_path: Path, country: str) -> None:
    err = error(tmp_path, f"[site]\nhome_country = '{country}'\n")
    assert err.key == "site.home_country"
    assert "two-letter" in err.reason


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[flows]\nmax_flows = 15\n", "flows.max_flows"),
        ("[flows]\ninspect_packets = 65\n", "flows.inspect_packets"),
        ("[flows]\ninspect_packets = -1\n", "flows.inspect_packets"),
        ("[flows]\nhttp_body_budget = 1048577\n", "flows.http_body_budget"),
    ],
)
def test_flow_limits(tmp_path: Path, text: str, key: str) -> None:
    assert error(tmp_path, text).key == key


def test_flow_limits_at_their_bounds_are_accepted(tmp_path: Path) -> None:
    text = "[flows]\nmax_flows = 16\ninspect_packets = 64\nhttp_body_budget = 1048576\n"
    flows = load_config(write(tmp_path, text)).flows
    assert (flows.max_flows, flows.inspect_packets, flows.http_body_budget) == (16, 64, 1 << 20)


@pytest.mark.parametrize("setting", ["tcp_idle_timeout = 0", "udp_idle_timeout = -1"])
def test_idle_timeouts_must_be_positive(tmp_path: Path, setting: str) -> None:
    err = error(tmp_path, f"[flows]\n{setting}\n")
    assert err.key.startswith("flows") and "positive" in err.reason


def test_idle_timeout_error_names_the_key(tmp_path: Path) -> None:
    assert error(tmp_path, "[flows]\nudp_idle_timeout = -1\n").key == "flows.udp_idle_timeout"


# --- devices -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mac",
    [
        "64:09:80:12:34:56",
        "64-09-80-12-34-56",
        "640980123456",
        "64:09:80:12:34:56 ",
        "64-09-80-12-34-56".upper(),
    ],
)
def test_device_mac_is_normalised(tmp_path: Path, mac: str) -> None:
    cfg = load_config(write(tmp_path, f"[[devices]]\nmac = '{mac}'\n"))
    assert cfg.devices == (DeviceConfig("64:09:80:12:34:56"),)


@pytest.mark.parametrize(
    "mac", ["64:09:80-12:34:56", "64:09:80:12:34", "64:09:80:12:34:56:78", "zz:09:80:12:34:56", ""]
)
def test_bad_device_mac(tmp_path: Path, mac: str) -> None:
    text = f"[[devices]]\nmac = '02:00:00:00:00:01'\n[[devices]]\nmac = '{mac}'\n"
    err = error(tmp_path, text)
    assert err.key == "devices[1].mac"
    assert "not a MAC address" in err.reason


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_device_kinds(tmp_path: Path, kind: str) -> None:
    cfg = load_config(write(tmp_path, f"[[devices]]\nmac = '02:00:00:00:00:01'\nkind = '{kind}'\n"))
    assert cfg.devices[0].kind == kind


def test_bad_device_kind(tmp_path: Path) -> None:
    err = error(tmp_path, "[[devices]]\nmac = '02:00:00:00:00:01'\nkind = 'fridge'\n")
    assert err.key == "devices[0].kind"
    assert all(k in err.reason for k in DEVICE_KINDS)


def test_device_without_mac(tmp_path: Path) -> None:
    err = error(tmp_path, "[[devices]]\nname = 'TV'\n")
    assert err.key == "devices[0]" and "missing required key" in err.reason


def test_normalize_mac() -> None:
    assert normalize_mac("AABBCCDDEEFF") == "aa:bb:cc:dd:ee:ff"
    with pytest.raises(ValueError):
        normalize_mac("aa:bb:cc:dd:ee:fg")


# --- unreadable files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[site\nhome_country = 'DE'\n", "invalid TOML"),
        (b"[flows]\nmax_flows = 1\nmax_flows = 2\n", "invalid TOML"),
        (b"[site]\nhome_country = '\xff\xfe'\n", "not UTF-8"),
    ],
    ids=["unclosed-table", "duplicate-key", "latin1"],
)
def test_broken_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value) and reason in exc.value.reason


@pytest.mark.parametrize("name", ["missing.toml", "."])
def test_unreadable_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value) and "cannot read" in exc.value.reason


# --- the command line --------------------------------------------------------------------------


def _capture(path: Path) -> Path:
    buf = io.BytesIO()
    cap = Capture(PcapWriter(buf))
    s = TcpSession(cap, PHONE, "198.51.100.20", 40002, 443)
    s.open()
    s.send(client_hello("config.example.com"))
    s.close()
    path.write_bytes(buf.getvalue())
    return path


def test_cli_bad_config_exits_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "[flows]\nmax_flows = 'lots'\n", "bad.toml")
    rc = main(["analyze", "--config", str(bad), "--json", str(_capture(tmp_path / "x.pcap"))])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert f"{bad}: flows.max_flows: expected an integer" in err


def test_cli_config_error_comes_before_reading_captures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "[site]\nhome_country = 'uk'\n", "bad.toml")
    rc = main(["analyze", "--config", str(bad), str(tmp_path / "absent.pcap")])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{bad}: site.home_country" in err and "absent.pcap" not in err


def test_cli_config_reaches_the_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lan_networks decides which end of a flow is the LAN device."""
    pcap = _capture(tmp_path / "x.pcap")
    good = write(tmp_path, "[site]\nlan_networks = ['198.51.100.0/24']\n", "good.toml")
    for args, client in (([], PHONE.ip), (["--config", str(good)], "198.51.100.20")):
        rc = main(["analyze", "--json", *args, str(pcap)])
        out = capsys.readouterr().out
        assert rc == 0
        (flow,) = [r for r in map(json.loads, out.splitlines()) if r["type"] == "flow"]
        assert flow["src_ip"] == client
