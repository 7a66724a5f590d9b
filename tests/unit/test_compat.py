"""The Avro schema-resolution checker (`bridge.serde.compat`) rule by rule."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.serde.compat import check, problems


def record(*fields: dict[str, Any], name: str = "R", namespace: str = "t") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": namespace, "fields": list(fields)}


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    ],
)
def test_promotions_the_spec_allows_are_compatible(writer: str, reader: str) -> None:
    assert problems(record(field("x", reader)), record(field("x", writer))) == []


@pytest.mark.parametrize(
    ("writer", "reader"), [("long", "int"), ("double", "float"), ("string", "int")]
)
def test_narrowing_or_unrelated_types_are_refused(writer: str, reader: str) -> None:
    found = problems(record(field("x", reader)), record(field("x", writer)))
    assert found and "R.x" in found[0]


def test_new_field_needs_a_default_removed_field_is_ignored() -> None:
    old = record(field("a", "int"), field("gone", "string"))
    with_default = record(field("a", "int"), field("b", ["null", "string"], default=None))
    without_default = record(field("a", "int"), field("b", "string"))
    assert problems(with_default, old) == []
    assert problems(without_default, old) == [
        "R.b: reader field has no default and the writer does not have it"
    ]


def test_renamed_field_is_refused_unless_aliased() -> None:
    old = record(field("price", "long"))
    assert problems(record(field("px", "long")), old)
    assert problems(record(field("px", "long", aliases=["price"])), old) == []


def test_enum_symbols_added_need_nothing_removed_need_a_default() -> None:
    def enum(symbols: list[str], **extra: Any) -> dict[str, Any]:
        return record(field("e", {"type": "enum", "name": "E", "symbols": symbols, **extra}))

    assert problems(enum(["A", "B", "C"]), enum(["A", "B"])) == []
    assert problems(enum(["A"]), enum(["A", "B"]))
    assert problems(enum(["A", "U"], default="U"), enum(["A", "B"])) == []


def test_unions_writer_branches_must_all_resolve_and_reader_unions_pick_a_branch() -> None:
    assert problems(record(field("x", ["null", "long"])), record(field("x", "int"))) == []
    assert (
        problems(
            record(field("x", ["null", "long", "string"])), record(field("x", ["null", "int"]))
        )
        == []
    )
    found = problems(record(field("x", "long")), record(field("x", ["null", "long"])))
    assert found == ["R.x: writer type null cannot be read as long"]
    assert problems(record(field("x", ["null", "int"])), record(field("x", "string")))


def test_arrays_maps_fixed_and_named_references() -> None:
    inner = {"type": "record", "name": "I", "fields": [field("v", "int")]}
    old = record(
        field("a", {"type": "array", "items": inner}), field("m", {"type": "map", "values": "t.I"})
    )
    new = record(
        field("a", {"type": "array", "items": {**inner, "fields": [field("v", "long")]}}),
        field("m", {"type": "map", "values": "t.I"}),
    )
    assert problems(new, old) == []
    narrowed = record(
        field("a", {"type": "array", "items": inner}),
        field("m", {"type": "map", "values": "string"}),
    )
    assert problems(narrowed, old) == ["R.m{}: writer type record cannot be read as string"]
    fixed = lambda size: record(field("f", {"type": "fixed", "name": "F", "size": size}))  # noqa: E731
    assert problems(fixed(16), fixed(16)) == []
    assert problems(fixed(8), fixed(16))


def test_recursive_types_terminate() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [field("v", "int"), field("next", ["null", "Node"], default=None)],
    }
    assert problems(node, node) == []


def test_levels_backward_forward_full_and_transitive() -> None:
    v1 = record(field("a", "int"))
    v2 = record(field("a", "int"), field("b", "int", default=0))
    v3 = record(field("b", "int", default=0))  # drops `a`, which v1 required
    assert check("BACKWARD", v3, [v1, v2]) == []
    assert check("FORWARD", v3, [v2]) != []  # v2 readers need `a`, v3 data lacks it
    assert check("FULL", v2, [v1]) == []
    assert check("NONE", record(field("z", "string")), [v1]) == []
    # Transitive: v4 requires `c` (no default), fine against nothing, refused against all.
    v4 = record(field("a", "int"), field("c", "int"))
    assert check("BACKWARD_TRANSITIVE", v4, [v1, v2])
    with pytest.raises(ValueError, match="unknown compatibility level"):
        check("SIDEWAYS", v1, [v1])


def test_logical_types_resolve_as_their_underlying_type() -> None:
    micros = {"type": "long", "logicalType": "timestamp-micros"}
    assert problems(record(field("t", micros)), record(field("t", "long"))) == []
    assert (
        problems(record(field("t", ["null", micros], default=None)), record(field("t", micros)))
        == []
    )
