"""packaging/phonehome.1 and `--help` agree: every option of every command is in the man
page's section for that command, and every option the man page gives a command exists."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sensor.cli import build_parser

MAN = Path(__file__).resolve().parent.parent / "packaging" / "phonehome.1"

PENDING: dict[str, set[str]] = {}
"""Options documented before the command line has them (another branch adds them). Each must
still be missing from --help: once it is there, delete it here."""

_OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        s
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        for s in action.option_strings
    }


def _sections() -> dict[str, str]:
    """`.SS phonehome CMD` -> its text, man escapes undone; "" -> GLOBAL OPTIONS."""
    text = MAN.read_text().replace("\\-", "-")
    out: dict[str, str] = {}
    for m in re.finditer(r"^\.SS phonehome (\S+)\n(.*?)(?=^\.S[SH] )", text, re.M | re.S):
        out[m[1]] = m[2]
    glob = re.search(r"^\.SH GLOBAL OPTIONS\n(.*?)(?=^\.SH )", text, re.M | re.S)
    assert glob, "no GLOBAL OPTIONS section"
    out[""] = glob[1]
    return out


def _documented(section: str) -> set[str]:
    """The options given as items: those on each `.TP` tag line."""
    tags = re.findall(r"^\.TP\n\.B\w*\s+(.*)$", section, re.M)
    return {o for tag in tags for o in _OPTION.findall(tag)}


def test_every_command_has_a_section() -> None:
    assert set(_commands()) <= set(_sections()), set(_commands()) - set(_sections())


def test_help_options_are_in_the_man_page() -> None:
    sections = _sections()
    missing = {
        name: sorted(_options(p) - _documented(sections[name]))
        for name, p in _commands().items()
        if name != "lab"  # its own sub-commands, shown in the section's text
    }
    missing[""] = sorted(_options(build_parser()) - _documented(sections[""]))
    assert not any(missing.values()), f"in --help, not in {MAN.name}: {missing}"


def test_man_page_options_exist() -> None:
    sections = _sections()
    commands = _commands()
    extra = {
        name: sorted(_documented(sections[name]) - _options(p) - PENDING.get(name, set()))
        for name, p in commands.items()
    }
    extra[""] = sorted(_documented(sections[""]) - _options(build_parser()))
    assert not any(extra.values()), f"in {MAN.name}, not in --help: {extra}"
    landed = {name: sorted(PENDING[name] & _options(commands[name])) for name in PENDING}
    assert not any(landed.values()), f"now in --help: delete them from PENDING: {landed}"


def test_the_check_above_can_fail() -> None:
    section = '.TP\n.BI --config " FILE"\nx\n.TP\n.B --force\ny\n.TP\n.BR -v ", " --verbose\n'
    assert _documented(section) == {"--config", "--force", "-v", "--verbose"}


def test_man_page_renders_without_warnings() -> None:
    if shutil.which("groff") is None:
        pytest.skip("no groff")
    proc = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
