"""`phonehome analyze` output: JSON Lines (the contract, with `schema_version`), CSV (formula
cells neutralised), and the text summary (provider/region/city, rows by bytes, local traffic
apart, alerts first by severity, --top/--all, --device, --alerts-only, ellipses, escaped
control characters, colour only when asked)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from sensor.analyze import Options, analyze, use_color
from sensor.lab.synth import (
    AWS_SG_IP,
    DEMO_IMEI,
    PHONE,
    REDMI_UA,
    RESOLVER,
    XIAOMI_API_IP,
    Capture,
    Host,
    TcpSession,
    http_request,
    write_sample,
)
from sensor.model import Alert, Destination, DeviceRef, Flow
from sensor.report import (
    SCHEMA_VERSION,
    Scope,
    SummarySink,
    clean,
    csv_cell,
    fit,
)
from tests.pipeline_helpers import build

LAPTOP = Host("3c:22:fb:aa:bb:cc", "192.168.1.42")
HOSTILE = "=cmd|' /C calc'!A0"
LONG_NAME = "a-very-long-server-name-that-does-not-fit-the-column.example.com"
SIZES = [5_000, 50_000, 500, 20_000, 1_000]


def _servers(cap: Capture) -> None:
    cap.dhcp_request(PHONE, PHONE.ip, "Redmi-Note-8-Pro")
    cap.dhcp_request(LAPTOP, LAPTOP.ip, HOSTILE, vendor_class="MSFT 5.0")
    for i, size in enumerate(SIZES):
        ip = f"198.51.100.{10 + i}"
        cap.dns_lookup(PHONE, RESOLVER, f"s{i}.example.com", [ip])
        s = TcpSession(cap, PHONE, ip, 41000 + i, 443)
        s.open()
        s.send(bytes(size), up=True)
        s.close()
    cap.dns_lookup(PHONE, RESOLVER, LONG_NAME, ["198.51.100.30"])
    s = TcpSession(cap, PHONE, "198.51.100.30", 41100, 443)
    s.open()
    s.send(bytes(100), up=True)
    s.close()
    cap.udp(PHONE, "224.0.0.251", 5353, 5353, bytes(40), up=True)  # mDNS: multicast
    cap.udp(PHONE, "192.168.1.255", 40404, 9, bytes(20), up=True)  # directed broadcast
    s = TcpSession(cap, LAPTOP, "192.0.2.80", 50000, 443)
    s.open()
    s.send(bytes(700), up=True)
    s.close()


def _mixed_severity(cap: Capture) -> None:
    """With home country CN: a cleartext IMEI to Xiaomi in CN (warning) first, then the same
    IMEI to AWS Singapore (critical)."""
    for port, ip, host in ((40001, XIAOMI_API_IP, "api.account.xiaomi.com"),
                           (40900, AWS_SG_IP, "t.sdk-analytics.example")):  # fmt: skip
        s = TcpSession(cap, PHONE, ip, port, 80)
        s.open()
        s.send(http_request("POST", host, "/r", REDMI_UA, f"imei={DEMO_IMEI}".encode()))
        s.close()


def run(path: Path, **kw: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    opts = Options(progress=False, **kw)
    assert analyze([str(path)], options=opts, out=out, err=err) == 0, err.getvalue()
    return out.getvalue(), err.getvalue()


@pytest.fixture
def servers(tmp_path: Path) -> Path:
    return build(tmp_path / "servers.pcap", _servers)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.pcap"
    write_sample(str(path))
    return path


# --- JSON Lines -------------------------------------------------------------------------------


def test_json_first_record_carries_schema_version(sample: Path) -> None:
    out, _ = run(sample, fmt="json")
    recs = [json.loads(x) for x in out.splitlines()]
    assert recs[0]["schema_version"] == SCHEMA_VERSION == 1
    assert list(recs[0])[:2] == ["type", "schema_version"]
    assert all("schema_version" not in r for r in recs[1:])
    # the contract's records and fields are all still there
    assert {r["type"] for r in recs} == {"alert", "flow", "device", "stats"}
    flow = next(r for r in recs if r["type"] == "flow")
    assert {"uid", "src_ip", "dst_ip", "bytes_up", "bytes_down", "country", "vendor"} <= set(flow)
    assert recs[-1]["type"] == "stats"


def test_json_alias(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sensor.cli import main

    empty = tmp_path / "empty.toml"
    empty.write_text("")
    outs = []
    for flags in (["--json"], ["--format", "json"], ["--json", "--format", "json"]):
        assert main(["analyze", "--config", str(empty), *flags, str(sample)]) == 0
        # keyed hashes differ: each run has its own throwaway key
        outs.append(re.sub(r'"keyed_hash":"[0-9a-f]+"', "", capsys.readouterr().out))
    assert outs[0] == outs[1] == outs[2]
    assert main(["analyze", "--json", "--format", "csv", str(sample)]) == 2
    assert "disagree" in capsys.readouterr().err


# --- CSV --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,cell",
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("a=1", "a=1"),
        ("", ""),
        (None, ""),
        (42, "42"),
    ],
)
def test_csv_cell(value: object, cell: str) -> None:
    assert csv_cell(value) == cell


def test_csv_rows_alerts_and_flows_neutralised(servers: Path, sample: Path) -> None:
    out, _ = run(servers, fmt="csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    laptop = [r for r in rows if r["device_mac"] == LAPTOP.mac and r["type"] == "flow"]
    assert laptop and {r["device_name"] for r in laptop} == {"'" + HOSTILE}
    for r in rows:
        for v in r.values():
            assert not v or v[0] not in "=+-@", r
    scopes = {r["dst_ip"]: r["scope"] for r in rows}
    assert scopes["224.0.0.251"] == "multicast"
    assert scopes["192.168.1.255"] == "broadcast"
    assert scopes["192.168.1.1"] == "local"
    assert scopes["198.51.100.11"] == "server"
    out, _ = run(sample, fmt="csv", home_country="ID")
    rows = list(csv.DictReader(io.StringIO(out)))
    alerts = [r for r in rows if r["type"] == "alert"]
    assert alerts and all(r["severity"] == "critical" for r in alerts)
    assert DEMO_IMEI not in out
    out, _ = run(sample, fmt="csv", alerts_only=True)
    assert {r["type"] for r in csv.DictReader(io.StringIO(out))} == {"alert"}


# --- the text summary -------------------------------------------------------------------------


def _section(text: str, mac: str) -> list[str]:
    """The lines of one device's section."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(mac))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), None)
    return lines[start:end]


