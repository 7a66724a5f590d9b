"""docs/configuration.md documents every key of bridge.example.toml, with its default.

bridge.example.toml is the source of truth (tests/unit/test_schema_registry.py checks it
equals the defaults of bridge/config.py). Each of its tables has a section in
docs/configuration.md headed with the table's name in backticks (`[kafka]`,
`[[dropcopy.streams]]`; top-level keys under "Top level"), holding a row
"| `key` | `default` | meaning |" per key. The keys of the commented-out example tables
(`# [[dropcopy.streams]]`, `# [[predexon.subscriptions]]`) must be there too.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "bridge.example.toml"
DOC = ROOT / "docs" / "configuration.md"
TOP_LEVEL = "Top level"


def sections(doc: str) -> dict[str, str]:
    """Section title (the table name without backticks, or "Top level") -> its text."""
    parts = re.split(r"^## (.+)$", doc, flags=re.M)
    pairs = zip(parts[1::2], parts[2::2], strict=True)
    return {title.strip().strip("`"): body for title, body in pairs}


def example_keys() -> list[tuple[str, str, Any]]:
    """(table, key, default) for every key the example sets: tables as `[a.b]`, the
    top level as TOP_LEVEL. Sub-tables are tables of their own, not keys."""
    out: list[tuple[str, str, Any]] = []

    def walk(table: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                name = f"{table[1:-1]}.{key}" if table != TOP_LEVEL else key
                walk(f"[{name}]", value)
                if not value:  # an empty table (e.g. [kafka.properties]) still has a section
                    out.append((f"[{name}]", "", None))
            else:
                out.append((table, key, value))

    walk(TOP_LEVEL, tomllib.loads(EXAMPLE.read_text()))
    return out


def commented_array_keys() -> list[tuple[str, str]]:
    """(table, key) of the commented-out `# [[x.y]]` example tables."""
    out: list[tuple[str, str]] = []
    table = None
    for line in EXAMPLE.read_text().splitlines():
        header = re.match(r"^#\s*(\[\[[\w.]+\]\])\s*$", line)
        if header:
            table = header.group(1)
            continue
        if table is None:
            continue
        key = re.match(r"^#\s*(\w+)\s*=", line)
        if key:
            out.append((table, key.group(1)))
        elif not line.startswith("#"):
            table = None
    return out


def toml_text(value: Any) -> str | None:
    """The default as the docs write it (TOML), or None where the docs may spell it out."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, int | float):
        return str(value)
    if value == []:
        return "[]"
    return None  # a long list: the docs list its items


def row(body: str, key: str) -> str | None:
    for line in body.splitlines():
        if line.startswith(f"| `{key}` |"):
            return line
    return None


def test_every_example_key_is_documented_with_its_default() -> None:
    docs = sections(DOC.read_text())
    problems = []
    for table, key, default in example_keys():
        body = docs.get(table)
        if body is None:
            problems.append(f"no section '## `{table}`'")
            continue
        if not key:
            continue
        line = row(body, key)
        if line is None:
            problems.append(f"{table} {key}: no row")
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        expected = toml_text(default)
        if expected is not None and f"`{expected}`" not in cells[1]:
            problems.append(f"{table} {key}: default cell {cells[1]!r} lacks `{expected}`")
        if len(cells) < 3 or not cells[2]:
            problems.append(f"{table} {key}: no meaning")
    assert not problems, "docs/configuration.md: " + "; ".join(sorted(set(problems)))


def test_every_commented_example_table_key_is_documented() -> None:
    keys = commented_array_keys()
    assert {t for t, _ in keys} >= {"[[dropcopy.streams]]", "[[predexon.subscriptions]]"}
    docs = sections(DOC.read_text())
    missing = [f"{t} {k}" for t, k in keys if row(docs.get(t, ""), k) is None]
    assert not missing, f"docs/configuration.md lacks rows for {missing}"


def test_the_doc_has_no_key_the_example_lacks() -> None:
    """A renamed or removed key does not linger in the reference."""
    known = {(t, k) for t, k, _ in example_keys()} | set(commented_array_keys())
    docs = sections(DOC.read_text())
    extra = []
    for title, body in docs.items():
        for key in re.findall(r"^\| `(\w+)` \|", body, flags=re.M):
            if (title, key) not in known:
                extra.append(f"{title} {key}")
    assert not extra, f"docs/configuration.md documents keys the example lacks: {extra}"
