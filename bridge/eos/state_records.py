"""The newest record per key of the state topic, each decoded on its own.

The state topic is shared by every stream, and one stream's record that does not decode, or
holds a time no position may hold, must stop that stream only. So records are kept as
bytes, decoded one key at a time (and once: the result is kept until the key is written
again), and a bad one is an error only for the stream that asks for its own position.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import BridgeError, StateRecordError
from bridge.kafka.state import StateEntry, decode_state, implausible_time

_BACKFILL_SUFFIX = "/backfill"
"""Keys `<stream id>/backfill` hold a stream's backfill cursor."""


@dataclass(frozen=True, slots=True)
class _Stored:
    offset: int
    value: bytes


class StateRecords:
    """Per key: the newest value (a tombstone removes the key), decoded when asked."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._stored: dict[str, _Stored] = {}
        self._decoded: dict[str, StateEntry | str] = {}
        """Per key: its entry, or why its record does not decode."""

    def put(self, key: str, offset: int, value: bytes | None) -> None:
        """The key's newest record (None: a tombstone)."""
        self._decoded.pop(key, None)
        if value is None:
            self._stored.pop(key, None)
        else:
            self._stored[key] = _Stored(offset, value)

    def _decode(self, key: str) -> StateEntry | str | None:
        stored = self._stored.get(key)
        if stored is None:
            return None
        found = self._decoded.get(key)
        if found is None:
            try:
                found = decode_state(stored.value)
            except BridgeError as exc:
                found = str(exc)
            self._decoded[key] = found
        return found

    def entry(self, key: str, now_us: int) -> StateEntry | None:
        """The key's entry (None: none stored). Raises `StateRecordError` when its record
        does not decode or holds an implausible time; no other key is decoded."""
        problem = self._problem(key, now_us)
        if problem is not None:
            raise StateRecordError(problem)
        found = self._decode(key)
        assert found is None or isinstance(found, StateEntry)
        return found

    def entries(self) -> dict[str, StateEntry]:
        """Every key whose record decodes (`problems` names the others)."""
        out = {}
        for key in list(self._stored):
            found = self._decode(key)
            if isinstance(found, StateEntry):
                out[key] = found
        return out

    def problems(self, now_us: int) -> dict[str, str]:
        """Per key whose record cannot be used: the error its stream stops with."""
        found = {key: self._problem(key, now_us) for key in list(self._stored)}
        return {key: problem for key, problem in found.items() if problem is not None}

    def _problem(self, key: str, now_us: int) -> str | None:
        found = self._decode(key)
        if found is None:
            return None
        why = found if isinstance(found, str) else implausible_time(found, now_us)
        if why is None:
            return None
        return unusable(key, self.topic, self._stored[key].offset, why)


def unusable(key: str, topic: str, offset: int, why: str) -> str:
    """The one line a stream stops with when its state record cannot be used."""
    stream_id = key.removesuffix(_BACKFILL_SUFFIX)
    return (
        f"the state record of stream {stream_id} (key {key!r}, {topic} offset {offset}) "
        f"cannot be used: {why}. Only this stream stops; to start it again from its "
        f"configured start, run: polybridge state reset {stream_id} --config <this "
        "configuration> (or add --to-time T to replay from T)"
    )
