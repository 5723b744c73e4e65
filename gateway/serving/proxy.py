"""The request path after auth: parse → route → upstream → relay → meter.

``Exchange`` owns one request's bookkeeping and finishes it exactly once, from whichever exit
is taken: a full response, an error before or during the stream, or the client going away.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.admission.limits import Reservation
from gateway.admission.service import Admission
from gateway.errors import (
    GatewayError,
    ModelNotFoundError,
    NoHealthyEngineError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.inference import EngineCall, parse_call
from gateway.metering.meter import CLIENT_CLOSED, Meter
from gateway.metrics import GatewayMetrics
from gateway.records import Api, ApiKey, Outcome, UsageRecord
from gateway.routing.endpoint import Endpoint
from gateway.routing.health import HealthChecker
from gateway.routing.policies import affinity_key
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from gateway.serving.relay import (
    SseSplitter,
    UsageShaper,
    UsageTracker,
    meter_unread,
    relay_body,
    relay_events,
)
from gateway.serving.upstream import (
    EngineConnectTimeoutError,
    EngineUnreachableError,
    UpstreamClient,
    UpstreamResponse,
)


class ClientDisconnectedError(Exception):
    """The client went away while the gateway was waiting on the engine or relaying its answer."""


class DisconnectWatch:
    """``async with DisconnectWatch(receive):`` cancels the block when the client disconnects, which
    then raises ``ClientDisconnectedError``. One plain task: Starlette's task group per response
    cost 0.07-0.2 ms of CPU per stream (benchmarks/overhead.py). Only valid once the request body
    has been read: the next ASGI message can then only be the disconnect."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._gone = False

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        if self._task is not None:
            self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._watcher.cancel()
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and self._gone:
            if self._task is not None:
                self._task.uncancel()
            raise ClientDisconnectedError from None


_DONE = b"data: [DONE]\n\n"

# How often a running stream's token count is journaled (what a gateway crash would bill).
PROGRESS_EVERY_S = 1.0


class Exchange:
    """One metered request: its ledger row, its engine, its usage so far."""

    def __init__(
        self, meter: Meter, admission: Admission, metrics: GatewayMetrics, record: UsageRecord, tenant: str
    ) -> None:
        self._meter = meter
        self._admission = admission
        self.reservation: Reservation | None = None
        self._metrics = metrics
        self.record = record
        self._tenant = tenant
        self._t0 = time.perf_counter()
        self.tracker = UsageTracker(started=self._t0)
        self.upstream: UpstreamResponse | None = None
        self.pool: EnginePool | None = None  # where ``upstream``'s engine slot goes back
        self.completed = False
        self.error: GatewayError | None = None
        self.splitter: SseSplitter | None = None  # a stream's, to meter what was left unrelayed
        self._finished = False

    def finish(self) -> None:
        """Close the engine connection, then meter; later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        record, tracker = self.record, self.tracker
        if self.upstream is not None and self.pool is not None:
            endpoint = self.upstream.endpoint
            self.pool.release(endpoint, self._tenant)
            self._metrics.inflight.labels(endpoint.model).dec()
            # A response read to the end goes back to the pool; anything else is cut so the
            # engine aborts the generation instead of finishing it for nobody.
            if self.completed:
                self.upstream.release()
            else:
                if self.splitter is not None:
                    meter_unread(self.upstream.unread(), self.splitter, tracker)
                self.upstream.close()
        if self.error is not None:
            record.outcome, record.http_status = Outcome.error, self.error.status_code
            record.error_code = self.error.code
        elif not self.completed:
            record.outcome, record.http_status = Outcome.aborted, CLIENT_CLOSED
        elif record.http_status >= 400:
            record.outcome = Outcome.error
            record.error_code = str((tracker.error or {}).get("code") or "") or None
        record.prompt_tokens = tracker.prompt_tokens
        record.completion_tokens = tracker.completion_tokens_known
        record.ttft_s = tracker.ttft_s
        record.ended_at = time.time()
        self._meter.finish(record, self._tenant, time.perf_counter() - self._t0)
        if self.reservation is not None:
            self._admission.settle(self.reservation, record)

    def limit_headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers every answer to a limited key carries."""
        return self.reservation.state.headers() if self.reservation is not None else {}


