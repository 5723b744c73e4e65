"""A ``ProxyService`` built from its collaborators over the fake upstream, driven over raw ASGI.

The wiring follows ``gateway.app._build_state``: a router with one pool of two endpoints, the
health checker, admission over the in-process limiter, and the meter writing to a SQLite store
and a journal in a temporary directory. ``ServingStack.post`` plays the client, down to hanging
up after a given number of body pieces, which ``httpx.ASGITransport`` cannot do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from gateway.admission.limits import InProcessLimiter
from gateway.admission.service import Admission
from gateway.api.errors import error_response
from gateway.errors import GatewayError
from gateway.limit_spec import LimitSpec
from gateway.metering.journal import Journal
from gateway.metering.meter import LedgerWriter, Meter
from gateway.metering.pricing import Price, PriceBook
from gateway.metrics import GatewayMetrics
from gateway.records import Api, ApiKey, UsageRecord
from gateway.routing.endpoint import Endpoint
from gateway.routing.health import HealthChecker
from gateway.routing.policies import RoundRobin
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from gateway.serving.proxy import ProxyService
from gateway.serving.tails import TailReader
from gateway.serving.upstream import UpstreamClient
from gateway.store.sqlite import SqliteStore
from tests.support.fake_upstream import FakeUpstream, Handler

MODEL = "m"
ENGINES = ("http://engine-a", "http://engine-b")
# One picodollar-exact price: 1 per million prompt tokens, 2 per million completion tokens.
PRICE = Price(MODEL, 0.0, Decimal("1"), Decimal("2"))
PROMPT_PICO, COMPLETION_PICO = 1_000_000, 2_000_000
KEY = ApiKey(
    id="key_1",
    tenant_id="ten_1",
    tenant_name="acme",
    key_hash="hash",
    prefix="sk-test",
    created_at=0.0,
    tenant_limits=LimitSpec(rpm=1000),
)


@dataclass
class Answer:
    """What the client received."""

    status: int
    headers: dict[str, str]
    pieces: list[bytes]  # each non-empty body message, as sent

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class _Client:
    """The ASGI client side: sends the body, then hangs up after ``leave_after`` body pieces."""

    body: bytes
    leave_after: int | None
    pieces: list[bytes] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    _sent_body: bool = False

    async def receive(self) -> Message:
        if not self._sent_body:
            self._sent_body = True
            if self.leave_after == 0:
                self.gone.set()
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.pieces.append(message["body"])
            if self.leave_after is not None and len(self.pieces) >= self.leave_after:
                self.gone.set()
                await asyncio.Event().wait()  # a client that left never takes the next piece


@dataclass
class ServingStack:
    proxy: ProxyService
    upstream: FakeUpstream
    client: UpstreamClient
    pool: EnginePool
    admission: Admission
    ledger: LedgerWriter
    store: SqliteStore
    metrics: GatewayMetrics
    tails: TailReader
    health: HealthChecker
    # What each engine's ``/health`` answers when the health checker probes it (default: 200).
    engine_up: dict[str, bool] = field(default_factory=dict)

    async def post(
        self, payload: dict[str, Any] | bytes, api: Api = Api.chat, leave_after: int | None = None
    ) -> Answer:
        """One request as a client sends it; ``leave_after``: hang up after that many body
        pieces (0: while the gateway waits for the engine). Streams only: a whole body is not
        watched for the client leaving, so its send would wait for ever."""
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        client = _Client(body, leave_after)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {"type": "http", "method": "POST", "path": api.path, "headers": headers, "query_string": b""}
        try:
            response: Response = await self.proxy.handle(api, KEY, Request(scope, client.receive))
        except GatewayError as exc:
            response = error_response(exc)
        await response(scope, client.receive, client.send)
        await self.tails.wait()  # a cut stream is closed and metered once its tail is read
        start = next(m for m in client.messages if m["type"] == "http.response.start")
        response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return Answer(start["status"], response_headers, client.pieces)

    async def rows(self) -> list[UsageRecord]:
        """The ledger, once every settlement and write is done; times zeroed for exact compares
        (``ttft_s`` is kept as whether it was measured: 1.0, or None)."""
        await self.admission.wait_settled()
        await self.ledger.flush()
        rows = await self.store.list_usage()
        for row in rows:
            assert row.ended_at >= row.started_at > 0
        return [
            replace(row, started_at=0.0, ended_at=0.0, ttft_s=None if row.ttft_s is None else 1.0)
            for row in rows
        ]

    def endpoint(self, url: str) -> Endpoint:
        return next(e for e in self.pool.endpoints if e.url == url)


def expected_row(request_id: str, **columns: Any) -> UsageRecord:
    """A ledger row as ``ServingStack.rows`` returns it, for this test stack's key and model."""
    row = UsageRecord(
        request_id=request_id,
        tenant_id=KEY.tenant_id,
        key_id=KEY.id,
        model=MODEL,
        api=Api.chat.value,
        started_at=0.0,
        ended_at=0.0,
        **columns,
    )
    row.cost_pico = row.prompt_tokens * PROMPT_PICO + row.completion_tokens * COMPLETION_PICO
    row.price_version = PRICE.version
    return row


@asynccontextmanager
async def serving_stack(tmp_path: Path, handler: Handler) -> AsyncIterator[ServingStack]:
    """The stack, with its store and journal opened and closed around the test."""
    metrics = GatewayMetrics()
    journal = Journal(tmp_path / "journal")
    journal.open()
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    pool = EnginePool(MODEL, [Endpoint(MODEL, url) for url in ENGINES], RoundRobin(), metrics=metrics)
    router = Router({MODEL: pool})
    prices = PriceBook([PRICE])
    ledger = LedgerWriter(store, journal, metrics, flush_interval_s=60.0, batch_size=100)
    meter = Meter(ledger, journal, prices, metrics, known_models={MODEL})
    admission = Admission(InProcessLimiter(), {}, prices, None, metrics, default_max_tokens=16)
    upstream = FakeUpstream(handler)
    client = UpstreamClient(upstream, first_token_timeout_s=5.0)
    engine_up: dict[str, bool] = {}

    async def probe(endpoint: Endpoint) -> bool:
        return engine_up.get(endpoint.url, True)

    async with aiohttp.ClientSession() as session:  # the health checker's (never used here)
        health = HealthChecker(router, session, metrics, interval_s=60.0, timeout_s=1.0, probe=probe)
        tails = TailReader(timeout_s=1.0)
        proxy = ProxyService(
            router, client, health, admission, meter, metrics, max_body_bytes=64 * 1024, tails=tails
        )
        try:
            yield ServingStack(
                proxy, upstream, client, pool, admission, ledger, store, metrics, tails, health, engine_up
            )
        finally:
            await tails.wait()
            await admission.close()
            await store.close()
            journal.close()
