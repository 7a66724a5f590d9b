"""Environment overrides: `POLYBRIDGE_<SECTION>__<KEY>` and `POLYBRIDGE_APP_ID` are
settings; the tooling's own `POLYBRIDGE_` variables are not, so a bridge started with them
in its environment (a test run, `make demo`) still starts."""

from __future__ import annotations

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError


def test_section_keys_and_the_app_id_are_settings() -> None:
    environ = {"POLYBRIDGE_APP_ID": "risk", "POLYBRIDGE_KAFKA__BOOTSTRAP_SERVERS": "b:9092"}
    settings = load_settings(None, environ=environ)
    assert settings.app_id == "risk"
    assert settings.kafka.bootstrap_servers == "b:9092"


def test_the_toolings_own_variables_are_not_settings() -> None:
    environ = {"POLYBRIDGE_KAFKA_POM": "/x/pom.xml", "POLYBRIDGE_KEEP_KAFKA_DATA": "1"}
    assert load_settings(None, environ=environ).app_id == "polybridge"


def test_a_misspelt_section_or_key_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="kafak"):
        load_settings(None, environ={"POLYBRIDGE_KAFAK__BOOTSTRAP_SERVERS": "b:9092"})
    with pytest.raises(ConfigError, match="bootstrap_server"):
        load_settings(None, environ={"POLYBRIDGE_KAFKA__BOOTSTRAP_SERVER": "b:9092"})