class RelayResponse(StreamingResponse):
    """A streaming response that finishes its exchange however the ASGI call ends.

    Only an SSE stream watches for the client leaving (to cut the generation short). A whole body
    is already on its way from the engine, and a watcher cost 14-23% of the gateway's CPU per JSON
    request, measured with ``benchmarks/overhead.py``.
    """

    def __init__(
        self, exchange: Exchange, body: AsyncIterator[bytes], status: int, media_type: str, streamed: bool
    ) -> None:
        headers = {"x-request-id": exchange.record.request_id, **exchange.limit_headers()}
        super().__init__(body, status_code=status, media_type=media_type, headers=headers)
        self.exchange = exchange
        self._streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if self._streamed:
                async with DisconnectWatch(receive):
                    await self.stream_response(send)
            else:
                await self.stream_response(send)
        except ClientDisconnectedError:
            pass  # the relay stopped mid-stream: finish() meters it as aborted
        finally:
            self.exchange.finish()


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
    ) -> None:
        self._router = router
        self._upstream = upstream
        self._health = health
        self._admission = admission
        self._meter = meter
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes

    async def handle(self, api: Api, key: ApiKey, request: Request) -> Response:
        record = UsageRecord(
            request_id=f"req_{secrets.token_hex(12)}", tenant_id=key.tenant_id, key_id=key.id,
            model="", api=api.value, started_at=time.time(),
        )  # fmt: skip
        exchange = Exchange(self._meter, self._admission, self._metrics, record, key.tenant_name)
        try:
            call = parse_call(api, await self._read_body(request))
            record.model = call.model
            if not key.allows(call.model):
                raise ModelNotFoundError(call.model)
            exchange.reservation = await self._admission.admit(key, call, record.started_at)
            self._meter.start(record)
            exchange.pool = self._router.pool(call.model)
            exchange.upstream = await self._open_unless_gone(request, exchange.pool, call, record, key)
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
        streamed = call.stream and upstream.status == 200
        body = self._body(exchange, call, streamed)
        return RelayResponse(exchange, body, upstream.status, upstream.content_type, streamed)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body_bytes:
            raise self._too_large()
        pieces: list[bytes] = []
        size = 0
        async for piece in request.stream():
            size += len(piece)
            if size > self._max_body_bytes:
                raise self._too_large()
            pieces.append(piece)
        return b"".join(pieces)

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"The request body exceeds the limit of {self._max_body_bytes} bytes.")

    async def _open_unless_gone(
        self, request: Request, pool: EnginePool, call: EngineCall, record: UsageRecord, key: ApiKey
    ) -> UpstreamResponse:
        """``_open``, cut short if the client disconnects meanwhile: a wait in a saturated pool's
        queue, a non-streamed answer or a stream's first byte can take minutes, and a client that
        gives up must not leave the engine generating for nobody."""
        async with DisconnectWatch(request.receive):
            session = request.headers.get("x-session-id")
            return await self._open(pool, call, record, key.tenant_name, session)

    async def _open(
        self, pool: EnginePool, call: EngineCall, record: UsageRecord, tenant: str, session: str | None
    ) -> UpstreamResponse:
        """Send to the best engine. An engine that cannot be reached, that breaks off, or that
        answers 5xx before anything reached the client, is skipped for another; with none left,
        the last 5xx is relayed as the engine sent it (504 if connections timed out)."""
        key = affinity_key(call.payload, session) if pool.policy.wants_key else None
        tried: list[Endpoint] = []
        failed: UpstreamResponse | None = None  # a 5xx kept in case no other engine answers
        timed_out = False
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
            try:
                upstream = await self._attempt(endpoint, call, record.request_id)
            except EngineUnreachableError as exc:
                pool.release(endpoint, tenant)
                self._health.mark(endpoint, False)
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

    async def _attempt(self, endpoint: Endpoint, call: EngineCall, request_id: str) -> UpstreamResponse:
        """One engine's answer; a stream's only once its first event is in (first-token timeout)."""
        upstream = await self._upstream.post(endpoint, call.api.path, call.body, request_id)
        if not (call.stream and upstream.status == 200):
            return upstream
        try:
            await upstream.read_head(self._upstream.first_token_timeout_s)
        except UpstreamTimeoutError:
            upstream.close()
            self._health.failed(endpoint)
            raise
        except UpstreamError as exc:
            upstream.close()  # it died before its first byte: another engine can take it over
            raise EngineUnreachableError(exc.message) from None
        return upstream

    def _settle_on(self, upstream: UpstreamResponse, record: UsageRecord) -> UpstreamResponse:
        self._metrics.inflight.labels(upstream.endpoint.model).inc()
        record.endpoint = upstream.endpoint.url
        return upstream

    @staticmethod
    def _discard(upstream: UpstreamResponse, pool: EnginePool, tenant: str) -> None:
        upstream.close()
        pool.release(upstream.endpoint, tenant)

    async def _body(self, exchange: Exchange, call: EngineCall, streamed: bool) -> AsyncIterator[bytes]:
        upstream = exchange.upstream
        assert upstream is not None
        if streamed:
            exchange.splitter = SseSplitter()
            relay = relay_events(upstream.chunks(), exchange.tracker, UsageShaper(call), exchange.splitter)
        else:
            relay = relay_body(upstream.chunks(), exchange.tracker)
        tracker, request_id = exchange.tracker, exchange.record.request_id
        next_progress = time.monotonic() + PROGRESS_EVERY_S
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
