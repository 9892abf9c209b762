"""End to end through `analyze`: the cases of alerts a user can trust. The same IMEI to one
vendor in two countries is two alerts; placeholders never alert and never become devices; a
MAC seen only as a destination is no device; no home country means nothing assumed."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest

from sensor.analyze import analyze
from sensor.detect.placeholders import default as placeholders
from sensor.lab.synth import (
    AWS_SG_IP,
    DEMO_IMEI,
    PHONE,
    REDMI_UA,
    XIAOMI_API_IP,
    Capture,
    Host,
    TcpSession,
    http_request,
)
from tests.pipeline_helpers import build

SG_NAME = "data.mistat.xiaomi.com"


def _config(tmp_path: Path, extra: str = "", home: str | None = "ID") -> Path:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    cfg = tmp_path / "c.toml"
    site = f'[site]\nhome_country = "{home}"\n' if home else ""
    cfg.write_text(f'{site}[paths]\nstate_dir = "{state}"\n{extra}')
    return cfg


def _analyze(path: Path, cfg: Path, record: bool = False) -> list[dict[str, Any]]:
    out = io.StringIO()
    err = io.StringIO()
    assert analyze([str(path)], str(cfg), as_json=True, out=out, err=err, record=record) == 0
    return [json.loads(x) for x in out.getvalue().splitlines()]


def _post(cap: Capture, host: Host, ip: str, port: int, name: str, body: bytes) -> None:
    s = TcpSession(cap, host, ip, port, 80)
    s.open()
    s.send(http_request("POST", name, "/v1/report", REDMI_UA, body))
    s.close()


def _two_countries(cap: Capture) -> None:
    """The IMEI in clear to Xiaomi in CN, then base64 to Xiaomi's servers in AWS Singapore,
    twice each (the second a repeat), then quiet traffic two hours later so the suppression
    windows close within the capture."""
    b64 = base64.b64encode(DEMO_IMEI.encode()).decode()
    _post(cap, PHONE, XIAOMI_API_IP, 41001, "api.account.xiaomi.com", f"imei={DEMO_IMEI}".encode())
    _post(cap, PHONE, AWS_SG_IP, 41002, SG_NAME, f'{{"d":"{b64}"}}'.encode())
    _post(cap, PHONE, XIAOMI_API_IP, 41003, "api.account.xiaomi.com", f"imei={DEMO_IMEI}".encode())
    _post(cap, PHONE, AWS_SG_IP, 41004, SG_NAME, f'{{"x":"{DEMO_IMEI}"}}'.encode())
    cap.tick(7300)
    _post(cap, PHONE, XIAOMI_API_IP, 41005, "api.account.xiaomi.com", b"hello=1")


def test_same_imei_to_one_vendor_in_two_countries_is_two_alerts(tmp_path: Path) -> None:
    cfg = _config(tmp_path, f'[identifiers]\nimei = ["{DEMO_IMEI}"]\n')
    # --record: the resolve records below are the event log's.
    recs = _analyze(build(tmp_path / "two.pcap", _two_countries), cfg, record=True)
    alerts = [r for r in recs if r["type"] == "alert" and r["identifier"] == "imei"]
    assert len(alerts) == 2, alerts
    by_country = {a["country"]: a for a in alerts}
    assert set(by_country) == {"CN", "SG"}
    assert all(a["rule"] == "identifier_abroad" and a["vendor"] == "Xiaomi" for a in alerts)
    assert by_country["SG"]["encoding"] == "base64"
    assert by_country["SG"]["dst_ip"] == AWS_SG_IP
    # The event log's resolve records: each window counted its repeat and says what it saw.
    state = tmp_path / "state"
    logged = [json.loads(x) for x in (state / "events.jsonl").read_text().splitlines()]
    resolved = {r["country"]: r for r in logged if r["type"] == "resolved"}
    assert resolved["CN"]["repeats"] == 1 and resolved["CN"]["encodings"] == ["plain"]
    assert resolved["SG"]["repeats"] == 1
    assert resolved["SG"]["encodings"] == ["base64", "plain"]
    assert resolved["SG"]["servers"] == [SG_NAME]
    assert DEMO_IMEI not in (state / "events.jsonl").read_text()


RANDOM_MAC_PHONE = Host("da:a1:19:00:00:42", "192.168.1.60")
"""A randomized (locally administered) MAC: no OUI says what it is, only its User-Agent."""


def _kind_learned_late(cap: Capture) -> None:
    # First a flow abroad without a User-Agent: the device is identified as "unknown" then.
    s = TcpSession(cap, RANDOM_MAC_PHONE, AWS_SG_IP, 42001, 443)
    s.open()
    s.send(b"\x17\x03\x03\x00\x10" + bytes(16))
    s.close()
    cap.tick(5)
    # Then the leak, whose request carries the Android User-Agent.
    _post(
        cap,
        RANDOM_MAC_PHONE,
        XIAOMI_API_IP,
        42002,
        "api.account.xiaomi.com",
        f"imei={DEMO_IMEI}".encode(),
    )


def test_alert_device_fields_are_the_device_record_at_the_alert(tmp_path: Path) -> None:
    cfg = _config(tmp_path, f'[identifiers]\nimei = ["{DEMO_IMEI}"]\n')
    recs = _analyze(build(tmp_path / "late.pcap", _kind_learned_late), cfg)
    (alert,) = [r for r in recs if r["type"] == "alert" and r["identifier"] == "imei"]
    (dev,) = [r for r in recs if r["type"] == "device" and r["mac"] == RANDOM_MAC_PHONE.mac]
    assert dev["kind"] == "phone"
    assert alert["device_kind"] == dev["kind"] and alert["device_vendor"] == dev["vendor"]


# --- placeholders -------------------------------------------------------------------------------

_KEY_FOR = {
    "mac": "wifi_mac",
    "ad_id": "advertising_id",
    "android_id": "android_id",
    "imei": "imei",
    "imsi": "imsi",
    "iccid": "iccid",
    "phone": "msisdn",
    "email": "email",
}
_GROUP_BIT_EXAMPLES = ("01:00:5e:00:00:fb", "33:33:00:00:00:01", "01:80:c2:00:00:0e")


def _placeholder_values() -> list[tuple[str, str, str]]:
    """(kind, value, reason) for every entry of the data file (rules by examples)."""
    out = []
    for e in placeholders().entries:
        if e.value is not None:
            out.append((e.kind, e.value, e.reason))
        elif e.match == "domain":
            out.append((e.kind, f"chacha20-poly1305@{e.domain}", e.reason))
        else:
            out += [(e.kind, mac, e.reason) for mac in _GROUP_BIT_EXAMPLES]
    return out


@pytest.mark.parametrize(("kind", "value", "reason"), _placeholder_values())
def test_every_placeholder_is_recognised(kind: str, value: str, reason: str) -> None:
    assert placeholders().reason(kind, value) == reason


def test_placeholder_file_entries_have_sources() -> None:
    entries = placeholders().entries
    assert {e.kind for e in entries} >= {"mac", "ad_id", "android_id", "imei", "imsi", "phone"}
    assert all(e.source.strip() for e in entries)
    # The locally-administered bit alone is no placeholder: randomized MACs are real.
    assert placeholders().reason("mac", "02:1a:2b:3c:4d:5e") is None
    assert placeholders().reason("mac", "da:a1:19:00:00:42") is None


def _placeholder_posts(cap: Capture) -> None:
    port = 43000
    for kind, value, _ in _placeholder_values():
        spelled = value.removeprefix("+") if kind == "phone" else value
        body = f'{{"{_KEY_FOR[kind]}": "{spelled}", "v": 1}}'.encode()
        port += 1
        _post(cap, PHONE, XIAOMI_API_IP, port, "api.account.xiaomi.com", body)
    # And one real, randomized Wi-Fi MAC: it must still alert.
    _post(
        cap, PHONE, XIAOMI_API_IP, port + 1, "api.account.xiaomi.com", b"wifi_mac=da:a1:19:12:34:56"
    )


def test_placeholders_never_alert_and_are_counted(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    recs = _analyze(build(tmp_path / "ph.pcap", _placeholder_posts), cfg)
    alerts = [r for r in recs if r["type"] == "alert" and r.get("identifier")]
    assert [(a["identifier"], a["value"]) for a in alerts] == [("mac", "…34:56")]
    (stats,) = [r for r in recs if r["type"] == "stats"]
    counted = stats["detect"]["placeholders"]
    # What the scanner matches at all was counted (all-zero and broadcast MACs and the zero
    # advertising ID it already refuses by shape; the file lists them all the same).
    assert set(counted) >= {"android_mac", "multicast_mac", "android_id_bug", "emulator"}
    assert counted["protocol_name"] == sum(e.match == "domain" for e in placeholders().entries)
    assert set(counted) <= set(placeholders().reasons)


KEXINIT_NAMES = (
    b"curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,"
    b"ext-info-c,kex-strict-c-v00@openssh.com\x00\x00\x00\x33"
    b"chacha20-poly1305@openssh.com,aes128-ctr,aes128-gcm@openssh.com"
)


def _ssh_handshake(cap: Capture) -> None:
    s = TcpSession(cap, PHONE, AWS_SG_IP, 46001, 22)
    s.open()
    s.send(b"SSH-2.0-OpenSSH_9.6\r\n")
    s.send(b"\x00\x00\x04\x5c\x06\x14" + bytes(16) + b"\x00\x00\x00\x90" + KEXINIT_NAMES)
    s.close()


def test_ssh_algorithm_names_are_no_email_addresses(tmp_path: Path) -> None:
    """Found by the false-alert check over public captures: every SSH client's KEXINIT
    names algorithms as name@domain."""
    recs = _analyze(build(tmp_path / "ssh.pcap", _ssh_handshake), _config(tmp_path))
    assert [r for r in recs if r["type"] == "alert" and r.get("identifier")] == []
    (stats,) = [r for r in recs if r["type"] == "stats"]
    assert stats["detect"]["placeholders"].get("protocol_name", 0) >= 1


# --- devices only from LAN-side senders ----------------------------------------------------------

ZERO_MAC_HOST = Host("00:00:00:00:00:00", "192.168.1.70")
ONLY_DST_HOST = Host("aa:bb:cc:00:00:77", "192.168.1.71")


def _server_to_client_only(cap: Capture) -> None:
    for host, port in ((ZERO_MAC_HOST, 44001), (ONLY_DST_HOST, 44002), (PHONE, 44003)):
        s = TcpSession(cap, host, AWS_SG_IP, port, 443)
        s.send(b"\x17\x03\x03\x00\x20" + bytes(32), up=False, ack=False)
    # The phone also sends: it is a device, and the reply-first flow above is its.
    s = TcpSession(cap, PHONE, XIAOMI_API_IP, 44004, 80)
    s.open()
    s.close()


def test_mac_seen_only_as_destination_is_no_device(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    recs = _analyze(build(tmp_path / "s2c.pcap", _server_to_client_only), cfg)
    macs = {r["mac"] for r in recs if r["type"] == "device"}
    assert macs == {PHONE.mac}
    flows = [r for r in recs if r["type"] == "flow"]
    owners = {f["src_ip"]: f["device_mac"] for f in flows}
    assert owners[ZERO_MAC_HOST.ip] is None and owners[ONLY_DST_HOST.ip] is None


def _zero_mac_sender(cap: Capture) -> None:
    s = TcpSession(cap, ZERO_MAC_HOST, AWS_SG_IP, 45001, 443)
    s.open()
    s.close()


def test_placeholder_mac_sender_is_no_device(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    recs = _analyze(build(tmp_path / "zero.pcap", _zero_mac_sender), cfg)
    assert [r for r in recs if r["type"] == "device"] == []
    (stats,) = [r for r in recs if r["type"] == "stats"]
    assert stats["not_devices"]["zero_mac"] >= 1
