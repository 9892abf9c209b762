"""Dropping root, in a child process (it cannot be undone): every thread ends with the cut
capability bounding set, also one started before the drop."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from sensor import privileges

CHILD = """
import json, logging, os, threading, time
from sensor import privileges

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
stop = threading.Event()
def idle():
    stop.wait()
early = None
if {early}:
    early = threading.Thread(target=idle, name="early")
    early.start()  # before the bounding set is cut
privileges.cut_bounding_set()
threading.Thread(target=idle, name="before-drop").start()  # like the Alertmanager sender
privileges.drop_to({user!r})
threading.Thread(target=idle, name="after-drop").start()  # like the metrics server
time.sleep(0.1)
status = {{}}
for tid in os.listdir("/proc/self/task"):
    text = open(f"/proc/self/task/{{tid}}/status").read().splitlines()
    status[tid] = dict(x.split(":\\t", 1) for x in text if ":\\t" in x)
print(json.dumps(status))
stop.set()
"""


def _run(early: bool) -> tuple[dict[str, dict[str, str]], str]:
    user = pwd.getpwuid(65534).pw_name  # nobody
    code = CHILD.format(early=early, user=user)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(proc.stdout), proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_every_thread_gets_the_cut_bounding_set() -> None:
    status, err = _run(early=False)
    assert len(status) == 3, status
    for tid, st in status.items():
        assert int(st["CapBnd"], 16) == privileges.KEEP, (tid, st["Name"], st["CapBnd"])
        assert st["Uid"].split() == ["65534"] * 4, (tid, st["Uid"])
        assert int(st["CapEff"], 16) in (0, privileges.KEEP), (tid, st["CapEff"])
        assert int(st["CapInh"], 16) == int(st["CapAmb"], 16) == 0
    assert "ERROR" not in err, err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_a_thread_started_before_the_cut_is_named() -> None:
    status, err = _run(early=True)
    wide = [st for st in status.values() if int(st["CapBnd"], 16) != privileges.KEEP]
    assert len(wide) == 1, status
    assert "ERROR threads keep capabilities in their bounding set" in err
    assert "(early)" in err
