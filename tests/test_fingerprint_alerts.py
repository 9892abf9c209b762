"""End to end: a device's JA4 set in its record, and new_fingerprint once it has settled."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from sensor.analyze import analyze
from sensor.config import parse_config
from sensor.daemon import Daemon
from sensor.fingerprints import STATE_NAME
from sensor.lab.synth import PHONE, Capture, TcpSession, client_hello
from sensor.metrics import Exporter
from sensor.sources.pcap import CaptureFile, read_captures
from tests.builders import quic_initial_datagrams
from tests.pipeline_helpers import build

LEARNING = 600.0


def records(capture: Path, config: Path) -> list[dict[str, Any]]:
    out, err = io.StringIO(), io.StringIO()
    rc = analyze([str(capture)], config_path=str(config), as_json=True, out=out, err=err)
    assert rc == 0, err.getvalue()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_device_fingerprints_and_new_fingerprint_alert(tmp_path: Path) -> None:
    def tls(cap: Capture, port: int, hello: bytes) -> None:
        s = TcpSession(cap, PHONE, f"192.0.2.{port % 200}", port, 443)
        s.open()
        s.send(hello)
        s.close()

    def scenario(cap: Capture) -> None:
        tls(cap, 40001, client_hello("a.example.com"))  # first seen: learned
        cap.tick(LEARNING + 60)
        tls(cap, 40002, client_hello("b.example.com"))  # same client software: nothing
        tls(cap, 40003, client_hello("c.example.com", tls13=False))  # new: alert
        for d in quic_initial_datagrams("d.example.net"):  # new (QUIC): alert
            cap.udp(PHONE, "192.0.2.99", 50001, 443, d, up=True)
        tls(cap, 40004, client_hello("e.example.com", tls13=False))  # known now

    config = tmp_path / "phonehome.toml"
    config.write_text(f"[alerts]\nnew_fingerprint_learning = {LEARNING}\n")
    recs = records(build(tmp_path / "fp.pcap", scenario), config)
    flows = {r["server_name"]: r for r in recs if r["type"] == "flow" and r.get("ja4")}
    (device,) = [r for r in recs if r["type"] == "device" and r["mac"] == PHONE.mac]
    alerts = [r for r in recs if r["type"] == "alert" and r["rule"] == "new_fingerprint"]
    names = ("a.example.com", "c.example.com", "d.example.net")
    tls13, tls12, quic = (flows[n]["ja4"] for n in names)
    assert len({tls13, tls12, quic}) == 3
    assert tls13.startswith("t13d") and tls12.startswith("t12d") and quic.startswith("q13d")
    assert flows["b.example.com"]["ja4"] == tls13
    # Least recently shown first: the TLS 1.2 client came back last.
    assert device["ja4"] == [tls13, quic, tls12]
    assert [a["flow_uid"] for a in alerts] == [
        flows["c.example.com"]["uid"],
        flows["d.example.net"]["uid"],
    ]
    assert all(a["severity"] == "info" and a["device_mac"] == PHONE.mac for a in alerts)
    assert tls12 in alerts[0]["summary"]


def _daemon(state: Path) -> Daemon:
    """The live daemon's stages, pipeline, state files and stop, fed from captures (its
    packet sources and the kernel are left out)."""
    cfg = parse_config(
        {
            "paths": {"state_dir": str(state)},
            "alerts": {"new_fingerprint_learning": LEARNING},
        }
    )
    d = Daemon(None, cfg)
    d.metrics = Exporter(cfg.metrics, d.metrics_view())
    d._build_stages()
    return d


def _new_fingerprints(state: Path) -> list[str]:
    events = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
    return [e["summary"] for e in events if e.get("rule") == "new_fingerprint"]


def test_sets_and_learning_survive_a_daemon_restart(tmp_path: Path) -> None:
    """Before the restart the phone shows A (learned) and, past its learning period, B (an
    alert). After it: A and B are known, nothing; C is new and alerts at once, as the learning
    period began before the restart."""
    state = tmp_path / "state"
    state.mkdir()
    a, b, c = client_hello("a.example.com"), client_hello("b.example.com", tls13=False), (
        client_hello("c.example.com", alpn=("http/1.1",))
    )

    def tls(cap: Capture, port: int, hello: bytes) -> None:
        s = TcpSession(cap, PHONE, f"192.0.2.{port % 200}", port, 443)
        s.open()
        s.send(hello)
        s.close()

    def before(cap: Capture) -> None:
        tls(cap, 40001, a)
        cap.tick(LEARNING + 60)
        tls(cap, 40002, b)

    def after(cap: Capture) -> None:
        tls(cap, 40003, a)
        tls(cap, 40004, b)
        tls(cap, 40005, c)

    first = _daemon(state)
    first.pipeline.run(read_captures([CaptureFile(str(build(tmp_path / "1.pcap", before)))]))
    first.stop()
    ja4 = {r["mac"]: r["ja4"] for r in json.loads((state / STATE_NAME).read_text())["devices"]}
    (fp_a, fp_b) = ja4[PHONE.mac]
    assert len(_new_fingerprints(state)) == 1 and fp_b in _new_fingerprints(state)[0]

    second = _daemon(state)
    later = 1_700_000_000.0 + 2 * LEARNING  # still within the first run's learning day + 1
    second.pipeline.run(
        read_captures([CaptureFile(str(build(tmp_path / "2.pcap", after, start=later)))])
    )
    (dev,) = [d for d in second.pipeline.devices.values() if d.mac == PHONE.mac]
    fp_c = dev.ja4[-1]
    assert dev.ja4 == [fp_a, fp_b, fp_c] and len({fp_a, fp_b, fp_c}) == 3
    second.stop()
    alerts = _new_fingerprints(state)
    assert len(alerts) == 2 and fp_c in alerts[1]
    saved = json.loads((state / STATE_NAME).read_text())["devices"]
    assert [r["ja4"] for r in saved if r["mac"] == PHONE.mac] == [[fp_a, fp_b, fp_c]]


def test_failed_save_is_counted_and_retried(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    d = _daemon(state)

    def scenario(cap: Capture) -> None:
        s = TcpSession(cap, PHONE, "192.0.2.7", 40001, 443)
        s.open()
        s.send(client_hello("a.example.com"))
        s.close()

    d.pipeline.run(read_captures([CaptureFile(str(build(tmp_path / "1.pcap", scenario)))]))
    assert d.fingerprints.changed
    blocker = state / f".{STATE_NAME}.tmp"  # where the atomic write puts its temporary file
    blocker.mkdir()
    d.save_fingerprints()
    assert d.fingerprints.changed and not (state / STATE_NAME).exists()
    assert [n for (f, _), n in d.write_errors.items() if f == STATE_NAME] == [1]
    assert STATE_NAME in d.write_trouble
    blocker.rmdir()
    d.save_fingerprints()
    assert not d.fingerprints.changed and STATE_NAME not in d.write_trouble
    saved = json.loads((state / STATE_NAME).read_text())["devices"]
    assert [r["mac"] for r in saved] == [PHONE.mac]
    d.stages.close()
