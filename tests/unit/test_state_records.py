"""Each stream's state record on its own: a record that does not decode, or holds an
implausible time, is an error for its stream only, with the command that fixes it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from io import BytesIO

import fastavro
import pytest

from bridge.eos.state_records import StateRecords
from bridge.errors import StateRecordError
from bridge.kafka.state import STATE_SCHEMA, decode_state, encode_state, state_datum
from bridge.records import Position
from bridge.serde.avro import Serializer, SingleObjectFormat, load_schema
from bridge.timeutil import now_us

TOPIC = "p.polybridge.state"
SER = Serializer(STATE_SCHEMA, SingleObjectFormat().prefix(STATE_SCHEMA, TOPIC))
NOW = now_us()
YEAR_58000_US = (NOW // 1_000) * 1_000_000  # milliseconds read as seconds, in microseconds


def good(stream: str) -> bytes:
    return encode_state(stream, "predexon", Position(event_time_us=NOW - 1), "me", NOW, SER)


def poisoned(stream: str) -> bytes:
    """A record as versions before the plausibility check wrote it: the event time of
    milliseconds read as seconds."""
    datum = state_datum(stream, "predexon", Position(live_time_us=NOW), "me", NOW)
    return SER({**datum, "event_time": YEAR_58000_US})


def test_a_record_no_date_reader_decodes_is_still_read_as_longs() -> None:
    value = poisoned("predexon.crypto")
    with pytest.raises(OverflowError, match="out of range"):  # what stopped every stream
        fastavro.schemaless_reader(
            BytesIO(value[10:]), load_schema(STATE_SCHEMA), load_schema(STATE_SCHEMA)
        )
    assert decode_state(value).position.event_time_us == YEAR_58000_US


def test_only_the_bad_streams_fail_each_with_one_clear_line() -> None:
    records = StateRecords(TOPIC)
    records.put("predexon.orders", 0, good("predexon.orders"))
    records.put("predexon.crypto", 1, poisoned("predexon.crypto"))
    records.put("dropcopy.executions", 2, b"\x7bnot avro")
    assert records.entry("predexon.orders", NOW) is not None
    assert records.entry("predexon.none", NOW) is None
    with pytest.raises(StateRecordError) as crypto:
        records.entry("predexon.crypto", NOW)
    message = str(crypto.value)
    assert "\n" not in message
    assert "stream predexon.crypto (key 'predexon.crypto', p.polybridge.state offset 1)" in message
    assert re.search(r"its event_time \d+ us since the epoch .* is implausible", message)
    assert "polybridge state reset predexon.crypto" in message
    framing = r"unknown framing.*state reset dropcopy\.executions"
    with pytest.raises(StateRecordError, match=framing):
        records.entry("dropcopy.executions", NOW)
    # Reading every stream's position (`state show`) skips what does not decode and names it.
    assert set(records.entries()) == {"predexon.orders", "predexon.crypto"}
    assert set(records.problems(NOW)) == {"predexon.crypto", "dropcopy.executions"}


def test_a_newer_record_or_a_tombstone_replaces_a_bad_one() -> None:
    records = StateRecords(TOPIC)
    records.put("predexon.crypto", 0, poisoned("predexon.crypto"))
    records.put("predexon.crypto", 1, good("predexon.crypto"))
    assert records.entry("predexon.crypto", NOW) is not None
    records.put("predexon.crypto", 2, poisoned("predexon.crypto"))
    records.put("predexon.crypto", 3, None)  # `polybridge state reset`
    assert records.entry("predexon.crypto", NOW) is None and records.problems(NOW) == {}


def test_a_time_ahead_of_the_clock_is_implausible_when_read() -> None:
    value = encode_state("s", "dropcopy", Position(event_time_us=NOW), "me", NOW, SER)
    records = StateRecords(TOPIC)
    records.put("s", 0, value)
    assert records.entry("s", NOW) is not None
    with pytest.raises(StateRecordError, match=r"event_time .* is implausible"):
        records.entry("s", NOW - 2 * 86_400_000_000)  # the clock went back two days


def test_the_state_record_never_holds_an_implausible_time() -> None:
    """The writer's side: the times of a position are written only when plausible, so
    every state record decodes with a date reader."""
    position = Position(resume_token=b"t", event_time_us=YEAR_58000_US, live_time_us=5)
    value = encode_state("s", "dropcopy", position, "me", NOW, SER)
    datum = SER.decode(value)  # fastavro with logical types
    assert datum["event_time"] is None and datum["live_time"] is None
    assert datum["committed_at"] == datetime.fromtimestamp(NOW / 1e6, UTC)
    assert decode_state(value).position.resume_token == b"t"
