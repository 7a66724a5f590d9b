"""What the stream's topic already holds for a window: event ids, and for upstreams whose
REST rows carry other ids than the stream's records, natural keys counted per record.

Predexon REST rows have no `log_index`, so a backfilled fill never has the event id of the
live record of the same fill (`bridge.backfill.predexon_history`). They match on a natural
key instead: (tx_hash, order_hash) for a confirmed fill, (event type, tx_hash, user) for
activity. Two fills of one order in one transaction share the key, so keys are counted: a
REST row is dropped while the topic holds more records of its key than rows already matched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from bridge.records import Record
from bridge.serde.decode import Decoder

NaturalKey = Callable[[bytes], str | None]
"""A record value -> its natural key (None: the record has none; ids alone match it)."""


class Known:
    """The records of a window the topic holds, to drop what REST returns again."""

    def __init__(
        self, records: Iterable[tuple[str, bytes | None]], natural: NaturalKey | None = None
    ) -> None:
        self._natural = natural
        self.ids: set[str] = set()
        self.keys: Counter[str] = Counter()
        for event_id, value in records:
            self.ids.add(event_id)
            key = self._key(value)
            if key is not None:
                self.keys[key] += 1

    def _key(self, value: bytes | None) -> str | None:
        if self._natural is None or value is None:
            return None
        try:
            return self._natural(value)
        except Exception:  # a value we cannot read has no natural key
            return None

    def holds(self, record: Record) -> bool:
        """True when the topic holds `record` already (it is dropped); else it is
        remembered as written from now on."""
        key = self._key(record.value)
        matched = record.event_id in self.ids
        if key is not None and self.keys[key] > 0:
            self.keys[key] -= 1
            matched = True
        if not matched:
            self.ids.add(record.event_id)
        return matched


def predexon_natural_key(channel: str, decoder: Decoder) -> NaturalKey | None:
    """The natural key of the records of a Predexon channel backfilled from REST."""
    if channel == "orders":

        def fill(value: bytes) -> str | None:
            datum: Any = decoder.decode(value).datum
            if datum.get("event_type") != "order_filled" or datum.get("status") == "pending":
                return None
            return f"{datum.get('tx_hash')}|{datum.get('order_hash')}"

        return fill
    if channel == "activity":

        def activity(value: bytes) -> str | None:
            datum: Any = decoder.decode(value).datum
            return f"{datum.get('event_type')}|{datum.get('tx_hash')}|{datum.get('user')}"

        return activity
    return None


def natural_key_of(upstream: str, kind: str, decoder: Decoder) -> NaturalKey | None:
    """The natural key of a stream's records (None: event ids match REST rows)."""
    return predexon_natural_key(kind, decoder) if upstream == "predexon" else None
