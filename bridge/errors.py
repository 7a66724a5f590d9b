"""The one exception tree of polybridge.

    BridgeError                  root; `retriable` tells reconnect logic what to do
    ├── ConfigError              bad configuration: which key, which value, what to do
    ├── UpstreamError            an upstream call failed (gRPC status, WebSocket close/error)
    │   └── AuthError            credentials refused or missing scope / plan: not retriable
    ├── KafkaError               a Kafka operation failed
    │   └── FencedError          another instance owns this stream's transactional id
    ├── StateRecordError         a stream's state record is unusable: that stream stops
    └── MappingError             one upstream message could not be mapped: a dead letter

Third-party exceptions are translated into these at one boundary each (grpc in
`sources/dropcopy/source.py`, websockets in `sources/predexon/connection.py`, librdkafka in
`kafka/producer.py`) with `raise ... from`, so callers never see library types.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error polybridge raises on purpose."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ConfigError(BridgeError):
    """Configuration is invalid; the message names the key and the value's problem."""


class UpstreamError(BridgeError):
    """An upstream call failed; `reason` is a short stable label for metrics and logs."""

    retriable = True

    def __init__(self, message: str, *, reason: str, retriable: bool | None = None) -> None:
        super().__init__(message, retriable=retriable)
        self.reason = reason


class AuthError(UpstreamError):
    """Credentials were refused or lack a scope or plan; retrying will not help."""

    retriable = False


class KafkaError(BridgeError):
    """A Kafka operation failed; `retriable` means abort the transaction and resume."""


class FencedError(KafkaError):
    """Another bridge instance took over this stream (same transactional.id)."""


class StateRecordError(BridgeError):
    """A stream's record in the state topic does not decode or holds an implausible time:
    that stream cannot resume and stops until `polybridge state reset`; others run."""


class MappingError(BridgeError):
    """An upstream message could not be turned into a record; it becomes a dead letter."""