def test_servers_sorted_by_bytes_and_local_traffic_apart(servers: Path) -> None:
    text, _ = run(servers)
    phone = _section(text, PHONE.mac)
    header = next(i for i, ln in enumerate(phone) if "provider region city" in ln)
    local_header = next(i for i, ln in enumerate(phone) if ln.split()[:2] == ["local", "app"])
    server_rows = phone[header + 1 : local_header]
    by_size = [f"s{i}.example.com" for i in sorted(range(5), key=lambda i: -SIZES[i])]
    found = [n for ln in server_rows for n in re.findall(r"s\d\.example\.com", ln)]
    assert found == by_size
    local_rows = phone[local_header + 1 :]
    local = {ln.split()[0]: ln for ln in local_rows}
    assert "224.0.0.251" in local["multicast"]
    assert "192.168.1.255" in local["broadcast"] or "255.255.255.255" in local["broadcast"]
    for addr in ("224.0.0.251", "192.168.1.255", "255.255.255.255", "192.168.1.1"):
        assert not any(addr in ln for ln in server_rows), addr
        assert any(addr in ln for ln in local_rows), addr
    assert re.search(r"\d+ servers, \d+ local/broadcast/multicast", phone[1])


AWS_RANGES = {
    "syncToken": "1700000000",
    "createDate": "2023-11-14-00-00-00",
    "prefixes": [
        {
            "ip_prefix": "52.74.0.0/16",
            "region": "ap-southeast-1",
            "service": "AMAZON",
            "network_border_group": "ap-southeast-1",
        }
    ],
    "ipv6_prefixes": [],
}


def test_provider_region_city_column(tmp_path: Path, sample: Path) -> None:
    """Cloud ranges in the state directory name provider, region and city in the summary."""
    from sensor.cli import main

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "ip-ranges.json").write_text(json.dumps(AWS_RANGES))
    state = tmp_path / "state"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{state}"\n')
    assert main(["update-data", "--config", str(cfg), "--from", str(inbox)]) == 0
    text, _ = run(sample, config_path=str(cfg))
    row = next(ln for ln in text.splitlines() if "tracking.intl.miui.com" in ln)
    assert row.split()[:4] == ["SG", "aws", "ap-southeast-1", "Singapore"]
    assert "provider region city" in text


def test_alerts_first_by_severity(tmp_path: Path) -> None:
    path = build(tmp_path / "mixed.pcap", _mixed_severity)
    text, _ = run(path, home_country="CN")
    lines = text.splitlines()
    first_device = next(i for i, ln in enumerate(lines) if ln.startswith(PHONE.mac))
    alert_lines = [ln for ln in lines if ln.startswith("  CRITICAL") or ln.startswith("  WARNING")]
    assert alert_lines
    assert all(lines.index(ln) < first_device for ln in alert_lines)
    severities = [ln.split()[0] for ln in alert_lines]
    assert "CRITICAL" in severities and "WARNING" in severities
    assert severities == sorted(severities, key=lambda s: {"CRITICAL": 0, "WARNING": 1}[s])


