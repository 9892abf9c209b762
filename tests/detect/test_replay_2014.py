"""End to end: the 2014 Redmi 1S finding replayed through analyze (home country ID).

The phone posts its IMEI, its number and its contact book in clear to api.account.xiaomi.com
(Kingsoft Cloud, CN); later it sends the IMEI again, merely hashed or encoded, to another
server abroad. Alerts must come out of the JSON report and the event log with the right fields,
and no output may hold an identifier in full, in any encoding.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from sensor.lab.synth import (
    AWS_SG_IP,
    DEMO_CONTACTS,
    DEMO_IMEI,
    DEMO_PHONE,
    PHONE,
    REDMI_UA,
    XIAOMI_API_IP,
    Capture,
    TcpSession,
    http_request,
    sample_home,
)
from tests.pipeline_helpers import build, run_analyze
from tests.secrets import find_secrets


def _config(tmp_path: Path, extra: str = "") -> tuple[Path, Path]:
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[site]\nhome_country = "ID"\n[paths]\nstate_dir = "{state}"\n'
        f'[identifiers]\nphone = ["{DEMO_PHONE}"]\n{extra}'
    )
    return cfg, state


def _replay(tmp_path: Path) -> Path:
    p = tmp_path / "2014.pcap"
    with open(p, "wb") as fh:
        sample_home(fh)
    return p


def test_replay_raises_identifier_abroad_in_report_and_event_log(tmp_path: Path) -> None:
    cfg, state = _config(tmp_path)
    _, _, stats, _ = run_analyze(_replay(tmp_path), config=cfg)
    # run_analyze only returns flow/device/stats; read the alerts from a second run's JSON
    import io

    from sensor.analyze import analyze

    out = io.StringIO()
    assert analyze([str(_replay(tmp_path))], str(cfg), as_json=True, out=out, record=True) == 0
    alerts = [json.loads(x) for x in out.getvalue().splitlines() if '"type":"alert"' in x]
    by_kind = {a["identifier"]: a for a in alerts}
    assert {"imei", "phone", "contacts"} <= set(by_kind)
    for a in by_kind.values():
        assert a["rule"] == "identifier_abroad" and a["severity"] == "critical"
        assert a["device_mac"] == PHONE.mac
        assert (a["dst_ip"], a["dst_port"]) == (XIAOMI_API_IP, 80)
        assert a["server_name"] == "api.account.xiaomi.com"
        assert (a["vendor"], a["country"]) == ("Xiaomi", "CN")
        assert a["location"] == "body"
        assert set(a) >= {"encoding", "region", "value", "ts"}
    assert by_kind["imei"]["value"] == "…" + DEMO_IMEI[-4:]
    assert by_kind["contacts"]["value"].endswith("numbers")
    # The same alerts are in the event log (written by the run with --record).
    log_lines = (state / "events.jsonl").read_text().splitlines()
    logged = [json.loads(x) for x in log_lines]
    assert {a["identifier"] for a in logged if a["type"] == "alert"} >= {
        "imei",
        "phone",
        "contacts",
    }
    assert oct((state / "events.jsonl").stat().st_mode & 0o777) == "0o600"
    assert stats["packets_skipped"] == 0


def _hashed_followup(cap: Capture) -> None:
    """After the plaintext post, the IMEI goes to Singapore md5-hashed and base64-encoded, to a
    third party's SDK (to Xiaomi again it would be a repeat, suppressed for an hour)."""
    sample_home_into(cap)
    s = TcpSession(cap, PHONE, AWS_SG_IP, 40900, 80)
    s.open()
    md5 = hashlib.md5(DEMO_IMEI.encode()).hexdigest()
    b64 = base64.b64encode(f'{{"did":"{DEMO_IMEI}"}}'.encode()).decode()
    s.send(
        http_request(
            "GET",
            "t.sdk-analytics.example",
            f"/v1/s?d={md5}",
            REDMI_UA,
            headers=[("X-Payload", b64)],
        )
    )
    s.close()


def sample_home_into(cap: Capture) -> None:
    s = TcpSession(cap, PHONE, XIAOMI_API_IP, 40001, 80)
    s.open()
    s.send(
        http_request(
            "POST",
            "api.account.xiaomi.com",
            "/pass/v2/register",
            REDMI_UA,
            f"imei={DEMO_IMEI}&model=Redmi".encode(),
            [("Content-Type", "application/x-www-form-urlencoded")],
        )
    )
    s.close()


def test_learned_identifier_caught_hashed_and_encoded(tmp_path: Path) -> None:
    import io

    from sensor.analyze import analyze

    cfg, state = _config(tmp_path)
    path = build(tmp_path / "follow.pcap", _hashed_followup)
    out = io.StringIO()
    assert analyze([str(path)], str(cfg), as_json=True, out=out, record=True) == 0
    alerts = [json.loads(x) for x in out.getvalue().splitlines() if '"type":"alert"' in x]
    sg = [a for a in alerts if a["dst_ip"] == AWS_SG_IP and a["identifier"] == "imei"]
    encodings = {a["encoding"] for a in sg}
    assert "md5" in encodings, alerts
    assert all(a["rule"] == "identifier_abroad" for a in sg)
    # Learned identifiers are kept on disk only as keyed hashes.
    learned = json.loads((state / "learned.json").read_text())
    assert {r["kind"] for r in learned} >= {"imei"}
    assert all(set(r) == {"kind", "keyed_hash"} for r in learned)


def test_home_destination_is_cleartext_warning(tmp_path: Path) -> None:
    import io

    from sensor.analyze import analyze

    cfg = tmp_path / "cn.toml"
    cfg.write_text('[site]\nhome_country = "CN"\n')
    out = io.StringIO()
    assert analyze([str(_replay(tmp_path))], str(cfg), as_json=True, out=out) == 0
    alerts = [json.loads(x) for x in out.getvalue().splitlines() if '"type":"alert"' in x]
    api = [a for a in alerts if a["dst_ip"] == XIAOMI_API_IP]
    assert api and all(
        (a["rule"], a["severity"]) == ("identifier_cleartext", "warning") for a in api
    )


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "summary"])
def test_no_output_holds_an_identifier(tmp_path: Path, as_json: bool) -> None:
    import io

    from sensor.analyze import analyze

    cfg, state = _config(tmp_path)
    path = build(tmp_path / "all.pcap", _hashed_followup)
    out, err = io.StringIO(), io.StringIO()
    assert (
        analyze(
            [str(path), str(_replay(tmp_path))],
            str(cfg),
            as_json=as_json,
            out=out,
            err=err,
            record=True,
        )
        == 0
    )
    texts: dict[str, str | bytes] = {"stdout": out.getvalue(), "stderr": err.getvalue()}
    for f in state.rglob("*"):
        if f.is_file() and f.stat().st_size < 5_000_000:
            texts[str(f)] = f.read_bytes()
    found = find_secrets(texts, [DEMO_IMEI, DEMO_PHONE, *DEMO_CONTACTS])
    assert not found, "\n".join(found)
