"""docs/topics.md's topic schema tables are generated from the `.avsc` files and up to date."""

from __future__ import annotations

from tools.schema_table import BEGIN, END, TOPICS_DOC, render, topics


def test_topics_doc_schema_tables_match_the_avsc_files() -> None:
    text = TOPICS_DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == render(), "run: .venv/bin/python tools/schema_table.py --write"


def test_every_topic_has_a_table_with_its_key() -> None:
    table = render()
    for topic, schema, key in topics():
        assert f"**`{topic}`** — value `{schema}`, key {key}" in table
