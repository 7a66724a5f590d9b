"""How an instance leaves the stream group: the decision in `Membership._leave`, with the
group's description given (the whole flow runs against Kafka in
tests/fault/test_static_membership.py, where the order of events is the broker's)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.cluster import membership as membership_mod
from bridge.cluster.membership import Membership
from bridge.errors import ConfigError


class FakeConsumer:
    def __init__(self) -> None:
        self.unsubscribed = False
        self.closed = False

    def unsubscribe(self) -> None:
        self.unsubscribed = True

    def poll(self, timeout: float) -> None:
        return None

    def assignment(self) -> list[Any]:
        return []

    def close(self) -> None:
        self.closed = True


def member(member_id: str, instance: str) -> SimpleNamespace:
    return SimpleNamespace(member_id=member_id, group_instance_id=instance, client_id="c")


def joined(
    monkeypatch: pytest.MonkeyPatch,
    members: list[SimpleNamespace],
    on_revoke: Callable[[list[str]], None] = lambda ids: None,
    on_lost: Callable[[list[str]], None] = lambda ids: None,
    on_fatal: Callable[[BaseException], None] = lambda error: None,
) -> Membership:
    """Instance `twin` (member `mine`) of a group whose description lists `members`."""
    monkeypatch.setattr(
        membership_mod, "describe_group", lambda *a, **k: SimpleNamespace(members=members)
    )
    group = Membership(
        {"bootstrap.servers": "127.0.0.1:1"},
        group_id="app",
        topic="app.polybridge.streams",
        stream_ids=["a", "b"],
        instance_id="run",
        group_instance_id="twin",
        session_timeout_ms=10_000,
        on_assign=lambda ids: None,
        on_revoke=on_revoke,
        on_lost=on_lost,
        on_fatal=on_fatal,
    )
    group._member_id = "mine"
    return group


def leave_with(monkeypatch: pytest.MonkeyPatch, members: list[SimpleNamespace]) -> tuple:
    fatal: list[BaseException] = []
    group = joined(monkeypatch, members, on_fatal=fatal.append)
    consumer = FakeConsumer()
    group._leave(consumer)  # type: ignore[arg-type]
    return consumer, fatal


def test_an_instance_whose_name_was_taken_stops_with_that_error_without_leaving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its streams were fenced by the newer instance's producers before the group told it
    (FENCED_INSTANCE_ID not seen yet): the group lists its name under another member."""
    consumer, fatal = leave_with(monkeypatch, [member("newer", "twin")])
    assert len(fatal) == 1 and isinstance(fatal[0], ConfigError)
    assert "cluster.instance_id 'twin'" in str(fatal[0]) and "this one stops" in str(fatal[0])
    assert not consumer.unsubscribed  # a LeaveGroup under its name is not its to send
    assert consumer.closed


def test_an_instance_with_others_present_leaves_and_alone_keeps_its_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer, fatal = leave_with(monkeypatch, [member("mine", "twin"), member("x", "other")])
    assert fatal == [] and consumer.unsubscribed and consumer.closed
    consumer, fatal = leave_with(monkeypatch, [member("mine", "twin")])
    assert fatal == [] and not consumer.unsubscribed and consumer.closed


@pytest.mark.parametrize(
    ("members", "called"),
    [
        ([member("mine", "twin"), member("x", "other")], "on_revoke"),  # hand over
        ([member("mine", "twin")], "on_lost"),  # alone: stop, no one to hand over to
    ],
)
def test_the_streams_revoked_at_close_are_handed_over_only_to_other_members(
    monkeypatch: pytest.MonkeyPatch, members: list[SimpleNamespace], called: str
) -> None:
    """Leaving revokes through `unsubscribe`, a close without leaving through `close`:
    either way librdkafka calls the revoke callback, but only the first has a next owner
    (a Predexon stream handing over alone would run on for `handover_s` for nobody)."""
    monkeypatch.setattr(membership_mod, "LEAVE_S", 0.1)  # the group keeps listing it here
    calls: list[tuple[str, list[str]]] = []
    group = joined(
        monkeypatch,
        members,
        on_revoke=lambda ids: calls.append(("on_revoke", ids)),
        on_lost=lambda ids: calls.append(("on_lost", ids)),
    )
    group.owned = {"a", "b"}
    partitions = [SimpleNamespace(topic="app.polybridge.streams", partition=i) for i in (0, 1)]

    class RevokingConsumer(FakeConsumer):
        def unsubscribe(self) -> None:
            super().unsubscribe()
            group._revoked(self, partitions)  # type: ignore[arg-type]

        def close(self) -> None:
            if not self.unsubscribed:
                group._revoked(self, partitions)  # type: ignore[arg-type]
            super().close()

    group._leave(RevokingConsumer())  # type: ignore[arg-type]
    assert calls == [(called, ["a", "b"])]
