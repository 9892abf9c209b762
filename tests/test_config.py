"""Configuration: TOML into typed settings; errors name the file, the dotted key, the reason."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

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
    normalize_mac,
)
from sensor.lab.synth import PHONE, Capture, PcapWriter, TcpSession, client_hello
from sensor.validate import check_files, load_config


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
aws = "https://mirror.example.com/ip-ranges.json"

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
        {"aws": "https://mirror.example.com/ip-ranges.json"}, 10.0, 1 << 20
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
        ("[flows]\nmax_flows = '100000'\n", "flows.max_flows", "expected an integer, got string"),
        ("[flows]\nmax_flows = 1e5\n", "flows.max_flows", "expected an integer, got float"),
        ("[flows]\nmax_flows = true\n", "flows.max_flows", "expected an integer, got boolean"),
        ("[flows]\ntcp_idle_timeout = '5m'\n", "flows.tcp_idle_timeout", "expected a number"),
        ("[dns]\nttl_grace = false\n", "dns.ttl_grace", "expected a number, got boolean"),
        ("[site]\nlan_networks = '10.0.0.0/8'\n", "site.lan_networks", "expected a list"),
        ("[site]\nlan_networks = ['10.0.0.0/8', 172]\n", "site.lan_networks[1]", "string"),
        ("[site]\nhome_country = 49\n", "site.home_country", "expected a string, got integer"),
        ("[paths]\nstate_dir = ['/a']\n", "paths.state_dir", "expected a string, got array"),
        ("[geo]\nasn_db = 2024-01-01\n", "geo.asn_db", "expected a string, got date"),
        ("[update]\nurls = ['x']\n", "update.urls", "expected a table, got array"),
        ("[update.urls]\naws = 1\n", "update.urls.aws", "expected a string, got integer"),
        ("site = 'home'\n", "site", "expected a table, got string"),
        ("[[flows]]\nmax_flows = 100\n", "flows", "expected a table, got array"),
        ("[flows.max_flows]\nx = 1\n", "flows.max_flows", "expected an integer, got table"),
        ("[alerts]\ndisabled_rules = 'new_country'\n", "alerts.disabled_rules", "expected a list"),
        ("[alertmanager]\nlabels = ['site']\n", "alertmanager.labels", "expected a table"),
        ("[identifiers]\nimei = '356938035643809'\n", "identifiers.imei", "expected a list"),
        ("[daemon]\nallow_root = 'yes'\n", "daemon.allow_root", "expected true or false"),
        ("[geo]\ncountry_db = 1979-05-27T07:32:00Z\n", "geo.country_db", "got date-time"),
        ("devices = 'tv'\n", "devices", "expected an array of tables"),
        ("devices = ['tv']\n", "devices[0]", "expected a table"),
        ("[[devices]]\nmac = 6409801234\n", "devices[0].mac", "expected a string, got integer"),
        (
            "[[devices]]\nmac = '02:00:00:00:00:01'\nidentifiers = { imei = '1' }\n",
            "devices[0].identifiers.imei",
            "expected a list",
        ),
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


@pytest.mark.parametrize("country", ["D", "D1", "", "XX", "ZZ", "EU"])
def test_bad_home_country(tmp_path: Path, country: str) -> None:
    err = error(tmp_path, f"[site]\nhome_country = '{country}'\n")
    assert err.key == "site.home_country"
    assert err.reason.startswith("not an ISO 3166-1 alpha-2 country code")
    assert "did you mean" not in err.reason


@pytest.mark.parametrize(
    ("country", "meant"),
    [("UK", "GB"), ("de", "DE"), ("De", "DE"), ("DEU", "DE"), ("EL", "GR"), ("Germany", "DE")],
)
def test_home_country_did_you_mean(tmp_path: Path, country: str, meant: str) -> None:
    err = error(tmp_path, f"[site]\nhome_country = '{country}'\n")
    assert err.key == "site.home_country"
    assert err.reason.endswith(f"did you mean {meant}?")


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
    bad = write(tmp_path, "[flows]\nmax_flows = 1\n", "bad.toml")
    rc = main(["analyze", "--config", str(bad), str(tmp_path / "absent.pcap")])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{bad}: flows.max_flows" in err and "absent.pcap" not in err


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


# --- hostile and broken files: every error is one line naming file, key and reason -------------


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("[site]\nhome_country = 'DE'\n[flows\n", "line 3, column 7", "Expected ']'"),
        ("[flows]\nmax_flows = 1\nmax_flows = 2\n", "line 3, column 14", "Cannot overwrite"),
        ("[flows]\n[flows]\n", "line 2, column 7", "Cannot declare ('flows',) twice"),
        ("[flows]\nmax_flows = \n", "line 2, column 13", "Invalid value"),
        ("[site]\nhome_country = 'DE", "line 2, end of file", 'Expected "\'"'),
        ("x = 1 2\n", "line 1, column 7", "Expected newline"),
    ],
    ids=["unclosed-table", "duplicate-key", "table-twice", "no-value", "unclosed-string", "junk"],
)
def test_broken_toml_names_the_line(tmp_path: Path, text: str, where: str, reason: str) -> None:
    err = error(tmp_path, text)
    assert err.key == where
    assert err.reason.startswith("invalid TOML: ") and reason in err.reason


def test_toml_nested_too_deeply(tmp_path: Path) -> None:
    path = write(tmp_path, "a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: invalid TOML: nested too deeply"


def test_not_utf8_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("[site]\nhome_country = 'DE'\n# K\xf6ln\n".encode("latin-1"))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: line 3, column 4: not UTF-8: byte 0xf6"


@pytest.mark.parametrize(
    "setting",
    [
        "[flows]\ntcp_idle_timeout = nan",
        "[flows]\nudp_idle_timeout = inf",
        "[dns]\nttl_grace = +inf",
        "[update]\ntimeout = inf",
        "[alerts]\nanomaly_k = -inf",
        "[alertmanager]\nbackoff_max = nan",
        "[daemon]\nconntrack_interval = inf",
    ],
)
def test_non_finite_numbers(tmp_path: Path, setting: str) -> None:
    """TOML has inf and nan; `nan <= 0` is false, so a range check alone lets them through."""
    section, line = setting.split("\n")
    err = error(tmp_path, setting + "\n")
    assert err.key == f"{section.strip('[]')}.{line.split(' = ')[0]}"
    assert err.reason.startswith("expected a finite number, got ")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[flows]\ninspect_bytes = -1\n", "flows.inspect_bytes"),
        ("[flows]\nend_grace = 11\n", "flows.end_grace"),
        ("[flows]\nmax_http_requests = 1025\n", "flows.max_http_requests"),
        ("[dns]\nmax_cache = 0\n", "dns.max_cache"),
        ("[dns]\nttl_grace = -1\n", "dns.ttl_grace"),
        ("[update]\ntimeout = 0\n", "update.timeout"),
        ("[update]\nmax_bytes = -1\n", "update.max_bytes"),
        ("[detect]\nmax_learned = -1\n", "detect.max_learned"),
        ("[detect]\nlearn_rate = 0\n", "detect.learn_rate"),
        ("[detect]\nlearn_burst = 0\n", "detect.learn_burst"),
        ("[detect]\ncontacts_min = 1\n", "detect.contacts_min"),
        ("[daemon]\nnflog_group = 65536\n", "daemon.nflog_group"),
        ("[daemon]\nfirst_packets = 1\n", "daemon.first_packets"),
        ("[daemon]\nsnaplen = 64\n", "daemon.snaplen"),
        ("[daemon]\nconntrack_interval = 0\n", "daemon.conntrack_interval"),
        ("[daemon]\nsnapshot_interval = -5\n", "daemon.snapshot_interval"),
        ("[daemon]\ncapture = 'pcap'\n", "daemon.capture"),
        ("[alerts]\nsuppress_window = 0\n", "alerts.suppress_window"),
        ("[alerts]\nrate_burst = 0\n", "alerts.rate_burst"),
        ("[alerts]\ndisabled_rules = ['nonesuch']\n", "alerts.disabled_rules"),
        ("[eventlog]\nkeep = 0\n", "eventlog.keep"),
        ("[eventlog]\nmax_bytes = -1\n", "eventlog.max_bytes"),
        ("[alertmanager]\ntimeout = -1\n", "alertmanager.timeout"),
        ("[alertmanager]\nurl = 'ftp://am.example'\n", "alertmanager.url"),
        ("[alertmanager]\nlabels = { 'bad-name' = 'x' }\n", "alertmanager.labels"),
        ("[journal]\nsocket_path = 'relative'\n", "journal.socket_path"),
        ("[metrics]\nport = 70000\n", "metrics.port"),
        ("[metrics]\naddress = 'localhost'\n", "metrics.address"),
    ],
)
def test_out_of_range_values(tmp_path: Path, text: str, key: str) -> None:
    err = error(tmp_path, text)
    assert err.key == key
    assert err.reason and "\n" not in err.reason


@pytest.mark.parametrize(
    "net", ["10.0.0.0/8 ", "10.0.0.256/8", "fd00::g/64", "10.0.0.0/-1", "10.0.0.0//8"]
)
def test_more_bad_prefixes(tmp_path: Path, net: str) -> None:
    err = error(tmp_path, f"[site]\nlan_networks = ['{net}']\n")
    assert err.key == "site.lan_networks" and "does not appear to be" in err.reason


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[identifiers]\nimie = ['1']\n", "identifiers.imie", "unknown key"),
        (
            "[[devices]]\nmac = '02:00:00:00:00:01'\nidentifiers = { imie = ['1'] }\n",
            "devices[0].identifiers.imie",
            "unknown identifier kind",
        ),
        ("[[devices]]\nmac = '02:00:00:00:00:01'\n[devices.extra]\nx = 1\n", "devices[0].extra",
         "unknown key"),
        ("[metrics]\ntls = { cert = 'x' }\n", "metrics.tls", "unknown key"),
        ("[update.urls]\nnonesuch = 'https://example.com/x'\n", "update.urls.nonesuch",
         "unknown source (known: asn, aws, azure,"),
        ("[update.urls]\naws = 'file:///etc/passwd'\n", "update.urls.aws", "must be an http"),
        ('[flows]\n"max\\nflows" = 1\n', 'flows."max\\nflows"', "unknown key"),
        ('"\\u001b[31mred" = 1\n', '"\\u001b[31mred"', "unknown section"),
        ("[alertmanager]\nurl = 'http://am'\nlabel = { site = 'home' }\n", "alertmanager.label",
         "unknown key"),
    ],
)  # fmt: skip
def test_unknown_nested_keys(tmp_path: Path, text: str, key: str, reason: str) -> None:
    err = error(tmp_path, text)
    assert err.key == key and err.reason.startswith(reason)
    assert str(err).isprintable()  # one line, no terminal escapes from a key's name


def test_messages_stay_one_line() -> None:
    err = ConfigError("a\nb.toml", "k\x1b[2J", "bad\r\nvalue")
    assert str(err) == "a\\nb.toml: k\\x1b[2J: bad\\r\\nvalue"
    assert str(ConfigError("x.toml", "", "cannot read")) == "x.toml: cannot read"


# --- the configuration file itself ---------------------------------------------------------------


def test_config_file_cases(tmp_path: Path) -> None:
    """Missing, a directory, a FIFO (opening one for reading waits for a writer: it must not
    hang the daemon's reload), a path through a file, and an absurdly big file. (/dev/zero:
    in the command-line test, under a memory limit.)"""
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    (tmp_path / "file").write_text("")
    big = tmp_path / "big.toml"
    big.write_bytes(b"# padding\n" * 110_000)
    cases = {
        tmp_path / "missing.toml": "cannot read: No such file or directory",
        tmp_path: "cannot read: is a directory",
        fifo: "cannot read: not a regular file",
        tmp_path / "file" / "x.toml": "cannot read: Not a directory",
        big: "larger than 1048576 bytes: not a configuration",
    }
    errors: dict[Path, ConfigError] = {}

    def load_all() -> None:
        for path in cases:
            try:
                load_config(path)
            except ConfigError as exc:
                errors[path] = exc

    worker = threading.Thread(target=load_all, daemon=True)  # a hang fails, not blocks
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), f"load_config hangs after {list(errors)}"
    for path, reason in cases.items():
        assert (errors[path].key, errors[path].reason) == ("", reason)
        assert str(errors[path]) == f"{path}: {reason}"


# --- the files a configuration names -----------------------------------------------------------


def files_config(tmp_path: Path, text: str = "") -> Config:
    """A configuration whose state directory exists, plus `text`."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return load_config(write(tmp_path, f"[paths]\nstate_dir = '{state}'\n{text}"))


