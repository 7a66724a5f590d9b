"""Wall-clock time in the unit every record uses: microseconds since the Unix epoch."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any


def now_us() -> int:
    return time.time_ns() // 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(value: Any) -> Any:
    """fastavro decodes timestamp-micros to an aware datetime: back to epoch microseconds."""
    if value is None or isinstance(value, int):
        return value
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
