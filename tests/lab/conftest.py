"""The lab fixture: one namespace gateway per test module, skipped cleanly where none can be."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from sensor.lab import NS_PREFIX, Lab


def lab_unusable() -> str | None:
    """Why no lab can be built here, or None when it can."""
    if os.geteuid() != 0:
        return "lab tests need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"lab tests need `{tool}` (packaging/system-deps.sh test)"
    # Named like a lab namespace, so cleanup_stale removes it should this process die here.
    probe = f"{NS_PREFIX}-{os.getpid()}-0000-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns` is not usable here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


@pytest.fixture(scope="session")
def lab_usable() -> None:
    reason = lab_unusable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def lab(lab_usable: None) -> Iterator[Lab]:
    with Lab.create() as built:
        yield built
