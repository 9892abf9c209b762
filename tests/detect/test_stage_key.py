"""The install's HMAC key: never empty or short, whatever is on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.detect.stage import KEY_BYTES, load_or_create_key


@pytest.mark.parametrize("content", [b"", b"short"])
def test_short_key_file_is_never_used(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    key, persistent = load_or_create_key(path)
    assert len(key) == KEY_BYTES and not persistent
    assert path.read_bytes() == content  # the owner's file is left for them to look at


def test_key_is_created_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.key"
    key, persistent = load_or_create_key(path)
    assert persistent and len(key) == KEY_BYTES and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path) == (key, True)
