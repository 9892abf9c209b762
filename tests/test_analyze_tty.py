"""`phonehome analyze` on a terminal, run for real with a pseudo-terminal: the progress line
(stderr a terminal only, first after 2 s, at most once a second, erased at the end) and colour
(stdout a terminal only, never with NO_COLOR).

The capture comes through a pipe the test holds open, so the command is still reading when
the progress line is due, however fast the machine. Times are lower bounds and rates upper
bounds only: a loaded machine makes neither fail."""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.lab.synth import write_sample

DEADLINE = 30.0


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PHONEHOME_CONFIG": "/nonexistent/phonehome.toml", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


def _read_until(fd: int, needle: bytes, deadline: float) -> tuple[bytes, float | None]:
    """What `fd` says until `needle` appears (and when it did), or the deadline passes."""
    got = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the other side closed (EIO on Linux)
            break
        if not chunk:
            break
        got += chunk
        if needle in got:
            return got, time.monotonic()
    return got, None


def _drain(fd: int, seconds: float) -> bytes:
    got = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    return got


@pytest.fixture
def capture(tmp_path: Path) -> bytes:
    path = tmp_path / "s.pcap"
    write_sample(str(path))
    return path.read_bytes()


def test_progress_line_on_a_terminal(capture: bytes) -> None:
    master, slave = os.openpty()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sensor", "analyze", "--json", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=_env(),
    )
    os.close(slave)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(capture[:5000])  # the header and some packets; the rest waits
        proc.stdin.flush()
        seen, first = _read_until(master, b"packets", started + DEADLINE)
        assert first is not None, f"no progress line: {seen!r}"
        assert first - started >= 2.0, "progress line earlier than 2 s"
        assert b"\r" in seen and b"kB read" in seen
        # It keeps going while the command reads: wait for a second update (liveness only).
        while seen.count(b"\rphonehome:") < 2 and time.monotonic() < started + DEADLINE:
            seen += _drain(master, 0.5)
        seen += _drain(master, 1.5)
        window = time.monotonic() - first
        updates = seen.count(b"\rphonehome:")
        assert updates >= 2, seen
        # At most once a second: an upper bound, which a slow machine only makes easier.
        assert updates <= window / 1.0 + 2, f"{updates} updates in {window:.1f} s"
        proc.stdin.write(capture[5000:])
        proc.stdin.close()
        out = proc.stdout.read()
        assert proc.wait(DEADLINE) == 0
        seen += _drain(master, 0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    recs = [json.loads(x) for x in out.decode().splitlines()]
    assert recs[-1]["type"] == "stats" and recs[-1]["packets_read"] == 261
    assert seen.endswith(b"\r\x1b[K"), seen[-80:]  # the line erased at the end
    assert b"\r" not in out  # the progress line never goes to stdout


def test_no_progress_line_when_stderr_is_not_a_terminal(capture: bytes) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sensor", "analyze", "--json", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdin is not None
    proc.stdin.write(capture[:5000])
    proc.stdin.flush()
    time.sleep(3.0)  # longer than the delay: a line would be due by now
    proc.stdin.write(capture[5000:])
    proc.stdin.close()
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read()
    err = proc.stderr.read()
    assert proc.wait(DEADLINE) == 0, err
    assert b"\r" not in err and b"packets" not in err


def _summary_on(stdout_tty: bool, capture: bytes, **env: str) -> bytes:
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sensor", "analyze", "--home-country", "ID", "-"],
        stdin=subprocess.PIPE,
        stdout=slave if stdout_tty else subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_env(**env),
    )
    os.close(slave)
    try:
        assert proc.stdin is not None
        proc.stdin.write(capture)
        proc.stdin.close()
        if stdout_tty:
            out, _ = _read_until(master, b"flows\r\n", time.monotonic() + DEADLINE)
        else:
            assert proc.stdout is not None
            out = proc.stdout.read()
        assert proc.wait(DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return out


def test_colour_only_on_a_terminal(capture: bytes) -> None:
    on_tty = _summary_on(True, capture)
    assert b"CRITICAL" in on_tty and b"\x1b[1;31mCRITICAL" in on_tty
    piped = _summary_on(False, capture)
    assert b"CRITICAL" in piped and b"\x1b[" not in piped
    no_color = _summary_on(True, capture, NO_COLOR="1")
    assert b"CRITICAL" in no_color and b"\x1b[" not in no_color


def test_progress_line_pieces() -> None:
    """The line's content: bytes of the total when sizes are known, packets, elapsed time."""
    from sensor.report import Progress

    class F:
        path = "x.pcap"
        packets = 1234
        size: int | None = 4_000_000
        bytes_read = 1_000_000

    clock = iter([100.0, 100.0, 165.0])
    p = Progress(io.StringIO(), [F()], clock=lambda: next(clock))
    p.started = 100.0
    assert p.line() == "phonehome: 1.0 MB of 4.0 MB (25%), 1234 packets, 0:00"
    assert p.line().endswith("1:05")
    F.size = None
    p.clock = lambda: 100.0
    assert p.line() == "phonehome: 1.0 MB read, 1234 packets, 0:00"
