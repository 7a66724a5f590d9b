"""An outage is said in a few lines: when it began, its age at most every 30 s, its end."""

from __future__ import annotations

import logging

import pytest

from bridge.kafka.client_log import ClientLog
from bridge.kafka.outage import Reachability


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


def test_an_outage_is_one_line_then_its_age_every_30_s_then_one_line_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    kafka = Reachability(logging.getLogger("outage-test"), repeat_s=30.0, clock=clock)
    with caplog.at_level(logging.INFO):
        kafka.reachable()  # nothing was away: nothing to say
        for second in range(95):  # every stream's error callback, twice a second
            clock.now = 100.0 + second
            kafka.unreachable("stream a", "all brokers are down")
            kafka.unreachable("stream b", "all brokers are down")
        clock.now = 200.0
        kafka.reachable()
        kafka.reachable()
        clock.now = 201.0  # another client's report of a moment ago: stale
        kafka.unreachable("stream c", "all brokers are down")
        clock.now = 203.0  # away again
        kafka.unreachable("stream c", "all brokers are down")
    assert _lines(caplog) == [
        "Kafka unreachable: all brokers are down; waiting on it: stream a",
        "Kafka still unreachable after 30 s: all brokers are down; waiting on it: "
        "stream a, stream b",
        "Kafka still unreachable after 60 s: all brokers are down; waiting on it: "
        "stream a, stream b",
        "Kafka still unreachable after 90 s: all brokers are down; waiting on it: "
        "stream a, stream b",
        "Kafka reachable again after 100.0 s",
        "Kafka unreachable: all brokers are down; waiting on it: stream c",
    ]
    assert kafka.away


def test_connection_failures_of_librdkafka_are_folded_into_the_outage_while_it_lasts(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.kafka import client_log

    kafka = Reachability(logging.getLogger("outage-test"), clock=Clock())
    monkeypatch.setattr(client_log, "KAFKA", kafka)
    lines = ClientLog(logging.getLogger("client-test"))
    fail = "127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"
    with caplog.at_level(logging.INFO):
        kafka.unreachable("stream a", "all brokers are down")
        lines.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", fail)
        lines.log(logging.WARNING, "%s [%s] %s", "TXNERR", "rdkafka#producer-1", "fenced")
        kafka.reachable()
        lines.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-2", fail)
    assert _lines(caplog) == [
        "Kafka unreachable: all brokers are down; waiting on it: stream a",
        "librdkafka client=rdkafka#producer-1 TXNERR: fenced",  # not a connection failure
        "Kafka reachable again after 0.0 s",
        f"librdkafka client=rdkafka#producer-2 FAIL: {fail}",  # one broker, no outage
    ]
