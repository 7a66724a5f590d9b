"""JSON logs: one parseable object per line, with the messages' key=value context."""

from __future__ import annotations

import io
import json
import logging

from bridge.logs import JsonFormatter, context_fields


def _capture() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test_logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_every_line_parses_and_carries_context() -> None:
    logger, out = _capture()
    logger.warning("stream=%s gap from=%s to=%s reason=%s", "dropcopy.executions", 1, 2, "x")
    logger.info('multi\nline message with "quotes" and a tab\t and unicode é')
    logger.error("stream=%s stopped: %s", "predexon.crypto", "HTTP 401 (API key refused)")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("stream=%s crashed", "dropcopy.trades")
    logger.info("level=spoofed message=spoofed time=now logger=x")
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    entries = [json.loads(line) for line in lines]
    assert entries[0]["stream"] == "dropcopy.executions"
    assert entries[0]["reason"] == "x" and entries[0]["from"] == "1"
    assert entries[1]["message"].startswith("multi\nline")
    assert entries[2]["stream"] == "predexon.crypto" and entries[2]["level"] == "ERROR"
    assert "ValueError: boom" in entries[3]["exception"]
    # Context never overrides the formatter's own fields.
    assert entries[4]["level"] == "INFO" and entries[4]["logger"] == "test_logs"


def test_context_fields() -> None:
    assert context_fields("predexon connection 1 lost reason=close_1006 retry_in=0.50s") == {
        "reason": "close_1006",
        "retry_in": "0.50s",
    }
    assert context_fields("no context here; a=b") == {"a": "b"}
    assert context_fields("stream=a (x=1, y=2)") == {"stream": "a", "y": "2"}
