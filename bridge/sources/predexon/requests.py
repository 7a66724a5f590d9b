"""What a Predexon connection asks the server, and how it tells the replies apart.

The protocol has no request id, so replies are matched by arrival order: `Exchange` keeps a
single request in flight, which makes that matching unambiguous. The error codes a reply
may carry sort into: auth (every subscription of the connection fails), plan and filter
errors (the subscription concerned fails), and codes a later attempt may not meet (retried
on the same connection after a backoff delay).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection

from bridge.errors import AuthError, BridgeError, UpstreamError
from bridge.serde.exact_json import dumps
from bridge.sources.predexon.subscription import Handle, SubscriptionSpec
from bridge.streams.channels import CHANNELS

AUTH_CODES = frozenset({"AUTH_FAILED", "AUTH_REQUIRED", "INVALID_API_KEY"})
PLAN_CODES = frozenset(
    {
        "PLAN_REQUIRED",
        "WILDCARD_NOT_ALLOWED",
        "SUBSCRIPTION_LIMIT",
        "ITEMS_PER_SUB_LIMIT",
        "ITEMS_LIMIT",
        "INVALID_FILTERS",
    }
)
RETRY_CODES = frozenset({"RATE_LIMIT", "CONNECTION_LIMIT", "WILDCARD_CONNECTION_LIMIT"})
"""Errors a later attempt may not meet (a limit held by our own connection being torn
down, a rate window): retried on the same connection after a backoff delay."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    handle: Handle
    action: ClassVar[str] = "subscribe"


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    handle: Handle
    subscription_id: str
    action: ClassVar[str] = "unsubscribe"


@dataclass(frozen=True, slots=True)
class Update:
    """Replace the subscription's filters (`update`, or unsubscribe and subscribe again
    where the channel cannot update)."""

    handle: Handle
    filters_json: str
    """The new filters, serialized when asked for: later changes to the caller's dict do
    not reach the request."""
    action: ClassVar[str] = "update"


Request = Subscribe | Unsubscribe | Update


def subscribe_body(spec: SubscriptionSpec) -> dict[str, Any]:
    channel = CHANNELS[spec.channel]
    return {
        "action": "subscribe",
        "platform": channel.platform,
        "version": 1,
        "type": channel.type,
        "filters": spec.filters,
    }


class RequestTimeout(Exception):
    """The server left a request unanswered: the session ends and the connection tries
    again (with backoff: a server that stops answering is sick, not dropped)."""

    reason = "request_timeout"


class Refused(Exception):
    """The server refused the API key: every subscription of the connection fails."""

    def __init__(self, error: BridgeError) -> None:
        super().__init__(str(error))
        self.error = error


def auth_refused(code: str, described: str) -> Refused:
    return Refused(AuthError(f"predexon error {code} for {described}", reason=code.lower()))


def request_refused(request: Request, code: str, message: str) -> BridgeError:
    """A plan or filter error, or anything undocumented: the subscription cannot go on as
    configured (the others on the connection are not affected)."""
    error = AuthError if code in PLAN_CODES else UpstreamError
    return error(
        f"predexon refused {request.action} for {request.handle.spec.describe()}: {code} {message}",
        reason=code.lower(),
        retriable=False,
    )


class Exchange:
    """The connection's queue of requests and the one request in flight."""

    def __init__(self, timeout_s: float, acked: Callable[[Handle, str, int], None]) -> None:
        self.timeout_s = timeout_s
        self.acked = acked
        """Called with the handle, its subscription id and the receive time of the ack."""
        self.queue: asyncio.Queue[Request] = asyncio.Queue()
        self.reply: asyncio.Future[dict[str, Any]] | None = None
        self.subscribing: Handle | None = None
        """The handle whose subscribe request awaits its reply."""

    def put(self, request: Request) -> None:
        self.queue.put_nowait(request)

    async def next(self) -> Request:
        return await self.queue.get()

    def reset(self) -> None:
        """The session ended: requests of the old session are void (subscriptions are
        renewed on connect) and a pending reply never comes."""
        if self.reply is not None and not self.reply.done():
            self.reply.cancel()
        self.reply = None
        self.queue = asyncio.Queue()

    def answer(self, message: dict[str, Any], received: int) -> bool:
        """Hand an `ack` or `error` to the request in flight; False when none is."""
        if self.reply is None or self.reply.done():
            return False
        handle = self.subscribing
        if handle is not None and message.get("type") == "ack":
            # Registered here, in the reader, not when the request loop next runs: the
            # frames right behind an ack (orderbook snapshots) must already route to it.
            self.acked(handle, str(message.get("subscription_id")), received)
        self.reply.set_result(message)
        return True

    async def ask(
        self, ws: ClientConnection, body: dict[str, Any], subscribing: Handle | None = None
    ) -> dict[str, Any]:
        """Send one request and wait for its reply; raises `RequestTimeout`."""
        self.reply = asyncio.get_running_loop().create_future()
        self.subscribing = subscribing
        await ws.send(dumps(body, sort_keys=False))
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.reply
        except TimeoutError:
            raise RequestTimeout from None
        finally:
            self.reply = None
            self.subscribing = None
