"""The documentation stays navigable: a short README, relative links that resolve (files
and heading anchors), and no reference to files outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_BYTES = 15_000

# [text](target) and [text](target "title"); images alike. Code spans are removed first.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_OUTSIDE = "../" + "shared"
"""Spelled in two parts so that this file does not contain it."""


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    return _CODE_SPAN.sub("", _CODE_BLOCK.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _CODE_BLOCK.sub("", path.read_text())
    return {anchor(h) for h in _HEADING.findall(text)}


def relative_links(path: Path) -> list[str]:
    links = _LINK.findall(_prose(path.read_text()))
    return [t for t in links if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def test_readme_is_at_most_15_kb() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_the_docs_pages_exist_and_the_readme_links_each() -> None:
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert pages, "docs/ has no pages"
    readme_links = set(relative_links(ROOT / "README.md"))
    missing = [p for p in pages if f"docs/{p}" not in readme_links]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files_and_headings(path: Path) -> None:
    broken = []
    for target in relative_links(path):
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif not dest.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_tracked_text_file_refers_outside_the_repository() -> None:
    needle = _OUTSIDE.encode()
    found = []
    for path in _tracked_files():
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue  # deleted in the work tree, or a submodule
        if b"\0" in data[:8192]:
            continue  # binary
        if needle in data:
            found.append(str(path.relative_to(ROOT)))
    assert not found, f"these files refer to {_OUTSIDE}: {found}"


def test_operations_lists_every_metric() -> None:
    from bridge.metrics import METRICS

    text = (ROOT / "docs" / "operations.md").read_text()
    missing = [name for name, _, _ in METRICS if f"`{name}`" not in text]
    assert not missing, f"docs/operations.md lacks the metrics {missing}"
