"""The request path after auth: parse → admission → route → upstream → relay → meter."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.admission.service import Admission
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    NoHealthyEngineError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.inference import InferenceRequest, parse_request
from gateway.metering.meter import CLIENT_CLOSED, Meter
from gateway.metrics import GatewayMetrics
from gateway.records import Api, ApiKey, UsageRecord
from gateway.routing.endpoint import Endpoint
from gateway.routing.health import HealthChecker
from gateway.routing.policies import affinity_key
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from gateway.serving.disconnect import ClientDisconnectedError, DisconnectWatch
from gateway.serving.exchange import Exchange, RelayResponse
from gateway.serving.relay import (
    SseSplitter,
    UsageShaper,
    relay_body,
    relay_events,
)
from gateway.serving.tails import TailReader
from gateway.serving.upstream import (
    EngineConnectTimeoutError,
    EngineUnreachableError,
    UpstreamClient,
    UpstreamResponse,
)

logger = logging.getLogger(__name__)

_DONE = b"data: [DONE]\n\n"

# How often a running stream's token count is journaled (what a gateway killed with -9 bills): a
# line of a few dozen bytes, one write(2) of a few microseconds, from the first event on.
PROGRESS_EVERY_S = 0.1


class ProxyService:
    """Serves the OpenAI generation and embedding APIs for an authenticated key."""

    def __init__(
        self,
        router: Router,
        upstream: UpstreamClient,
        health: HealthChecker,
        admission: Admission,
        meter: Meter,
        metrics: GatewayMetrics,
        max_body_bytes: int,
        tails: TailReader,
    ) -> None:
        self._router = router
        self._upstream = upstream
        self._health = health
        self._admission = admission
        self._meter = meter
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._tails = tails

    async def handle(self, api: Api, key: ApiKey, http: Request) -> Response:
        record = UsageRecord(
            request_id=f"req_{secrets.token_hex(12)}",
            tenant_id=key.tenant_id,
            key_id=key.id,
            model="",
            api=api.value,
            started_at=time.time(),
        )
        exchange = Exchange(self._meter, self._admission, self._metrics, self._tails, record, key.tenant_name)
        try:
            request = await self._accept(api, key, http, record.request_id)
            record.model = request.model  # a served model's name: never a client's arbitrary string
            record.choices, record.service_tier = request.n, request.service_tier
            exchange.reservation = await self._admission.admit(request, record.started_at)
            self._meter.start(record)
            exchange.pool = self._router.pool(request.model)
            exchange.upstream = await self._open_unless_gone(http, exchange.pool, request, exchange)
            if exchange.upstream.status >= 400:
                raise await exchange.read_engine_error()
        except ClientDisconnectedError:
            exchange.finish()  # metered as aborted (499); the engine request was cut
            return Response(status_code=CLIENT_CLOSED)
        except GatewayError as exc:
            exchange.error = exc
            exchange.finish()
            exc.headers.update(exchange.limit_headers(), **{"x-request-id": record.request_id})
            raise
        except BaseException:
            exchange.finish()
            raise
        upstream = exchange.upstream
        record.http_status = upstream.status
        streamed = request.stream and upstream.status == 200
        if streamed:
            exchange.splitter = SseSplitter()
        body = self._body(exchange, request, streamed)
        return RelayResponse(exchange, body, upstream.status, upstream.content_type, streamed)

    async def _accept(self, api: Api, key: ApiKey, http: Request, request_id: str) -> InferenceRequest:
        """The typed request for a model this key may use and this gateway serves; else the 4xx
        that refuses it, charged to the key's requests per minute (``Admission.charge_refused``)."""
        try:
            request = parse_request(
                api,
                await self._read_body(http),
                key=key,
                request_id=request_id,
                session_id=http.headers.get("x-session-id"),
            )
            if not key.allows(request.model) or request.model not in self._router.pools:
                raise ModelNotFoundError(request.model)
        except InvalidRequestError:
            await self._admission.charge_refused(key)
            raise
        return request

    async def _read_body(self, http: Request) -> bytes:
        declared = http.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body_bytes:
            raise self._too_large()
        pieces: list[bytes] = []
        size = 0
        try:
            async for piece in http.stream():
                size += len(piece)
                if size > self._max_body_bytes:
                    raise self._too_large()
                pieces.append(piece)
        except ClientDisconnect:
            # Gone mid-body, or cut off by the body timeout (a 408 was sent): an ordinary event,
            # not a server error, metered as aborted (499) and counted in gateway_requests_total.
            logger.info("client disconnected while sending its request body (%d bytes read)", size)
            raise ClientDisconnectedError from None
        return b"".join(pieces)

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"The request body exceeds the limit of {self._max_body_bytes} bytes.")

    async def _open_unless_gone(
        self, http: Request, pool: EnginePool, request: InferenceRequest, exchange: Exchange
    ) -> UpstreamResponse:
        """``_open``, cut short if the client disconnects meanwhile: a wait in a saturated pool's
        queue, a non-streamed answer or a stream's first byte can take minutes, and a client that
        gives up must not leave the engine generating for nobody."""
        async with DisconnectWatch(http.receive):
            return await self._open(pool, request, exchange)

    async def _open(
        self, pool: EnginePool, request: InferenceRequest, exchange: Exchange
    ) -> UpstreamResponse:
        """Send to the best engine. An engine that cannot be reached, that breaks off, or that
        answers 5xx before anything reached the client, is skipped for another; with none left,
        the last 5xx is answered with its status and message (504 if connections timed out).
        While no engine is up but one is expected back, ``pool.acquire`` holds the request."""
        key = affinity_key(request) if pool.policy.wants_key else None
        tenant = request.key.tenant_name
        tried: list[Endpoint] = []
        failed: UpstreamResponse | None = None  # a 5xx kept in case no other engine answers
        timed_out = False
        record = exchange.record
        while True:
            try:
                endpoint = await pool.acquire(tenant, exclude=tried, key=key)
            except NoHealthyEngineError:
                if failed is not None:
                    return self._settle_on(failed, record)
                if timed_out:
                    raise UpstreamTimeoutError("No engine accepted the connection in time.") from None
                raise
            tried.append(endpoint)
            record.endpoint = endpoint.url  # the engine at work, should the client leave meanwhile
            try:
                upstream = await self._attempt(endpoint, request, exchange)
            except EngineUnreachableError as exc:
                record.endpoint = ""  # it never had the request
                try:
                    await self._health.unreachable(endpoint)  # the verdict before its slot is passed on
                finally:
                    pool.release(endpoint, tenant)
                timed_out = timed_out or isinstance(exc, EngineConnectTimeoutError)
                continue
            except BaseException:
                pool.release(endpoint, tenant)
                if failed is not None:
                    self._discard(failed, pool, tenant)
                raise
            if failed is not None:
                self._discard(failed, pool, tenant)
                failed = None
            if upstream.status < 500:
                self._health.succeeded(endpoint)
                return self._settle_on(upstream, record)
            self._health.failed(endpoint)
            failed = upstream

    async def _attempt(
        self, endpoint: Endpoint, request: InferenceRequest, exchange: Exchange
    ) -> UpstreamResponse:
        """One engine's answer; a stream's only once its first event is in (first-token timeout).
        A client that leaves meanwhile leaves the stream ``pending`` on the exchange, whose tail
        is then read and metered (the engine may have made its first tokens)."""
        upstream = await self._upstream.post(endpoint, request.api.path, request.body, request.request_id)
        if not (request.stream and upstream.status == 200):
            return upstream
        exchange.pending = upstream
        try:
            await upstream.read_head(self._upstream.first_token_timeout_s)
        except UpstreamTimeoutError:
            exchange.pending = None
            upstream.close()
            self._health.failed(endpoint)
            raise
        except UpstreamError as exc:
            exchange.pending = None
            upstream.close()  # it died before its first byte: another engine can take it over
            raise EngineUnreachableError(exc.message) from None
        exchange.pending = None
        return upstream

    def _settle_on(self, upstream: UpstreamResponse, record: UsageRecord) -> UpstreamResponse:
        self._metrics.inflight.labels(upstream.endpoint.model).inc()
        record.endpoint = upstream.endpoint.url
        return upstream

    @staticmethod
    def _discard(upstream: UpstreamResponse, pool: EnginePool, tenant: str) -> None:
        upstream.close()
        pool.release(upstream.endpoint, tenant)

    async def _body(
        self, exchange: Exchange, request: InferenceRequest, streamed: bool
    ) -> AsyncIterator[bytes]:
        upstream = exchange.upstream
        assert upstream is not None
        if exchange.splitter is not None:
            relay = relay_events(upstream.chunks(), exchange.tracker, UsageShaper(request), exchange.splitter)
        else:
            relay = relay_body(upstream.chunks(), exchange.tracker)
        tracker, request_id = exchange.tracker, exchange.record.request_id
        next_progress = time.monotonic()  # the first event's prompt tokens at once
        try:
            async for piece in relay:
                if streamed and piece.endswith(_DONE):
                    # The client may hang up the moment it has [DONE]: the answer is complete
                    # before that last send returns.
                    exchange.completed = True
                yield piece
                if streamed and time.monotonic() >= next_progress:
                    next_progress = time.monotonic() + PROGRESS_EVERY_S
                    completion = tracker.completion_tokens_known
                    self._meter.progress(request_id, tracker.prompt_tokens, completion, tracker.ttft_s)
        except GatewayError as exc:
            # Headers are gone already: a stream ends with an error event; a body just stops.
            exchange.error = exc
            if isinstance(exc, UpstreamError):
                self._health.failed(upstream.endpoint)
            if streamed:
                yield exc.to_sse()
            return
        exchange.completed = True
