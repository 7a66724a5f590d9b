"""The evolution policy: current schemas stay BACKWARD compatible with every released version
kept in `avro/history`, and the changes upstreams make map to compatible changes."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bridge.commands.schemas import check_history, export
from bridge.serde.avro import expanded_schema, named_schemas
from bridge.serde.compat import check, history_names, problems, released_versions
from bridge.streams.channels import CHANNELS
from bridge.streams.kinds import KINDS

VALUE_SCHEMAS = sorted(
    {k.schema for k in KINDS.values()}
    | {c.schema for c in CHANNELS.values()}
    | {"polybridge.State", "polybridge.DeadLetter", "polybridge.Gap"}
)


def test_every_topic_value_schema_has_released_versions_kept() -> None:
    assert history_names() == VALUE_SCHEMAS
    for name in VALUE_SCHEMAS:
        versions = [v for v, _ in released_versions(name)]
        assert versions and versions == list(range(1, len(versions) + 1)), name


@pytest.mark.parametrize("name", VALUE_SCHEMAS)
def test_current_schema_is_backward_compatible_with_every_kept_version(name: str) -> None:
    for version, old in released_versions(name):
        assert problems(expanded_schema(name), old) == [], f"{name} vs v{version}"
    assert check_history() == []


def test_the_latest_released_version_is_the_current_schema() -> None:
    # Every change is released: the newest kept version must equal what the bridge writes,
    # so its records decode by fingerprint and the exported `.avsc` files are the released ones.
    for name in VALUE_SCHEMAS:
        *_, (_, latest) = released_versions(name)
        assert latest == expanded_schema(name), name


DROPCOPY_RECORDS = sorted(k.schema for k in KINDS.values())


@pytest.mark.parametrize("name", DROPCOPY_RECORDS)
def test_v2_of_the_dropcopy_records_only_adds_unknown_fields_with_a_null_default(
    name: str,
) -> None:
    (_, v1), (_, v2), *_ = released_versions(name)
    added = v2["fields"][-1]
    assert added["name"] == "unknown_fields"
    assert added["type"] == ["null", {"type": "map", "values": "bytes"}]
    assert added["default"] is None
    assert {**v2, "fields": v2["fields"][:-1]} == v1
    # New readers read v1 data (the field takes its default); v1 readers skip the new field.
    assert check("FULL", v2, [v1]) == []


def _fields(schema: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """The field list of the record at `path` ("execution.order") inside an expanded schema."""
    node = schema
    for part in path.split(".") if path else []:
        (f,) = [f for f in node["fields"] if f["name"] == part]
        node = f["type"]
        if isinstance(node, list):
            node = next(t for t in node if isinstance(t, dict))
    return node["fields"]  # type: ignore[no-any-return]


EXECUTION = "polymarket.v1.dropcopy.ExecutionRecord"


def test_adding_an_upstream_field_as_optional_with_default_is_compatible() -> None:
    old = expanded_schema(EXECUTION)
    new = copy.deepcopy(old)
    _fields(new, "execution.order").append(
        {"name": "new_upstream_field", "type": ["null", "long"], "default": None}
    )
    assert check("BACKWARD", new, [old]) == []
    assert check("FULL", new, [old]) == []  # old readers skip it too


def test_adding_an_upstream_enum_symbol_is_compatible() -> None:
    old = expanded_schema(EXECUTION)
    new = copy.deepcopy(old)

    def first_enum(node: Any) -> dict[str, Any] | None:
        if isinstance(node, dict):
            if node.get("type") == "enum":
                return node
            for v in node.values():
                if (found := first_enum(v)) is not None:
                    return found
        if isinstance(node, list):
            for v in node:
                if (found := first_enum(v)) is not None:
                    return found
        return None

    enum = first_enum(new)
    assert enum is not None and "default" in enum  # old readers map it to the default
    enum["symbols"].insert(len(enum["symbols"]) - 1, "NEW_UPSTREAM_VALUE")
    assert check("BACKWARD", new, [old]) == []
    assert check("FORWARD", new, [old]) == []


def test_removing_a_field_without_default_or_renaming_one_is_refused() -> None:
    old = expanded_schema(EXECUTION)
    required = next(f for f in old["fields"] if "default" not in f)
    # Removing a required field: new data lacks it, and readers of the old version need it.
    removed = copy.deepcopy(old)
    removed["fields"] = [f for f in removed["fields"] if f["name"] != required["name"]]
    assert check("FORWARD", removed, [old])
    assert check("FULL", removed, [old])
    # Renaming: the new reader finds no such field in old data and has no default.
    renamed = copy.deepcopy(old)
    next(f for f in renamed["fields"] if f["name"] == required["name"])["name"] = "renamed"
    found = check("BACKWARD", renamed, [old])
    assert found == [
        "ExecutionRecord.renamed: reader field has no default and the writer does not have it"
    ]
    # Adding a required field (no default) is refused as well.
    added = copy.deepcopy(old)
    added["fields"].append({"name": "must_have", "type": "string"})
    assert check("BACKWARD", added, [old])


def test_export_writes_self_contained_schemas(tmp_path: Any) -> None:
    import fastavro

    paths = export(tmp_path)
    assert sorted(p.stem for p in paths) == VALUE_SCHEMAS
    for path in paths:
        fastavro.parse_schema(json.loads(path.read_text()))  # no outside references needed
    assert len(named_schemas()) > len(VALUE_SCHEMAS)