def files_error(tmp_path: Path, text: str) -> ConfigError:
    cfg = files_config(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        check_files(cfg)
    assert exc.value.source == cfg.source
    return exc.value


@pytest.fixture
def mmdb(tmp_path: Path) -> Path:
    pytest.importorskip("maxminddb")
    from tests.enrich.test_geo import write_mmdb

    record = {"country": {"iso_code": "CN"}}
    return write_mmdb(tmp_path / "country.mmdb", {"120.92.0.0/16": record}, "GeoLite2-Country")


def test_usable_files_pass(tmp_path: Path, mmdb: Path) -> None:
    overrides = tmp_path / "lab-geo.toml"
    overrides.write_text("[[prefix]]\nnet = '203.0.113.0/24'\ncountry = 'CN'\n")
    key = tmp_path / "identity.key"
    key.write_bytes(b"k" * 32)
    cfg = files_config(
        tmp_path,
        f"[geo]\ncountry_db = '{mmdb}'\nasn_db = '{mmdb}'\noverrides = '{overrides}'\n"
        f"[detect]\nkey_file = '{key}'\n[eventlog]\npath = '{tmp_path}/new/events.jsonl'\n",
    )
    check_files(cfg)
    # what `run` makes itself may be missing: the state directory, the key, the event log
    missing = load_config(write(tmp_path, f"[paths]\nstate_dir = '{tmp_path}/a/b/c'\n"))
    check_files(missing)
    check_files(load_config(None))


def _garbage(path: Path) -> str:
    path.write_bytes(bytes(range(256)) * 64)
    return str(path)


def _empty(path: Path) -> str:
    path.write_bytes(b"")
    return str(path)


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


def _directory(path: Path) -> str:
    path.mkdir()
    return str(path)


def _through_file(path: Path) -> str:
    path.write_text("x")
    return str(path / "x.mmdb")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: str(p), "No such file or directory"),
        (_garbage, "cannot open MaxMind database"),
        (_empty, "empty"),
        (_fifo, "not a regular file"),
        (_directory, "a directory"),
        (_through_file, "Not a directory"),
    ],
    ids=["missing", "corrupt", "empty", "fifo", "directory", "through-a-file"],
)
@pytest.mark.parametrize("key", ["geo.country_db", "geo.asn_db"])
def test_bad_geo_databases(tmp_path: Path, key: str, make: Any, reason: str) -> None:
    """Each was logged and replaced by the embedded data before, so a typo in the path went
    unnoticed; a FIFO hung the reload."""
    path = make(tmp_path / "db.mmdb")
    section, name = key.split(".")
    err = files_error(tmp_path, f"[{section}]\n{name} = '{path}'\n")
    assert err.key == key
    assert err.reason.startswith(f"{path}: ") and reason in err.reason


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file or directory"),
        ("", "empty"),
        ("[[prefix]]\nnet = '203.0.113.0/24'\ncountry = 'cn'\n", "prefix[0].country"),
        ("[[prefix]]\nnet = '203.0.113.0/33'\n", "prefix[0].net"),
        ("[[prefix]\n", "cannot read"),
        ("[prefixes]\n", "prefixes: unknown key"),
    ],
)
def test_bad_overrides(tmp_path: Path, content: str | None, reason: str) -> None:
    path = tmp_path / "lab-geo.toml"
    if content is not None:
        path.write_text(content)
    err = files_error(tmp_path, f"[geo]\noverrides = '{path}'\n")
    assert err.key == "geo.overrides"
    assert str(path) in err.reason and reason in err.reason


