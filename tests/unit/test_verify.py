"""The ground-truth side of the end-to-end comparisons: mapped once as the journal grows."""

from __future__ import annotations

from bridge.verify import ExpectedDropCopyRows, expected_dropcopy_rows
from tests.bridge_harness import ALL_KINDS
from tests.unit.test_sim_market import generate


def journals(count: int) -> dict[str, list[object]]:
    """About `count` generated messages, by stream (stream names are the kinds' names)."""
    out: dict[str, list[object]] = {kind: [] for kind in ALL_KINDS}
    for record in generate(11, count):
        out[record.stream].append(record.message)
    return out


def test_a_growing_journal_maps_to_what_mapping_it_whole_gives() -> None:
    whole = journals(6_000)
    for kind in ALL_KINDS:
        messages = whole[kind]
        assert messages, kind
        incremental = ExpectedDropCopyRows(kind, f"dropcopy.{kind}")
        for end in (0, 1, len(messages) // 3, len(messages) // 3, len(messages)):
            expected = expected_dropcopy_rows(kind, f"dropcopy.{kind}", messages[:end])
            assert incremental(messages[:end]) == expected, (kind, end)


def test_a_journal_trimmed_at_its_start_is_mapped_afresh() -> None:
    messages = journals(3_000)["executions"]
    incremental = ExpectedDropCopyRows("executions", "dropcopy.executions")
    incremental(messages[:100])
    trimmed = messages[50:200]
    assert incremental(trimmed) == expected_dropcopy_rows(
        "executions", "dropcopy.executions", trimmed
    )
    assert incremental(messages[:10]) == expected_dropcopy_rows(
        "executions", "dropcopy.executions", messages[:10]
    )