def test_top_and_all(servers: Path) -> None:
    text, _ = run(servers, top=2)
    phone = _section(text, PHONE.mac)
    assert len([ln for ln in phone if re.search(r"s\d\.example\.com", ln)]) == 2
    assert any("… 4 more servers (--top N or --all to list them)" in ln for ln in phone)
    text, _ = run(servers, top=None)
    phone = _section(text, PHONE.mac)
    assert not any("more servers" in ln for ln in phone)
    for i in range(5):
        assert any(f"s{i}.example.com" in ln for ln in phone)


def test_cut_values_get_an_ellipsis(servers: Path) -> None:
    text, _ = run(servers)
    row = next(ln for ln in text.splitlines() if "a-very-long-server" in ln)
    assert LONG_NAME not in row
    assert re.search(r"a-very-long-server-name\S*…", row)
    assert fit("abcdef", 4) == "abc…" and fit("abc", 4) == "abc"


def test_device_filter(servers: Path, sample: Path) -> None:
    for wanted in ("3C-22-FB-AA-BB-CC", HOSTILE):
        text, err = run(servers, device=wanted)
        assert LAPTOP.mac in text and PHONE.mac not in text, wanted
        assert "no device" not in err
    out, _ = run(sample, fmt="json", device="redmi-note-8-pro")  # DHCP name, any case
    recs = [json.loads(x) for x in out.splitlines()]
    macs = {r.get("device_mac") or r.get("mac") for r in recs if r["type"] != "stats"}
    assert macs == {PHONE.mac}
    assert any(r["type"] == "alert" for r in recs)
    out, err = run(sample, fmt="json", device="00:11:22:33:44:55")
    assert "--device 00:11:22:33:44:55: no device" in err
    assert [json.loads(x)["type"] for x in out.splitlines()] == ["stats"]


def test_alerts_only(sample: Path) -> None:
    text, _ = run(sample, alerts_only=True, home_country="ID")
    assert "ALERTS (2)" in text and "CRITICAL" in text
    assert "tracking.intl.miui.com" not in text and "provider region city" not in text
    out, _ = run(sample, fmt="json", alerts_only=True)
    types = [json.loads(x)["type"] for x in out.splitlines()]
    assert set(types) == {"alert", "stats"} and types[-1] == "stats"


# --- names from the network -------------------------------------------------------------------


def test_clean_escapes_control_and_bidi_characters() -> None:
    assert clean("ok.example.com") == "ok.example.com"
    assert clean("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert clean("x\u202eyz") == "x\\u202eyz"
    assert clean("l1\nl2\r\x7f") == "l1\\x0al2\\x0d\\x7f"
    assert clean("\x9b31m") == "\\x9b31m"  # C1 control sequence introducer


def test_summary_escapes_names_from_the_network() -> None:
    out = io.StringIO()
    sink = SummarySink(out, Scope(("192.168.0.0/16",)))
    evil = "evil\x1b]0;owned\x07\x1b[2J.example\u202e.com"
    flow = Flow(
        uid="F1", proto="tcp", src_ip="192.168.1.23", src_port=4000, dst_ip="198.51.100.9",
        dst_port=443, device_mac=PHONE.mac, first_seen=1.0, last_seen=2.0, bytes_up=10,
        server_name=evil,
    )  # fmt: skip
    sink.flow(flow)
    dst = Destination(ip="198.51.100.9", port=443, server_name=evil)
    sink.alert(
        Alert("identifier_abroad", "critical", 1.0, DeviceRef(mac=PHONE.mac, ip="192.168.1.23"),
              dst, f"sent imei to {evil}")
    )  # fmt: skip
    sink.stats({"packets_read": 1, "packets_decoded": 1, "packets_skipped": 0, "flows": 1})
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "evil\\x1b]0;owned" in text


# --- colour -----------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(_Tty()) and not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(_Tty())
    monkeypatch.delenv("NO_COLOR")
    tty = _Tty()
    assert analyze([str(sample)], options=Options(home_country="ID", progress=False), out=tty,
                   err=io.StringIO()) == 0  # fmt: skip
    assert "\x1b[1;31mCRITICAL" in tty.getvalue()
    text, _ = run(sample, home_country="ID")
    assert "\x1b" not in text
