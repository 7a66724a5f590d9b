"""The layering drawn in docs/design.md ("Layers"), held against the code: every import of
one `bridge` package or module by another runs down the layers (or stays in its layer), and
every package or module has its place."""

from __future__ import annotations

import ast
from pathlib import Path

BRIDGE = Path(__file__).resolve().parents[2] / "bridge"

LAYERS: list[set[str]] = [
    {"errors", "timeutil", "event_times", "records", "maintenance", "certificates", "drift"},
    {"config", "sim"},
    {"streams"},
    {"serde"},
    {"kafka", "mapping"},
    {"eos", "sources", "logs", "embedded", "verify"},
    {"backfill", "embedded_security", "embedded_registry"},
    {"cluster"},
    {"metrics"},
    {"health"},
    {"app", "cli"},
    {"commands", "__main__", "__init__"},
]
"""Bottom first. `sim` (the upstream simulators) stands low on purpose: it shares no
protocol code with the product, so a misreading in one shows up as a failing test."""

RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _imports() -> list[tuple[str, str, str]]:
    """(file, importing part, imported part) for every import of `bridge.<part>`."""
    found = []
    for path in sorted(BRIDGE.rglob("*.py")):
        part = path.relative_to(BRIDGE).with_suffix("").parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if module.startswith("bridge."):
                    found.append((str(path.relative_to(BRIDGE)), part, module.split(".")[1]))
    return found


def test_every_part_of_bridge_has_a_layer() -> None:
    parts = {p.relative_to(BRIDGE).with_suffix("").parts[0] for p in BRIDGE.rglob("*.py")}
    assert parts - set(RANK) == set(), "place these in LAYERS and docs/design.md"


def test_no_import_runs_up_a_layer() -> None:
    upward = [
        f"{path}: {part} imports {imported}"
        for path, part, imported in _imports()
        if RANK[imported] > RANK[part]
    ]
    assert upward == []


def test_the_simulators_share_no_protocol_code_with_the_product() -> None:
    shared = [
        (path, imported)
        for path, part, imported in _imports()
        if part == "sim" and imported in {"mapping", "sources", "streams", "serde"}
    ]
    assert shared == []
