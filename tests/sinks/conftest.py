"""Fixtures of the sink tests: a stand-in journald socket, a real Alertmanager on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sinks.samples import (
    AM_BINARY,
    free_port,
    http_get,
)


@pytest.fixture
def journal_socket() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for journald's, at a short path (sun_path is small)."""
    d = tempfile.mkdtemp(prefix="phj", dir="/tmp")
    path = os.path.join(d, "socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        yield path, sock
    finally:
        sock.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on 127.0.0.1, storage in tmp_path, clustering off."""
    if not os.access(AM_BINARY, os.X_OK):
        pytest.skip(f"{AM_BINARY} not installed (Debian package prometheus-alertmanager)")
    conf = tmp_path / "alertmanager.yml"
    conf.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = free_port()
    logf = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            AM_BINARY,
            f"--config.file={conf}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail("alertmanager exited: " + (tmp_path / "alertmanager.log").read_text())
            with contextlib.suppress(OSError):
                if http_get(port, "/-/ready")[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("alertmanager did not become ready")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        logf.close()
