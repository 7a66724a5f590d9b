"""Per-stream journals of serialized records, and the resume tokens that point into them.

A journal holds one stream's records in order. Each entry has a sequence number (1, 2, 3,
... per stream, never reused), an event time in microseconds (non-decreasing along the
journal), a symbol, the firms it belongs to, and the record's serialized bytes already framed
as field 2 of the stream's response message, so a response is a join of byte strings.

A **position** is the sequence number of the last record examined: 0 = before the first
record; resuming from position P returns the records with sequence > P. Resume tokens encode
(stream, position, issue time) with an HMAC so clients cannot forge or edit them.

Retention drops the oldest entries (by count and/or event-time age). A token whose position is
before the retained range (some record after it is gone) cannot be served, nor can a
resume_time at or before the event time of a dropped record.

Journals are used from the simulator's event loop only; `changed()` gives an
`asyncio.Event` that is set after each `notify()`.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import hmac
import struct
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from bridge.sim.market import STREAMS

# Response messages of all four streams keep their record list in field 2
# (length-delimited): tag byte (2 << 3) | 2.
_RECORD_TAG = b"\x12"
_TOKEN_TAG = b"\x0a"
# Trim only when this many entries beyond the retention are held, so that deleting from the
# front of the lists (O(n)) is amortised over many appends.
_TRIM_SLACK = 1024


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def frame_record(payload: bytes) -> bytes:
    """`payload` as field 2 of a response message."""
    return _RECORD_TAG + encode_varint(len(payload)) + payload


def frame_token(token: bytes) -> bytes:
    """`token` as field 1 (resume_token) of a response message."""
    return _TOKEN_TAG + encode_varint(len(token)) + token


def unframe_record(framed: bytes) -> bytes:
    """Inverse of `frame_record`."""
    i = 1
    while framed[i] & 0x80:
        i += 1
    return framed[i + 1 :]


class InvalidToken(Exception):
    """The bytes are not a resume token this simulator issued (or for another stream)."""


@dataclass(frozen=True, slots=True)
class ResumeToken:
    stream: str
    position: int
    issued_us: int


class TokenCodec:
    """Opaque resume tokens: version, stream, position, issue time, truncated HMAC-SHA256."""

    _LAYOUT = struct.Struct(">BBQQ")
    _VERSION = 1
    _MAC_BYTES = 12  # 96 bits: ample against forgery for a test double, keeps tokens small

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[: self._MAC_BYTES]

    def encode(self, stream: str, position: int, issued_us: int) -> bytes:
        body = self._LAYOUT.pack(self._VERSION, STREAMS.index(stream), position, issued_us)
        return body + self._mac(body)

    def decode(self, token: bytes) -> ResumeToken:
        size = self._LAYOUT.size
        if len(token) != size + self._MAC_BYTES:
            raise InvalidToken("resume_token is malformed")
        body, mac = token[:size], token[size:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise InvalidToken("resume_token was not issued by this server")
        version, stream_index, position, issued_us = self._LAYOUT.unpack(body)
        if version != self._VERSION or stream_index >= len(STREAMS):
            raise InvalidToken("resume_token is malformed")
        return ResumeToken(STREAMS[stream_index], position, issued_us)


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history a journal keeps; None = unlimited."""

    max_records: int | None = None
    max_age_s: float | None = None


