"""The REST history of a configured stream: the `History` classes of
`bridge.backfill.exchange_history` and `bridge.backfill.predexon_history` over one exchange
and one Predexon REST client per process, with the stream's own mapper (same topic, schema,
wire format and event ids as live)."""

from __future__ import annotations

from collections.abc import Callable

from bridge.backfill.exchange_history import ExchangeHistory
from bridge.backfill.history import History
from bridge.backfill.predexon_history import PredexonHistory
from bridge.backfill.streams import BackfillStream
from bridge.config import Settings
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.mapping.predexon import PredexonMapper
from bridge.records import Gap
from bridge.serde.exact_json import dumps
from bridge.sources.auth import TokenProvider
from bridge.sources.rest.exchange import ExchangeRestClient, exchange_rest_client
from bridge.sources.rest.predexon import PredexonRestClient, predexon_rest_client
from bridge.streams.kinds import KINDS


class RestClients:
    """The `RestHistories` of the bridge: a `History` per stream and gap. Clients are made on
    first use (on the event loop that uses them); credentials are read then, so a bridge
    without `[backfill]` never needs them."""

    def __init__(
        self,
        settings: Settings,
        tokens: Callable[[], TokenProvider],
        predexon_key: Callable[[], str],
    ) -> None:
        self.settings = settings
        self._tokens = tokens
        self._predexon_key = predexon_key
        self.clients: list[ExchangeRestClient | PredexonRestClient] = []
        self._exchange: ExchangeRestClient | None = None
        self._predexon: PredexonRestClient | None = None

    def __call__(self, stream: BackfillStream, gap: Gap) -> History:
        backfill = self.settings.backfill
        if stream.upstream == "dropcopy":
            mapper = DropCopyMapper(
                KINDS[stream.kind], stream.stream_id, stream.topic, stream.prefix
            )
            return ExchangeHistory(
                self.exchange_client(),
                mapper,
                participant_id=self.settings.dropcopy.participant_id,
                symbols=list(stream.filters.get("symbols") or ()),
                firms=list(stream.filters.get("firms") or ()),
                accounts=backfill.accounts,
                page_size=backfill.page_size,
                retention_s=backfill.exchange_retention_s or None,
            )
        filters = dict(stream.filters)
        predexon_mapper = PredexonMapper(
            stream.kind, stream.stream_id, stream.topic, stream.prefix, dumps(filters)
        )
        return PredexonHistory(
            self.predexon_client(),
            predexon_mapper,
            filters,
            limit=backfill.page_size,
            lookback_s=backfill.predexon_lookback_s,
            rest_lag_s=backfill.predexon_rest_lag_s,
        )

    def exchange_client(self) -> ExchangeRestClient:
        """The exchange's client (made on first use): a 401 re-mints the token once."""
        if self._exchange is None:
            self._exchange = exchange_rest_client(
                self.settings.backfill.exchange_url,
                self._tokens(),
                self.settings.dropcopy.participant_id,
            )
            self.clients.append(self._exchange)
        return self._exchange

    def predexon_client(self) -> PredexonRestClient:
        """Predexon's client (made on first use), paced to the key's `predexon.plan`."""
        if self._predexon is None:
            self._predexon = predexon_rest_client(
                self.settings.backfill.predexon_url,
                self._predexon_key(),
                plan=self.settings.predexon.plan,
            )
            self.clients.append(self._predexon)
        return self._predexon

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
        self.clients.clear()
        self._exchange = self._predexon = None
