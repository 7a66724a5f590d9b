"""`cluster.instance_id`: the stream group's static identity of an instance."""

from __future__ import annotations

import socket

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError


def test_the_default_name_is_the_host_name() -> None:
    cluster = load_settings(None, environ={}).cluster
    assert cluster.instance_id == ""
    assert cluster.instance_name() == socket.gethostname()


def test_a_name_from_the_environment_wins() -> None:
    environ = {"POLYBRIDGE_CLUSTER__INSTANCE_ID": "bridge-2"}
    assert load_settings(None, environ=environ).cluster.instance_name() == "bridge-2"


@pytest.mark.parametrize("name", ["has space", "a/b", "x" * 201])
def test_names_kafka_would_refuse_are_refused_at_start(name: str) -> None:
    with pytest.raises(ConfigError, match=r"cluster\.instance_id"):
        load_settings(None, environ={"POLYBRIDGE_CLUSTER__INSTANCE_ID": name})
