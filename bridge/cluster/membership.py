"""Which streams this instance runs: Kafka's group protocol decides, nothing else.

Every `polybridge run` with the same `app_id` joins the consumer group `<app_id>` and
subscribes to the coordination topic (`<topic_prefix>polybridge.streams`), which has one
partition per configured stream: partition i stands for the i-th stream id in sorted order.
An assigned partition means "run this stream". Nothing is ever produced to that topic: the
group coordinator's assignment is the only election, the way Kafka Connect's distributed
workers share tasks. Cooperative-sticky assignment moves only the streams that must move,
so a joining or leaving instance never stops the others' streams.

Hand-over: on revocation the callback stops the stream (commit or abort, then close) before
it returns, so the next owner starts after the previous one ended. A member that dies is
removed after `session_timeout_ms` and its streams move then. Safety never rests on the
assignment: the stream's transactional id fences any overlapping owner.

Static membership (KIP-345): each instance joins with its `cluster.instance_id` as
`group.instance.id`. A member that comes back under the same id (a restart, after SIGKILL
or SIGTERM) replaces its previous member at once and gets its streams back, without a
rebalance and without waiting out the old session. Stopping (`close()`), an instance leaves
the group when other members are there to take its streams over at once (a rolling
restart); when it is the only member it stays, so that it takes its streams back at once
when it comes back (nobody else could run them meanwhile), and the session timeout removes
it if it does not. A second running instance with the same id takes the id over: the first
is fenced (FENCED_INSTANCE_ID) and stops with a `ConfigError` naming `cluster.instance_id`.

Instances must agree on the stream set. Each member's `client.id` carries the fingerprint of
its sorted stream ids; an instance refuses to join a group whose members carry another one,
and checks again once it has joined (two instances started at the same instant).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as LibKafkaError
from confluent_kafka.admin import AdminClient

from bridge.errors import ConfigError, KafkaError
from bridge.kafka.acls import denied, is_denied
from bridge.kafka.client_log import client_log_config

log = logging.getLogger(__name__)

POLL_S = 0.2
"""One poll of the group consumer: how promptly a rebalance callback or a close is served."""

DESCRIBE_TIMEOUT_S = 10.0

LEAVE_CHECK_S = 3.0
"""At close, how long asking the group whether other members are there may take; without an
answer the instance leaves (its streams move at once if anyone is there)."""

LEAVE_S = 5.0
"""At close, how long leaving the group (revoking the streams, LeaveGroup) may take."""

REJOIN_WINDOW_S = 120.0
"""A fencing of this instance's own name this soon after its session was lost is its own
doing: librdkafka rejoins a static member after a session timeout (the broker was away)
and the broker then fences the requests still in flight under the old member id
(librdkafka issue 3437). The member rejoins with a new consumer, once per loss; a fencing
with no such loss before it is another instance under the same name."""


def fingerprint(stream_ids: Sequence[str]) -> str:
    """A short digest of the sorted stream set: equal on instances that agree."""
    return hashlib.sha256("\n".join(sorted(stream_ids)).encode()).hexdigest()[:12]


def client_id(fp: str, instance_id: str) -> str:
    return f"polybridge-{fp}-{instance_id}"


def fingerprint_of(member_client_id: str) -> str | None:
    parts = member_client_id.split("-", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "polybridge" else None


_COORDINATOR_STARTING = frozenset(
    {
        LibKafkaError.NOT_COORDINATOR,
        LibKafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        LibKafkaError.COORDINATOR_NOT_AVAILABLE,
    }
)


def describe_group(
    config: Mapping[str, Any], group_id: str, timeout: float = DESCRIBE_TIMEOUT_S
) -> Any:
    """The group's description (members, their client ids and assignments), waiting out
    the coordinator's start (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS) within
    `timeout` seconds."""
    admin = AdminClient({**config, **client_log_config(config)})
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            futures = admin.describe_consumer_groups([group_id], request_timeout=remaining)
            return futures[group_id].result(timeout=remaining + 1)
        except KafkaException as exc:
            error = exc.args[0]
            if is_denied(error):  # a missing ACL: Describe on the group, implied by READ
                raise KafkaError(
                    denied(config, error, "READ", f"stream group {group_id}", group_id)
                ) from exc
            if error.code() not in _COORDINATOR_STARTING or time.monotonic() + 0.2 > deadline:
                raise KafkaError(
                    f"cannot describe consumer group {group_id}: {error}", retriable=True
                ) from exc
            time.sleep(0.2)  # the coordinator is loading: ask again shortly
        except TimeoutError as exc:
            raise KafkaError(
                f"cannot describe consumer group {group_id} within {timeout:.0f} s",
                retriable=True,
            ) from exc


def current_owners(
    config: Mapping[str, Any], group_id: str, topic: str, stream_ids: Sequence[str]
) -> dict[str, str]:
    """Stream id -> the group member running it now (`instance id @ host`): a static
    member's `cluster.instance_id` (the coordinator keeps a static member's first client.id
    over its restarts, so that would name a process long gone), else the run id in its
    client.id."""
    streams = sorted(stream_ids)
    owners: dict[str, str] = {}
    for member in describe_group(config, group_id).members:
        instance = member.group_instance_id or member.client_id.split("-", 2)[-1]
        for tp in member.assignment.topic_partitions if member.assignment else []:
            if tp.topic == topic and tp.partition < len(streams):
                owners[streams[tp.partition]] = f"{instance}@{member.host.lstrip('/')}"
    return owners


class Membership:
    """This instance's membership of the stream group.

    `on_assign(stream_ids)`, `on_revoke(stream_ids)` (they move to another member) and
    `on_lost(stream_ids)` (the session expired: another instance may run them already; or
    this instance closes alone, keeping its place) are called from the membership's own
    thread and must not return before the streams have started / stopped (or, revoked,
    are handing over).
    `close()` revokes every owned stream."""

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        group_id: str,
        topic: str,
        stream_ids: Sequence[str],
        instance_id: str,
        group_instance_id: str,
        session_timeout_ms: int,
        on_assign: Callable[[list[str]], None],
        on_revoke: Callable[[list[str]], None],
        on_lost: Callable[[list[str]], None],
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.group_id = group_id
        self.topic = topic
        self.streams = sorted(stream_ids)
        self.fingerprint = fingerprint(self.streams)
        self.client_id = client_id(self.fingerprint, instance_id)
        self.group_instance_id = group_instance_id
        """This instance's static identity in the group (`cluster.instance_id`)."""
        self._config = dict(config)
        self._session_timeout_ms = session_timeout_ms
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._on_fatal = on_fatal
        self.owned: set[str] = set()
        self.joined = False
        """True once the group has given this instance an assignment (maybe empty)."""
        self._checked = False
        self._fenced_out = False
        self._fatal: LibKafkaError | None = None
        """The first fatal error of the group consumer (error_cb or poll)."""
        self._member_id: str | None = None
        """This instance's member id in the group, from its first assignment on."""
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._lost_at: float | None = None
        """When the session was last lost (None: not since the last (re)join)."""
        self._keeping_place = False
        """Closing without leaving (alone): the close's revocation stops the streams; no
        one is there to hand them over to."""

    # -- agreement ---------------------------------------------------------------------

    def check_agreement(self) -> None:
        """Refuse (ConfigError) when the group has members with another stream set. A
        member with this instance's `cluster.instance_id` is its previous run (which this
        one replaces, whatever it ran), or a second instance under the same name (fenced
        once this one joins)."""
        description = describe_group(self._config, self.group_id)
        others = {
            m.client_id
            for m in description.members
            if m.client_id != self.client_id
            and m.group_instance_id != self.group_instance_id
            and fingerprint_of(m.client_id) not in (None, self.fingerprint)
        }
        if others:
            raise ConfigError(
                f"instances of app_id {self.group_id!r} run a different set of streams "
                f"(members {sorted(others)}; this one's stream set {self.fingerprint}: "
                f"{', '.join(self.streams)}). Give every instance the same streams, or stop "
                "the others first, or use another app_id"
            )

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Check agreement, join the group, and serve it from a thread until `close()`."""
        self.check_agreement()
        self._consumer = self._join()
        self._thread = threading.Thread(target=self._serve, name="stream-group", daemon=True)
        self._thread.start()

    def _join(self) -> Consumer:
        """A group consumer subscribed to the coordination topic (joining the group)."""
        conf = {
            **self._config,
            "group.id": self.group_id,
            "group.instance.id": self.group_instance_id,
            "client.id": self.client_id,
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": self._session_timeout_ms,
            # A member learns of a rebalance at its next heartbeat, so the interval adds to
            # every hand-over (twice when an instance joins: cooperative rebalancing takes two
            # rounds). Every second, or a third of the session if that is shorter.
            "heartbeat.interval.ms": min(1_000, max(100, self._session_timeout_ms // 3)),
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            # Fatal errors (FENCED_INSTANCE_ID among them) come here, served by poll().
            "error_cb": self._error,
        }
        conf.update(client_log_config(conf))
        consumer = Consumer(conf)
        consumer.subscribe(
            [self.topic],
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._lost,
        )
        log.info(
            "stream group %s: joining as cluster.instance_id %s",
            self.group_id,
            self.group_instance_id,
        )
        return consumer

    def _serve(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._closing.is_set():
                msg = consumer.poll(POLL_S)
                err = msg.error() if msg is not None else None
                if err is not None:
                    self._error(err)
                    if not err.fatal():
                        log.debug("stream group error=%s", err.str())
                if self._fatal is not None and self._fenced_by_own_rejoin():
                    consumer = self._rejoin(consumer)
                    continue
                if self._fatal is not None:
                    if is_denied(self._fatal):
                        raise ConfigError(self._denied(self._fatal))
                    if self._replaced():
                        log.info("stream group %s: fenced: %s", self.group_id, self._fatal.str())
                        raise self._fenced()
                    raise KafkaError(f"stream group {self.group_id}: {self._fatal.str()}")
        except ConfigError as exc:
            self._on_fatal(exc)  # said once, by whoever reports the fatal error
        except BaseException as exc:
            log.error("stream group %s failed: %s", self.group_id, exc)
            self._on_fatal(exc)
        finally:
            self._leave(consumer)

    def _fenced_by_own_rejoin(self) -> bool:
        """True for a fatal error of the member soon after it lost its session (see
        `REJOIN_WINDOW_S`), a missing ACL aside. A consumer's fatal errors are its static
        membership's fencing, which librdkafka reports as FENCED_INSTANCE_ID or _FATAL
        ("Fatal error: ... fenced by other consumer ..."); any of them this soon after a
        loss is taken for the member's own rejoin, once: a broker test run saw one
        right after the rejoin's assignment that the group listing then took for another
        instance's, and the bridge stopped."""
        fatal, lost_at = self._fatal, self._lost_at
        return (
            fatal is not None
            and not is_denied(fatal)
            and lost_at is not None
            and time.monotonic() - lost_at < REJOIN_WINDOW_S
        )

    def _rejoin(self, fenced: Consumer) -> Consumer:
        """Drop the consumer librdkafka fenced and join again under the same name."""
        log.warning(
            "stream group %s: this instance's session expired while Kafka was away, and its "
            "own rejoin fenced the old member (%s); joining again as cluster.instance_id %s",
            self.group_id,
            self._fatal.str() if self._fatal is not None else "-",
            self.group_instance_id,
        )
        with contextlib.suppress(KafkaException, RuntimeError):
            fenced.close()  # a fatal consumer sends nothing more
        self._fatal = None
        self._lost_at = None  # once per loss: a second fencing is another instance's
        self._member_id = None
        self._consumer = consumer = self._join()
        return consumer

    def _error(self, err: LibKafkaError) -> None:
        if (
            err.fatal()
            or err.code() in (LibKafkaError._FATAL, LibKafkaError.FENCED_INSTANCE_ID)
            or is_denied(err)  # a missing ACL: librdkafka would retry it forever
        ):
            self._fatal = self._fatal or err

    def _denied(self, err: LibKafkaError) -> str:
        """The line for a missing ACL of the group member: the group, or its topic."""
        group = err.code() == LibKafkaError.GROUP_AUTHORIZATION_FAILED
        name = self.group_id if group else self.topic
        return denied(self._config, err, "READ", f"stream group {self.group_id}", name)

    def _replaced(self) -> bool:
        """True when the group lists another member under this instance's
        `cluster.instance_id`: a newer instance took the name, and this one is fenced."""
        members = self._members()
        self._fenced_out = members is not None and self._replaced_in(members)
        return self._fenced_out

    def _replaced_in(self, members: Any) -> bool:
        return self._member_id is not None and any(
            m.group_instance_id == self.group_instance_id and m.member_id != self._member_id
            for m in members
        )

    def _fenced(self) -> ConfigError:
        return ConfigError(
            f"another running instance of app_id {self.group_id!r} joined the stream group "
            f"with this one's cluster.instance_id {self.group_instance_id!r}, and took its "
            "place: this one stops. Give every running instance its own cluster.instance_id "
            "(it defaults to the host name)"
        )

    def _leave(self, consumer: Consumer) -> None:
        """Stop the owned streams and close the consumer; leave the group first when other
        members are there to take the streams over at once. A static member's close does
        not leave: alone, this instance keeps its place for its own restart. An instance
        whose name another one took stops with that error, even when it learnt of it only
        from its streams' fencing (the newer instance's producers can be first)."""
        try:
            members = None if self._fenced_out else self._members()
            if self._fenced_out:
                pass  # no longer a member: nothing to leave
            elif members is not None and self._replaced_in(members):
                self._fenced_out = True
                self._on_fatal(self._fenced())
            elif (
                self._fatal is not None  # failed: nothing to keep a place for
                or self._member_id is None  # stopping before a first assignment
                or members is None  # unknown: leaving moves the streams if anyone is there
                or any(m.member_id != self._member_id for m in members)
            ):
                self._unsubscribe(consumer)
            else:
                self._keeping_place = True
                log.info(
                    "stream group: no other member; instance %s keeps its place for up to "
                    "%d ms (a restart under the same cluster.instance_id takes the streams "
                    "back at once)",
                    self.group_instance_id,
                    self._session_timeout_ms,
                )
        except (KafkaException, RuntimeError) as exc:
            log.warning("stream group leave error=%s", exc)
        try:
            consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("stream group close error=%s", exc)

    def _members(self) -> Any | None:
        """The group's members, or None when the group cannot be described now."""
        try:
            return describe_group(self._config, self.group_id, LEAVE_CHECK_S).members
        except (KafkaError, KafkaException, RuntimeError) as exc:
            log.info("stream group members unknown (%s)", exc)
            return None

    def _unsubscribe(self, consumer: Consumer) -> None:
        """Revoke the owned streams (the callback stops them) and send LeaveGroup, which
        librdkafka does for a static member on unsubscribe, not on close: wait until the
        group no longer lists this member, within `LEAVE_S`."""
        consumer.unsubscribe()
        deadline = time.monotonic() + LEAVE_S
        while time.monotonic() < deadline:
            consumer.poll(0.05)
            if self.owned or consumer.assignment():
                continue
            try:
                members = describe_group(self._config, self.group_id, LEAVE_CHECK_S).members
            except KafkaError:
                continue
            if all(m.member_id != self._member_id for m in members):
                log.info("stream group left: the other members take the streams over")
                return
        log.warning("stream group: still listed as a member %g s after leaving", LEAVE_S)

    def close(self, timeout: float = 60.0) -> None:
        """Stop owned streams, leave the group, and join the thread."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- rebalance callbacks (the membership thread) -----------------------------------

    def _ids(self, partitions: Sequence[TopicPartition]) -> list[str]:
        return [
            self.streams[tp.partition]
            for tp in partitions
            if tp.topic == self.topic and tp.partition < len(self.streams)
        ]

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.monotonic()
        try:
            if not self._checked:
                self._checked = True
                self.check_agreement()  # the instances that joined with us agree too
            ids = [i for i in self._ids(partitions) if i not in self.owned]
            self._member_id = consumer.memberid()
            self.joined = True
            if ids:
                log.info("stream group assigned streams=%s", ",".join(ids))
                self.owned.update(ids)
                self._on_assign(ids)
        except BaseException as exc:
            self._on_fatal(exc)
            self._closing.set()
        log.debug("assignment served in %.0f ms", (time.monotonic() - started) * 1e3)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stop = self._on_lost if self._keeping_place else self._on_revoke
        self._release(self._ids(partitions), "revoked", stop)

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._lost_at = time.monotonic()
        self._release(self._ids(partitions), "lost", self._on_lost)

    def _release(self, ids: list[str], why: str, stop: Callable[[list[str]], None]) -> None:
        ids = [i for i in ids if i in self.owned]
        if not ids:
            return
        log.info("stream group %s streams=%s", why, ",".join(ids))
        try:
            stop(ids)
        except BaseException as exc:
            self._on_fatal(exc)
        finally:
            self.owned.difference_update(ids)
