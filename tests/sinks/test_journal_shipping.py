"""Event logs leave the router the conventional way (docs/FLEET.md): the sensor's alert entry
in the journal (sensor.sinks.journal_fields), shipped by systemd-journal-upload to
systemd-journal-remote on loopback, arrives with its MESSAGE_ID and PHONEHOME_* fields. The
sensor takes no part in the shipping. (Plain HTTP here; etc/fleet/journal has the TLS
settings of a real deployment.)"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sensor.sinks import MESSAGE_IDS, journal_fields
from tests.sinks.samples import make_alert

REMOTE = Path("/lib/systemd/systemd-journal-remote")
UPLOAD = Path("/lib/systemd/systemd-journal-upload")
FLEET = Path(__file__).resolve().parents[2] / "etc" / "fleet" / "journal"


def export_entry(fields: dict[str, str], host: str) -> bytes:
    """One entry in the journal export format (fields here have no newline)."""
    head = {
        "__REALTIME_TIMESTAMP": str(int(time.time() * 1e6)),
        "__MONOTONIC_TIMESTAMP": "1000000",
        "_BOOT_ID": "0123456789abcdef0123456789abcdef",
        "_HOSTNAME": host,
    }
    return "".join(f"{k}={v}\n" for k, v in {**head, **fields}.items()).encode() + b"\n"


def test_alerts_ship_by_journal_upload_to_journal_remote(tmp_path: Path) -> None:
    if not (REMOTE.exists() and UPLOAD.exists()):
        pytest.skip("systemd-journal-remote not installed (packaging/system-deps.sh test)")
    assert "URL=https://" in (FLEET / "journal-upload.conf").read_text()
    assert "SplitMode=host" in (FLEET / "journal-remote.conf").read_text()
    fields = journal_fields(make_alert())
    assert fields["MESSAGE_ID"] == MESSAGE_IDS["identifier_abroad"]
    # the router's journal: written by journal-remote's own writer from the export format
    src = tmp_path / "router.journal"
    subprocess.run(
        [str(REMOTE), f"--output={src}", "-"],
        input=export_entry(fields, "router-1"),
        check=True,
        capture_output=True,
        timeout=30,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "remote"
    dest.mkdir()
    log = (tmp_path / "remote.log").open("wb")
    remote = subprocess.Popen(
        [str(REMOTE), f"--listen-http=127.0.0.1:{port}", f"--output={dest}/"],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline and remote.poll() is None, "journal-remote"
            time.sleep(0.1)
        up = subprocess.run(
            [str(UPLOAD), f"--url=http://127.0.0.1:{port}", f"--file={src}", "--follow=no",
             f"--save-state={tmp_path / 'state'}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        deadline = time.monotonic() + 15
        got: list[dict[str, str]] = []
        while not got and time.monotonic() < deadline:
            out = subprocess.run(
                ["journalctl", f"--directory={dest}", "-o", "json",
                 f"MESSAGE_ID={fields['MESSAGE_ID']}"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            got = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
            time.sleep(0.2)
    finally:
        remote.terminate()
        remote.wait(15)
        log.close()
    assert len(got) == 1, got
    entry = got[0]
    assert entry["_HOSTNAME"] == "router-1" and entry["SYSLOG_IDENTIFIER"] == "phonehome"
    for key in ("PHONEHOME_IDENTIFIER", "PHONEHOME_VALUE", "PHONEHOME_KEYED_HASH", "PRIORITY"):
        assert entry[key] == fields[key], key
