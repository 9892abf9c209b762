"""The device hint tables file (sensor/data/devices.toml): the shipped one loads, a broken one
is an error naming the file, the entry and the reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sensor.enrich.device_tables import (
    DEFAULT_PATH,
    DeviceTablesError,
    default_tables,
    load,
)

GOOD = """
format = 1
[[oui]]
pattern = 'apple\\b'
vendor = "Apple"
[[model]]
pattern = 'SM-[TXP]\\d'
vendor = "Samsung"
kind = "tablet"
[[user_agent]]
pattern = '\\b(?:iPhone|iPad)\\d+,\\d+'
vendor = "Apple"
label = "Apple"
os = "iOS"
model_group = 0
[[hostname]]
pattern = '^android-[0-9a-f]{8,16}$'
kind = "phone"
rank = "weak"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(text)
    return path


def test_the_shipped_tables_load_once() -> None:
    tables = default_tables()
    assert default_tables() is tables
    assert DEFAULT_PATH.name == "devices.toml" and DEFAULT_PATH.parent.name == "data"
    assert tables.oui and tables.model and tables.user_agent and tables.hostname
    assert {h.rank for h in tables.hostname} == {"strong", "weak", "none"}


def test_a_small_file(tmp_path: Path) -> None:
    tables = load(write(tmp_path, GOOD))
    (oui,) = tables.oui
    assert oui.pattern.match("APPLE, INC.") and oui.vendor == "Apple" and oui.kind is None
    (rule,) = tables.user_agent
    assert rule.model_group == 0 and rule.model is None and rule.os == "iOS"
    assert not rule.pattern.flags & re.IGNORECASE  # User-Agent patterns keep their case
    (host,) = tables.hostname
    assert host.pattern.search("ANDROID-0123456789abcdef") and host.vendor is None


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (("format = 1", "format = 2"), r"devices\.toml: format: must be 1"),
        (('kind = "tablet"', 'kind = "fridge"'), r"model\[0\]: kind: must be one of"),
        (("pattern = 'apple\\b'", "pattern = 'apple('"), r"oui\[0\]: pattern: not a regular"),
        (('vendor = "Apple"\n[[model]]', "[[model]]"), r"oui\[0\]: vendor: missing"),
        (('rank = "weak"', 'rank = "medium"'), r"hostname\[0\]: rank: must be one of"),
        (("model_group = 0", "model_group = 2"), r"user_agent\[0\]: model_group: the pattern"),
        (("model_group = 0", 'model_group = 0\nmodel = "iPhone"'), r"model: set either"),
        (('os = "iOS"', 'os = "iOS"\ncolour = "red"'), r"user_agent\[0\]: colour: unknown key"),
        (("format = 1", "format = 1\n[[mac]]\npattern = 'x'"), r"mac: unknown list"),
    ],
)
def test_broken_files_name_file_entry_and_reason(
    tmp_path: Path, change: tuple[str, str], error: str
) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(DeviceTablesError, match=error) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(DeviceTablesError, match=r"devices\.toml: "):
        load(write(tmp_path, "[[oui]\n"))