class Journal:
    """One stream's records; see the module docstring for positions and retention."""

    def __init__(self, stream: str, retention: Retention = Retention()) -> None:
        self.stream = stream
        self.retention = retention
        self._first = 1  # sequence number of _framed[0]
        self._times: list[int] = []
        self._symbols: list[str] = []
        self._firms: list[tuple[str, ...]] = []
        self._framed: list[bytes] = []
        self._dropped_until_us: int | None = None  # event time of the newest dropped record
        # Latest dropped record per symbol: the base a state snapshot is rebuilt from.
        self._dropped_latest: dict[str, bytes] = {}
        self._changed = asyncio.Event()

    # -- writing ---------------------------------------------------------------------------

    def newest_selection(self) -> tuple[str, tuple[str, ...]]:
        """(symbol, firms) of the newest record: who a record appended like it reaches."""
        return self._symbols[-1], self._firms[-1]

    def append(self, time_us: int, symbol: str, firms: tuple[str, ...], payload: bytes) -> int:
        """Add one serialized record; returns its sequence number. Call `notify()` after."""
        if self._times and time_us < self._times[-1]:
            time_us = self._times[-1]  # event times never go backwards along a journal
        self._times.append(time_us)
        self._symbols.append(symbol)
        self._firms.append(firms)
        self._framed.append(frame_record(payload))
        return self.head

    def notify(self) -> None:
        """Wake every subscriber waiting in `changed()`."""
        self._changed.set()
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        """An event set at the next `notify()`."""
        return self._changed

    def trim(self, now_us: int) -> None:
        """Drop entries beyond the retention (count with some slack, or age)."""
        drop = 0
        limit = self.retention.max_records
        if limit is not None and len(self._times) > limit + _TRIM_SLACK:
            drop = len(self._times) - limit
        if self.retention.max_age_s is not None:
            cutoff = now_us - int(self.retention.max_age_s * 1_000_000)
            drop = max(drop, bisect.bisect_left(self._times, cutoff))
        if drop:
            self._dropped_until_us = self._times[drop - 1]
            for symbol, framed in zip(self._symbols[:drop], self._framed[:drop], strict=True):
                self._dropped_latest[symbol] = framed
            del self._times[:drop], self._symbols[:drop], self._firms[:drop]
            del self._framed[:drop]
            self._first += drop

    # -- positions -------------------------------------------------------------------------

    @property
    def head(self) -> int:
        """Position after the newest record (its sequence number; 0 when empty)."""
        return self._first + len(self._times) - 1

    @property
    def first_retained(self) -> int:
        """Sequence number of the oldest record still held."""
        return self._first

    def covers(self, position: int) -> bool:
        """True when every record after `position` is still held (and position is not ahead)."""
        return self._first - 1 <= position <= self.head

    def position_for_time(self, time_us: int) -> int | None:
        """Position just before the first record with event time >= time_us, or None when a
        record at or after that time has been dropped by retention."""
        if self._dropped_until_us is not None and time_us <= self._dropped_until_us:
            return None
        return self._first - 1 + bisect.bisect_left(self._times, time_us)

    def time_at(self, position: int) -> int | None:
        """Event time of record `position`, if held."""
        index = position - self._first
        return self._times[index] if 0 <= index < len(self._times) else None

    # -- reading ---------------------------------------------------------------------------

    def read(
        self,
        position: int,
        symbols: Collection[str],
        firms: frozenset[str] | None,
        max_records: int,
        max_bytes: int,
    ) -> tuple[list[bytes], int]:
        """Framed records after `position` matching the filters, up to the limits.

        `symbols` empty = all; `firms` None = no firm filter, else a record matches when one
        of its firms is in `firms`. Returns (framed records, position of the last record
        examined): the new position covers skipped records too.
        """
        start = max(position - self._first + 1, 0)
        end = len(self._framed)
        framed = self._framed
        if not symbols and firms is None:
            stop = min(end, start + max_records)
            out = framed[start:stop]
            size = 0
            for i, item in enumerate(out):
                size += len(item)
                if size > max_bytes and i > 0:
                    return out[:i], self._first + start + i - 1
            return out, self._first + stop - 1
        out = []
        size = 0
        index = start
        sym_list, firm_list = self._symbols, self._firms
        while index < end:
            if (not symbols or sym_list[index] in symbols) and (
                firms is None or not firms.isdisjoint(firm_list[index])
            ):
                item = framed[index]
                if out and size + len(item) > max_bytes:
                    break
                out.append(item)
                size += len(item)
                if len(out) >= max_records:
                    index += 1
                    break
            index += 1
        return out, self._first + index - 1

    def records(
        self, symbols: Collection[str] = (), firms: frozenset[str] | None = None
    ) -> Iterator[tuple[int, int, bytes]]:
        """(sequence, event time, serialized record) of every held record matching."""
        for index, framed in enumerate(self._framed):
            if symbols and self._symbols[index] not in symbols:
                continue
            if firms is not None and firms.isdisjoint(self._firms[index]):
                continue
            yield self._first + index, self._times[index], unframe_record(framed)

    def previous_matching(
        self, position: int, symbols: Collection[str], firms: frozenset[str] | None, count: int
    ) -> list[bytes]:
        """Up to `count` framed records at or before `position` that match, oldest first."""
        found: list[bytes] = []
        index = min(position - self._first, len(self._framed) - 1)
        while index >= 0 and len(found) < count:
            if (not symbols or self._symbols[index] in symbols) and (
                firms is None or not firms.isdisjoint(self._firms[index])
            ):
                found.append(self._framed[index])
            index -= 1
        found.reverse()
        return found

    def latest_per_symbol(self, position: int, symbols: Collection[str]) -> list[bytes]:
        """Framed newest record per symbol as of `position` (records <= position), sorted by
        symbol: the state snapshot the instrument stream sends on connect."""
        state = dict(self._dropped_latest)
        stop = min(max(position - self._first + 1, 0), len(self._framed))
        for index in range(stop):
            state[self._symbols[index]] = self._framed[index]
        return [state[s] for s in sorted(state) if not symbols or s in symbols]
