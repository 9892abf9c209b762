from __future__ import annotations

import pytest

from sensor.update import datafiles


@pytest.fixture(autouse=True)
def no_real_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test forgets to override points at a closed loopback port, never outside."""
    dead = {name: f"http://127.0.0.1:9/{name}" for name in datafiles.DEFAULT_URLS}
    monkeypatch.setattr(datafiles, "DEFAULT_URLS", dead)
