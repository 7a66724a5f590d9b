"""The stream catalogue: each configured stream resolved once (id, topic with the prefix,
schema, filters, transactional id), and a clear error for an id that is not configured."""

from __future__ import annotations

import pytest

from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.streams.catalogue import Stream, catalogue, configured

SETTINGS = Settings.model_validate(
    {
        "app_id": "desk",
        "kafka": {"topic_prefix": "prod."},
        "dropcopy": {
            "streams": [
                {"kind": "executions", "firms": ["F1"]},
                {"kind": "trade_captures", "name": "fills", "topic": "my.fills"},
            ]
        },
        "predexon": {
            "subscriptions": [{"name": "btc", "channel": "crypto", "filters": {"feeds": ["BTC"]}}]
        },
    }
)


def test_every_configured_stream_is_resolved_once_in_id_order() -> None:
    streams = catalogue(SETTINGS)
    assert list(streams) == ["dropcopy.executions", "dropcopy.fills", "predexon.btc"]
    assert streams["dropcopy.executions"] == Stream(
        id="dropcopy.executions",
        upstream="dropcopy",
        kind="executions",
        topic="prod.polymarket.dropcopy.executions",
        schema="polymarket.v1.dropcopy.ExecutionRecord",
        transactional_id="desk.dropcopy.executions",
        filters={"symbols": [], "firms": ["F1"]},
    )
    fills = streams["dropcopy.fills"]
    assert (fills.kind, fills.topic) == ("trade_captures", "prod.my.fills")
    btc = streams["predexon.btc"]
    assert (btc.upstream, btc.kind, btc.topic, btc.schema, btc.transactional_id) == (
        "predexon",
        "crypto",
        "prod.predexon.chainlink.crypto",
        "predexon.chainlink.CryptoPriceEvent",
        "desk.predexon.btc",
    )
    assert btc.filters == {"feeds": ["BTC"]}


def test_an_unknown_stream_is_refused_with_the_configured_ones() -> None:
    assert configured(SETTINGS, "predexon.btc", "state reset").kind == "crypto"
    with pytest.raises(ConfigError) as refused:
        configured(SETTINGS, "dropcopy.trades", "state reset")
    assert str(refused.value) == (
        "state reset: unknown stream 'dropcopy.trades'; configured streams: "
        "dropcopy.executions, dropcopy.fills, predexon.btc"
    )
