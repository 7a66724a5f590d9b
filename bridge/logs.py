"""Log setup for the CLI. The library itself only calls `logging.getLogger(__name__)`."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# The bridge's messages carry their context as `key=value` words ("stream=dropcopy.executions
# gap from=... reason=..."): readable in text logs, and lifted into JSON fields below so log
# search can filter on them without parsing messages.
_CONTEXT = re.compile(r"(?:^|\s)([a-z_][a-z0-9_.]*)=([^\s,;()]+)")


def context_fields(message: str) -> dict[str, str]:
    """The `key=value` words of a message (first occurrence of each key wins)."""
    fields: dict[str, str] = {}
    for key, value in _CONTEXT.findall(message):
        fields.setdefault(key, value)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the message's `key=value`
    context as top-level fields (never overriding the four above), exception text if any."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, str] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in context_fields(message).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def error_line(message: str, fmt: str) -> str:
    """The CLI's final error line: as it is, or one JSON entry (level ERROR) for `json`."""
    if fmt != "json":
        return message
    record = logging.makeLogRecord(
        {"name": "bridge.cli", "levelno": logging.ERROR, "levelname": "ERROR", "msg": message}
    )
    return JsonFormatter().format(record)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    from bridge.kafka.client_log import flush_at_exit

    flush_at_exit()
