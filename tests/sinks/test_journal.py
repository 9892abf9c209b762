"""The journal sink: native protocol on a test socket, systemd-python in a private mount
namespace, stderr fallback. No output may hold an identifier in full."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sensor.sinks import (
    MESSAGE_IDS,
    JournalConfig,
    JournalSink,
    encode_native,
)
from sensor.sinks import journal as journal_module
from tests.sinks.samples import (
    FULL_IMEI,
    HASH,
    REDACTED,
    REPO,
    TV,
    make_alert,
    parse_native,
)


def test_encode_native() -> None:
    assert encode_native({"A": "1", "B": "x=y"}) == b"A=1\nB=x=y\n"
    assert encode_native({"M": "a\nb"}) == b"M\n" + struct.pack("<Q", 3) + b"a\nb\n"
    assert parse_native(encode_native({"M": "a\nb", "P": "2"})) == {"M": "a\nb", "P": "2"}


def test_journal_native_fields(journal_socket: tuple[str, socket.socket]) -> None:
    path, sock = journal_socket
    sink = JournalSink(JournalConfig(socket_path=path))
    assert sink.backend == "native"
    seen: dict[str, str] = {}
    for rule, prio in (
        ("identifier_abroad", "2"),
        ("identifier_cleartext", "4"),
        ("foreign_upload", "4"),
        ("foreign_upload_anomaly", "4"),
        ("new_country", "6"),
    ):
        alert = make_alert(rule)
        sink.send(alert)
        data = sock.recv(65536)
        assert FULL_IMEI.encode() not in data
        f = parse_native(data)
        assert f["MESSAGE"] == alert.summary
        assert f["PRIORITY"] == prio
        assert f["MESSAGE_ID"] == MESSAGE_IDS[rule]
        assert len(f["MESSAGE_ID"]) == 32 and int(f["MESSAGE_ID"], 16) >= 0
        assert f["SYSLOG_IDENTIFIER"] == "phonehome"
        assert f["PHONEHOME_RULE"] == rule
        assert f["PHONEHOME_SEVERITY"] == alert.severity
        assert f["PHONEHOME_DEVICE_MAC"] == TV.mac
        assert f["PHONEHOME_DEVICE_NAME"] == "Living-room TV"
        assert f["PHONEHOME_DST_IP"] == "203.0.113.7" and f["PHONEHOME_DST_PORT"] == "80"
        assert f["PHONEHOME_COUNTRY"] == "CN" and f["PHONEHOME_VENDOR"] == "ExampleCorp"
        assert all(k == k.upper() for k in f)
        if rule.startswith("identifier"):
            assert f["PHONEHOME_VALUE"] == REDACTED and f["PHONEHOME_KEYED_HASH"] == HASH
            assert f["PHONEHOME_IDENTIFIER"] == "imei"
        else:
            assert "PHONEHOME_VALUE" not in f and "PHONEHOME_IDENTIFIER" not in f
            assert f["PHONEHOME_BYTES_UP"] == "6000000"
        seen[rule] = f["MESSAGE_ID"]
    assert len(set(seen.values())) == 5  # one id per rule
    # a message with a newline goes length-prefixed and arrives whole
    sink.send(make_alert(summary="two\nlines"))
    assert parse_native(sock.recv(65536))["MESSAGE"] == "two\nlines"
    assert sink.stats() == {"sent": 6, "errors": 0, "dropped": 0}
    sink.close()


def test_journal_full_socket_drops_without_blocking(
    journal_socket: tuple[str, socket.socket],
) -> None:
    path, _ = journal_socket
    sink = JournalSink(JournalConfig(socket_path=path))
    for _ in range(3000):  # nobody reads: the socket's queue fills up (a blocking send hangs)
        sink.send(make_alert(summary="x" * 2000))
    s = sink.stats()
    assert s["dropped"] > 0 and s["sent"] + s["dropped"] == 3000
    sink.close()


def test_journal_stderr_fallback(tmp_path: Path) -> None:
    out = io.StringIO()
    sink = JournalSink(JournalConfig(socket_path=str(tmp_path / "no-such-socket")), stream=out)
    assert sink.backend == "stderr"
    sink.send(make_alert())
    sink.send(make_alert("new_country", summary="TV talked to CN for the first time"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("<2>phonehome: critical identifier_abroad: Living-room TV sent imei")
    assert "value=…3809" in lines[0] and "device_mac=aa:bb:cc:dd:ee:01" in lines[0]
    assert lines[1].startswith("<6>phonehome: info new_country: TV talked to CN")
    assert FULL_IMEI not in out.getvalue()
    # a path that exists but is no socket is no journal either
    plain = tmp_path / "plain"
    plain.write_text("")
    assert JournalSink(JournalConfig(socket_path=str(plain)), stream=out).backend == "stderr"


def test_journal_without_systemd_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)  # makes the import fail
    assert journal_module.import_journal() is None


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


LIBRARY_SENDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from sensor.sinks import JournalConfig, JournalSink
    from tests.sinks.samples import make_alert
    sink = JournalSink(JournalConfig())
    print(sink.backend)
    sink.send(make_alert("identifier_abroad"))
    sink.send(make_alert("new_country", summary="multi\\nline"))
    print(sink.stats())
    """
)


def test_journal_systemd_python_in_private_mount_namespace(
    journal_socket: tuple[str, socket.socket],
) -> None:
    """systemd-python's journal.send only knows /run/systemd/journal/socket; a child process
    in its own mount namespace sees our test socket there."""
    pytest.importorskip("systemd.journal")
    if not _can_unshare():
        pytest.skip("needs root and unshare --mount")
    path, sock = journal_socket
    script = (
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && "
        'mount --bind "$1" /run/systemd/journal && exec "$2" -c "$3" "$4"'
    )
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            os.path.dirname(path),
            sys.executable,
            LIBRARY_SENDER,
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "systemd-python"
    first = parse_native(sock.recv(65536))
    assert first["MESSAGE_ID"] == MESSAGE_IDS["identifier_abroad"]
    assert first["PRIORITY"] == "2"
    assert first["PHONEHOME_RULE"] == "identifier_abroad"
    assert first["PHONEHOME_DEVICE_MAC"] == TV.mac
    assert first["PHONEHOME_VALUE"] == REDACTED
    assert first["MESSAGE"].startswith("Living-room TV sent imei")
    second = parse_native(sock.recv(65536))
    assert second["MESSAGE"] == "multi\nline" and second["PRIORITY"] == "6"
    assert second["MESSAGE_ID"] == MESSAGE_IDS["new_country"]


def test_journal_config_validation() -> None:
    JournalConfig().validate()
    with pytest.raises(ValueError, match=r"^socket_path: "):
        JournalConfig(socket_path="relative").validate()
    with pytest.raises(ValueError, match=r"^syslog_identifier: "):
        JournalConfig(syslog_identifier="has space").validate()
