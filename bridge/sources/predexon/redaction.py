"""Keeping the Predexon API key, which its URL carries, out of every message and log line."""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit


def api_key_of(url: str) -> str | None:
    """The key carried by a Predexon URL (`/v1/<KEY>` or `?api_key=`)."""
    parts = urlsplit(url)
    match = re.fullmatch(r"/v1/([^/]+)", parts.path)
    if match:
        return match.group(1)
    values = parse_qs(parts.query).get("api_key")
    return values[0] if values else None


def redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


class RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """Hands websockets a logger that removes the API key from every line it logs."""

    def __init__(self, logger: logging.Logger, secret: str) -> None:
        super().__init__(logger, {})
        self.secret = secret

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            kwargs.pop("extra", None)
            self.logger.log(level, "%s", redact(text, self.secret), **kwargs)