def test_state_dir_problems(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    for state, reason in (
        (blocker, "not a directory"),
        (blocker / "state", "Not a directory"),
        (blocker / "a" / "b", "Not a directory"),
    ):
        cfg = load_config(write(tmp_path, f"[paths]\nstate_dir = '{state}'\n"))
        with pytest.raises(ConfigError) as exc:
            check_files(cfg)
        assert exc.value.key == "paths.state_dir"
        assert exc.value.reason.startswith(f"{state}: ") and reason in exc.value.reason


@pytest.mark.parametrize("size", [0, 5, 31])
def test_short_key_file(tmp_path: Path, size: int) -> None:
    """A short key file would be used as it is (an empty HMAC key makes every keyed hash of
    an IMEI guessable); the default place in the state directory is checked too."""
    key = tmp_path / "identity.key"
    key.write_bytes(b"k" * size)
    err = files_error(tmp_path, f"[detect]\nkey_file = '{key}'\n")
    assert err.key == "detect.key_file" and f"{size} bytes, not a 32-byte key" in err.reason
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "identity.key").write_bytes(b"k" * size)
    assert files_error(tmp_path, "").key == "detect.key_file"


def test_key_file_and_event_log_that_are_directories(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    err = files_error(tmp_path, f"[detect]\nkey_file = '{tmp_path}/dir'\n")
    assert (err.key, err.reason) == ("detect.key_file", f"{tmp_path}/dir: a directory")
    err = files_error(tmp_path, f"[eventlog]\npath = '{tmp_path}/dir'\n")
    assert (err.key, err.reason) == ("eventlog.path", f"{tmp_path}/dir: a directory")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    err = files_error(tmp_path, f"[eventlog]\npath = '{blocker}/events.jsonl'\n")
    assert err.key == "eventlog.path" and "not a directory" in err.reason.lower()


def test_metrics_files(tmp_path: Path) -> None:
    text = f"[metrics]\ntls_cert_file = '{tmp_path}/no.pem'\ntls_key_file = '{tmp_path}/no.key'\n"
    err = files_error(tmp_path, text)
    assert err.key == "metrics.tls_cert_file" and "No such file" in err.reason
    # after the privilege drop the daemon's reload checks only changed credentials
    check_files(files_config(tmp_path, text), metrics_files=False)
    check_files(files_config(tmp_path, text + "enabled = false\n"))  # metrics off: not needed


# --- the real command line: `python -m sensor check|run` ---------------------------------------

REPO = Path(__file__).resolve().parents[1]


def sensor_cmd(
    args: list[str], prefix: list[str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "sensor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,  # a FIFO or /dev/zero read without its guard hangs: fail, not wait
        cwd=REPO,
        preexec_fn=_memory_limit,  # and /dev/zero read whole must not eat the machine's memory
    )


def _memory_limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def _cli_case(tmp_path: Path, case: str) -> tuple[Path, str, str]:
    """(config path, key, a part of the reason) for one bad configuration."""
    state = tmp_path / "state"
    state.mkdir()
    base = f"[paths]\nstate_dir = '{state}'\n"
    home = "[site]\nhome_country = 'DE'\n"  # checked before the files the config names
    if case == "broken-toml":
        return write(tmp_path, base + "[flows\n"), "line 3, column 7", "invalid TOML"
    if case == "wrong-type":
        text = base + "[flows]\nmax_flows = 'lots'\n"
        return write(tmp_path, text), "flows.max_flows", "expected an integer, got string"
    if case == "list-for-table":
        return write(tmp_path, "alerts = [1]\n" + base), "alerts", "expected a table, got array"
    two = "[[devices]]\nmac = '02:00:00:00:00:01'\n[[devices]]\n"
    if case == "unknown-nested-key":
        text = base + two + "mac = '02:00:00:00:00:02'\ncolour = 1\n"
        return write(tmp_path, text), "devices[1].colour", "unknown key"
    if case == "bad-mac":
        text = base + two + "mac = '02:00:00:00:00'\n"
        return write(tmp_path, text), "devices[1].mac", "not a MAC address"
    if case == "bad-country":
        text = base + "[site]\nhome_country = 'UK'\n"
        return write(tmp_path, text), "site.home_country", "did you mean GB?"
    if case == "no-home-country":
        return write(tmp_path, base), "site.home_country", "not set: the sensor cannot tell"
    if case == "bad-imei":
        text = (
            base
            + "[site]\nhome_country = 'DE'\n"
            + two
            + "mac = '02:00:00:00:00:02'\n"
            + "identifiers = { imei = ['356938035643809', '12345'] }\n"
        )
        return write(tmp_path, text), "devices[1].identifiers.imei[1]", "an IMEI has 15 digits"
    if case == "bad-prefix":
        text = base + "[site]\nlan_networks = ['192.168.1.0/33']\n"
        return write(tmp_path, text), "site.lan_networks", "does not appear to be"
    if case == "nan":
        text = base + "[flows]\ntcp_idle_timeout = nan\n"
        return write(tmp_path, text), "flows.tcp_idle_timeout", "expected a finite number"
    if case == "not-utf8":
        path = tmp_path / "phonehome.toml"
        path.write_bytes(base.encode() + b"[site]\nhome_country = '\xff'\n")
        return path, "line 4, column 17", "not UTF-8: byte 0xff"
    if case == "missing-file":
        return tmp_path / "absent.toml", "", "cannot read: No such file or directory"
    if case == "directory":
        return state, "", "cannot read: is a directory"
    if case == "fifo":
        os.mkfifo(tmp_path / "fifo.toml")
        return tmp_path / "fifo.toml", "", "cannot read: not a regular file"
    if case == "dev-zero":
        return Path("/dev/zero"), "", "cannot read: not a regular file"
    if case == "through-a-file":
        (tmp_path / "file").write_text("")
        return tmp_path / "file" / "y.toml", "", "cannot read: Not a directory"
    if case == "missing-geo-db":
        text = home + base + f"[geo]\ncountry_db = '{tmp_path}/GeoLite2-Country.mmdb'\n"
        return write(tmp_path, text), "geo.country_db", "No such file or directory"
    if case == "corrupt-geo-db":
        _garbage(tmp_path / "asn.mmdb")
        text = home + base + f"[geo]\nasn_db = '{tmp_path}/asn.mmdb'\n"
        return write(tmp_path, text), "geo.asn_db", "cannot open MaxMind database"
    if case == "corrupt-overrides":
        (tmp_path / "geo.toml").write_text("[[prefix]]\nnet = 'x'\n")
        text = home + base + f"[geo]\noverrides = '{tmp_path}/geo.toml'\n"
        return write(tmp_path, text), "geo.overrides", "prefix[0].net"
    if case == "state-dir-is-a-file":
        (tmp_path / "f").write_text("")
        text = home + f"[paths]\nstate_dir = '{tmp_path}/f'\n"
        return write(tmp_path, text), "paths.state_dir", "not a directory"
    if case == "empty-key-file":
        (state / "identity.key").write_bytes(b"")
        return write(tmp_path, home + base), "detect.key_file", "0 bytes, not a 32-byte key"
    raise AssertionError(case)


CLI_CASES = [
    "broken-toml", "wrong-type", "list-for-table", "unknown-nested-key", "bad-mac", "bad-country",
    "bad-prefix", "nan", "not-utf8", "missing-file", "directory", "fifo", "dev-zero",
    "through-a-file", "missing-geo-db", "corrupt-geo-db", "corrupt-overrides",
    "state-dir-is-a-file", "empty-key-file", "no-home-country", "bad-imei",
]  # fmt: skip


@pytest.mark.parametrize("case", CLI_CASES)
def test_check_cli_exit_2_one_line(tmp_path: Path, case: str) -> None:
    path, key, reason = _cli_case(tmp_path, case)
    proc = sensor_cmd(["check", "--config", str(path)])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = proc.stdout.splitlines()  # nothing after the verdict
    head = f"config: INVALID: {path}: {key}: " if key else f"config: INVALID: {path}: "
    assert line.startswith(head) and reason in line[len(head) :], line


@pytest.mark.parametrize(
    "case", ["broken-toml", "unknown-nested-key", "fifo", "missing-geo-db", "state-dir-is-a-file"]
)
def test_run_cli_exit_2_before_starting(tmp_path: Path, case: str) -> None:
    """`run` as root in an empty network namespace: were the check missing it would get as
    far as looking for LAN interfaces (exit 1), never touching this host's network."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    path, key, reason = _cli_case(tmp_path, case)
    proc = sensor_cmd(["run", "--config", str(path)], prefix=["unshare", "--net"])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    head = f"config error: {path}: {key}: " if key else f"config error: {path}: "
    assert head in line and reason in line.split(head, 1)[1], line


def test_unreadable_files_without_dac_override(tmp_path: Path, mmdb: Path) -> None:
    """Root reads everything; without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv)
    mode 000 files are unreadable for root too, as they would be for the service user."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    no_dac = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    state = tmp_path / "state"
    state.mkdir()
    secret = write(tmp_path, "[flows]\nmax_flows = 100\n", "secret.toml")
    secret.chmod(0)
    proc = sensor_cmd(["check", "--config", str(secret)], prefix=no_dac)
    assert proc.returncode == 2
    assert proc.stdout == f"config: INVALID: {secret}: cannot read: Permission denied\n"
    mmdb.chmod(0)
    cfg = write(
        tmp_path,
        f"[site]\nhome_country = 'DE'\n[paths]\nstate_dir = '{state}'\n"
        f"[geo]\ncountry_db = '{mmdb}'\n",
    )
    proc = sensor_cmd(["check", "--config", str(cfg)], prefix=no_dac)
    assert proc.returncode == 2
    assert proc.stdout == f"config: INVALID: {cfg}: geo.country_db: {mmdb}: Permission denied\n"


def test_check_reports_broken_data_files_without_a_traceback(tmp_path: Path) -> None:
    """Downloaded data is not configuration: a corrupt range file and a manifest of the wrong
    shape are problems `check` names (exit 1), never a traceback."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")  # `check` inspects the host's interfaces
    data = tmp_path / "state" / "data"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text('{"sources": ["aws"]}')
    (data / "ip-ranges.json").write_text('{"prefixes": [')
    cfg = write(tmp_path, f"[site]\nhome_country = 'DE'\n[paths]\nstate_dir = '{tmp_path}/state'\n")
    proc = sensor_cmd(["check", "--config", str(cfg)], prefix=["unshare", "--net"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "  data manifest unreadable: no sources table\n" in proc.stdout
    assert f"  data error: aws: {data}/ip-ranges.json: not JSON" in proc.stdout


def test_site_name(tmp_path: Path) -> None:
    from sensor.config import site_name

    cfg = load_config(write(tmp_path, "[site]\nname = 'branch-07.north'\n"))
    assert cfg.site.name == "branch-07.north" and site_name(cfg) == "branch-07.north"
    for bad in ("", "Home", "-x", "a b", "x" * 64, "café"):
        err = error(tmp_path, f"[site]\nname = {bad!r}\n")
        assert err.key == "site.name" and "lower-case" in err.reason
    # unset: the older alertmanager.labels.site, else the host name made into a site name
    old = load_config(write(tmp_path, "[alertmanager]\nlabels = { site = 'Old Home' }\n"))
    assert site_name(old) == "Old Home"
    assert site_name(Config(), hostname="Router_1.lan") == "router_1"
    assert site_name(Config(), hostname="ÄÖ.x") == "default"
    err = error(tmp_path, "[site]\nname = 'a'\n[alertmanager]\nlabels = { site = 'b' }\n")
    assert (err.key, err.reason) == (
        "alertmanager.labels.site",
        "differs from site.name; set site.name only",
    )
    same = "[site]\nname = 'a'\n[alertmanager]\nlabels = { site = 'a' }\n"
    assert load_config(write(tmp_path, same)).site.name == "a"


def test_alertmanager_urls(tmp_path: Path) -> None:
    text = "[alertmanager]\nurls = ['http://10.0.0.1:9093', 'http://10.0.0.2:9093']\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg.alertmanager.targets == ("http://10.0.0.1:9093", "http://10.0.0.2:9093")
    err = error(tmp_path, "[alertmanager]\nurl = 'http://a:1'\nurls = ['http://b:1']\n")
    assert (err.key, err.reason) == ("alertmanager.urls", "set either url or urls, not both")
    err = error(tmp_path, "[alertmanager]\nurls = ['http://a:1', 'ftp://b']\n")
    assert err.key == "alertmanager.urls[1]"
    err = error(tmp_path, "[alertmanager]\nurls = 'http://a:1'\n")
    assert err.key == "alertmanager.urls" and "expected a list" in err.reason


def test_relays_section(tmp_path: Path) -> None:
    good = tmp_path / "office.txt"
    good.write_text("# the office's VPN concentrator\n192.0.2.200\n2001:db8:5::/48\n")
    cfg = files_config(tmp_path, f"[relays]\nvpn_lists = {{ office = '{good}' }}\n")
    check_files(cfg)
    assert cfg.relays.vpn_lists == {"office": str(good)} and cfg.relays.vpn_protocols
    bad = tmp_path / "bad.txt"
    bad.write_text("192.0.2.200\nvpn.example.com\n")
    err = files_error(tmp_path, f"[relays]\nvpn_lists = {{ office = '{bad}' }}\n")
    assert err.key == "relays.vpn_lists.office" and "line 2: not an address" in err.reason
    err = files_error(tmp_path, f"[relays]\nvpn_lists = {{ office = '{tmp_path}/none' }}\n")
    assert err.key == "relays.vpn_lists.office"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, f"[relays]\nvpn_lists = {{ 'My VPN' = '{good}' }}\n"))
    assert exc.value.key == 'relays.vpn_lists."My VPN"' and "a name is" in exc.value.reason
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "[relays]\nvpn_protocols = 'yes'\n"))
    assert exc.value.key == "relays.vpn_protocols"
