"""README.md stays a first read (at most 15 KB) and its links, and those of docs/, resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_BYTES = 15 * 1024

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _broken(path: Path) -> list[str]:
    broken = []
    for target in _LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        missing_anchor = bool(anchor) and dest.suffix == ".md" and anchor not in _anchors(dest)
        if not dest.exists() or missing_anchor:
            broken.append(target)
    return broken


def test_readme_at_most_15_kb() -> None:
    size = README.stat().st_size
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes: move detail to docs/"


def test_readme_links_to_docs() -> None:
    links = _LINK.findall(README.read_text())
    assert any(link.startswith("docs/") for link in links)
    assert _broken(README) == []


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_docs_links_resolve(doc: Path) -> None:
    assert _broken(doc) == []


def test_link_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Top\n[x](b.md) [y](a.md#nope) [z](a.md#top) [w](https://x)\n")
    assert _broken(tmp_path / "a.md") == ["b.md", "a.md#nope"]


def test_readme_names_the_set_up_commands_and_analyze_options() -> None:
    text = README.read_text()
    for needle in ("make demo", "make test", "python3-venv", "write_sample", "phonehome analyze"):
        assert needle in text, needle
    for flag in (
        "--home-country", "--identifiers-file", "--record", "--format json|csv|text",
        "--top N", "--all", "--device MAC|NAME", "--alerts-only",
    ):  # fmt: skip
        assert flag in text, flag
