"""librdkafka's log lines (bridge.kafka.client_log): level mapping, deduplication, summaries."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest

from bridge.kafka.client_log import ClientLog, bridge_level, client_log_config, shape

# What confluent-kafka passes to logger.log(): its level map of librdkafka's syslog levels.
CRIT, ERR, WARN, INFO, DEBUG = 50, 40, 30, 20, 10
REFUSED = (
    "{addr}/bootstrap: Connect to ipv4#{addr} failed: Connection refused "
    "(after {ms}ms in state CONNECT)"
)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[tuple[str, str]]:
        return [(r.levelname, r.getMessage()) for r in self.records]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def out() -> Records:
    return Records()


def _client_log(out: Records, clock: Clock, level: int = logging.DEBUG) -> ClientLog:
    target = logging.getLogger(f"test_client_log.{uuid.uuid4().hex}")
    target.handlers[:] = [out]
    target.propagate = False
    target.setLevel(level)
    return ClientLog(target, window_s=60.0, clock=clock)


def _refused(addr: str = "127.0.0.1:9092", ms: int = 0) -> str:
    return REFUSED.format(addr=addr, ms=ms)


def _cb(logger: ClientLog, level: int, fac: str, text: str, client: str = "rdkafka#producer-1"):
    # Exactly how confluent-kafka's log_cb calls the configured logger.
    logger.log(level, "%s [%s] %s", fac, client, text)


def test_shape_masks_varying_numbers_but_keeps_broker_addresses() -> None:
    assert shape(_refused(ms=0)) == shape(_refused(ms=1234))
    assert shape("1/3 brokers are down") == shape("2/3 brokers are down")
    assert shape("kafka-1:9092/1: Timed out 3 in-flight") == shape(
        "kafka-1:9092/1: Timed out 17 in-flight"
    )
    # Different brokers are different messages.
    assert shape(_refused("127.0.0.1:9092")) != shape(_refused("127.0.0.1:9093"))
    assert shape("kafka-1:9092/1: Disconnected") != shape("kafka-2:9092/2: Disconnected")
    assert shape("[::1]:9092/bootstrap: x") != shape("[::1]:9093/bootstrap: x")
    assert "127.0.0.1:9092" in shape(_refused("127.0.0.1:9092"))


def test_levels_are_at_most_warning() -> None:
    assert bridge_level(ERR) == logging.WARNING
    assert bridge_level(CRIT) == logging.WARNING
    assert bridge_level(WARN) == logging.WARNING
    assert bridge_level(INFO) == logging.INFO
    assert bridge_level(DEBUG) == logging.DEBUG


def test_repeats_are_logged_once_then_summarised_when_the_window_ends(out: Records) -> None:
    clock = Clock()
    logger = _client_log(out, clock)
    _cb(logger, ERR, "FAIL", _refused(ms=0))
    for i in range(1, 11):
        clock.now += 5
        _cb(logger, ERR, "FAIL", _refused(ms=i), client=f"rdkafka#producer-{i}")
    assert out.lines() == [
        ("WARNING", f"librdkafka client=rdkafka#producer-1 FAIL: {_refused(ms=0)}"),
    ]
    clock.now += 10  # 60 s after the first: the next line (of any kind) closes the window
    _cb(logger, WARN, "CONFWARN", "Configuration property x is a consumer property")
    assert out.lines()[1:] == [
        (
            "WARNING",
            f"librdkafka client=rdkafka#producer-10 FAIL: {_refused(ms=10)} "
            "(repeated 10 times in the last 60 s)",
        ),
        (
            "WARNING",
            "librdkafka client=rdkafka#producer-1 CONFWARN: "
            "Configuration property x is a consumer property",
        ),
    ]


def test_a_quiet_window_ends_without_summary_and_the_line_is_new_again(out: Records) -> None:
    clock = Clock()
    logger = _client_log(out, clock)
    _cb(logger, ERR, "FAIL", _refused(ms=1))
    clock.now += 61
    _cb(logger, ERR, "FAIL", _refused(ms=2))
    assert out.lines() == [
        ("WARNING", f"librdkafka client=rdkafka#producer-1 FAIL: {_refused(ms=1)}"),
        ("WARNING", f"librdkafka client=rdkafka#producer-1 FAIL: {_refused(ms=2)}"),
    ]


def test_continuous_repeats_give_one_summary_per_window(out: Records) -> None:
    clock = Clock()
    logger = _client_log(out, clock)
    for _ in range(180):  # one a second for three minutes
        _cb(logger, ERR, "FAIL", _refused())
        clock.now += 1
    _cb(logger, ERR, "FAIL", _refused())
    lines = [message for _, message in out.lines()]
    assert len(lines) == 4
    assert "repeated" not in lines[0]
    # The first window's first line was logged itself; later windows count every line.
    assert [line.rsplit("(", 1)[1] for line in lines[1:]] == [
        "repeated 59 times in the last 60 s)",
        "repeated 60 times in the last 60 s)",
        "repeated 60 times in the last 60 s)",
    ]


def test_flush_reports_open_windows(out: Records) -> None:
    clock = Clock()
    logger = _client_log(out, clock)
    _cb(logger, ERR, "FAIL", _refused("127.0.0.1:9092"))
    _cb(logger, ERR, "FAIL", _refused("127.0.0.1:9093"))
    clock.now += 7
    _cb(logger, ERR, "FAIL", _refused("127.0.0.1:9092", ms=3))
    logger.flush()
    assert [m for _, m in out.lines()] == [
        f"librdkafka client=rdkafka#producer-1 FAIL: {_refused('127.0.0.1:9092')}",
        f"librdkafka client=rdkafka#producer-1 FAIL: {_refused('127.0.0.1:9093')}",
        f"librdkafka client=rdkafka#producer-1 FAIL: {_refused('127.0.0.1:9092', ms=3)} "
        "(repeated 1 times in the last 7 s)",
    ]
    logger.flush()  # nothing left to report; 9093's window is still open, so no new line
    _cb(logger, ERR, "FAIL", _refused("127.0.0.1:9093"))
    assert len(out.records) == 3
    logger.flush()
    assert out.lines()[-1][1].endswith("(repeated 1 times in the last 7 s)")


def test_same_text_of_another_facility_or_level_is_another_message(out: Records) -> None:
    clock = Clock()
    logger = _client_log(out, clock)
    _cb(logger, ERR, "FAIL", "broker down")
    _cb(logger, ERR, "ERROR", "broker down")
    _cb(logger, INFO, "FAIL", "broker down")
    assert out.lines() == [
        ("WARNING", "librdkafka client=rdkafka#producer-1 FAIL: broker down"),
        ("WARNING", "librdkafka client=rdkafka#producer-1 ERROR: broker down"),
        ("INFO", "librdkafka client=rdkafka#producer-1 FAIL: broker down"),
    ]


def test_debug_lines_pass_through_undeduplicated_and_disabled_levels_cost_nothing(
    out: Records,
) -> None:
    clock = Clock()
    logger = _client_log(out, clock)
    for _ in range(3):
        _cb(logger, DEBUG, "WAKEUP", "Wake-up sent to 2 broker threads")
    wakeup = "librdkafka client=rdkafka#producer-1 WAKEUP: Wake-up sent to 2 broker threads"
    assert out.lines() == [("DEBUG", wakeup)] * 3

    quiet = Records()
    errors_only = _client_log(quiet, clock, level=logging.ERROR)
    _cb(errors_only, ERR, "FAIL", _refused())
    _cb(errors_only, DEBUG, "WAKEUP", "x")
    _cb(errors_only, CRIT, "FATAL", "boom")
    errors_only.flush()
    assert quiet.lines() == []
    warnings = _client_log(quiet, clock, level=logging.WARNING)
    _cb(warnings, CRIT, "FATAL", "boom")
    _cb(warnings, INFO, "FAIL", "x")
    assert quiet.lines() == [("WARNING", "librdkafka client=rdkafka#producer-1 FATAL: boom")]


def test_concurrent_callers_count_every_repeat(out: Records) -> None:
    clock = Clock()
    logger = _client_log(out, clock)

    def spam() -> None:
        for i in range(1000):
            _cb(logger, ERR, "FAIL", _refused(ms=i))

    threads = [threading.Thread(target=spam) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.flush()
    assert len(out.records) == 2
    # Delivered within a second: no span is claimed.
    assert out.lines()[1][1].endswith(f"{_refused(ms=999)} (repeated 3999 times)")


def test_other_call_shapes_are_passed_on(out: Records) -> None:
    logger = _client_log(out, Clock())
    logger.log(ERR, "plain %s", "message")
    assert out.lines() == [("WARNING", "plain message")]


def test_client_config_keeps_a_configured_log_level() -> None:
    conf = client_log_config({"bootstrap.servers": "x:9092"})
    assert isinstance(conf["logger"], ClientLog)
    assert conf["log_level"] == 6
    assert conf["log.thread.name"] is False
    assert client_log_config({"log_level": 7})["log_level"] == 7
    assert client_log_config({"log_level": 7})["logger"] is conf["logger"]
