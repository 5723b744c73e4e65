"""One metered request's bookkeeping, finished exactly once from whichever exit is taken: a full
response, an error before or during the stream, or the client going away."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.admission.limits import Reservation
from gateway.admission.service import Admission
from gateway.errors import EndpointNotSupportedError, GatewayError
from gateway.metering.meter import CLIENT_CLOSED, Meter
from gateway.metrics import GatewayMetrics
from gateway.records import Api, Outcome, UsageRecord
from gateway.routing.pool import EnginePool
from gateway.serving.disconnect import ClientDisconnectedError, DisconnectWatch
from gateway.serving.relay import SseSplitter, UsageTracker, error_from_body, meter_unread
from gateway.serving.tails import TailReader
from gateway.serving.upstream import UpstreamResponse


class Exchange:
    """One metered request: its ledger row, its engine, its usage so far."""

    def __init__(
        self,
        meter: Meter,
        admission: Admission,
        metrics: GatewayMetrics,
        tails: TailReader,
        record: UsageRecord,
        tenant_name: str,
    ) -> None:
        self._meter = meter
        self._admission = admission
        self.reservation: Reservation | None = None
        self._metrics = metrics
        self._tails = tails
        self.record = record
        self._tenant_name = tenant_name
        self._t0 = time.perf_counter()
        self.tracker = UsageTracker(started=self._t0)
        self.upstream: UpstreamResponse | None = None
        self.pool: EnginePool | None = None  # where ``upstream``'s engine slot goes back
        # A stream opened on an engine whose first event had not come when the client left (its
        # engine slot is already back): its tail is read and metered like a cut stream's.
        self.pending: UpstreamResponse | None = None
        self.completed = False  # the engine's answer was read to its end (and relayed, unless an error)
        self.error: GatewayError | None = None
        self.splitter: SseSplitter | None = None  # a stream's, to meter what was left unrelayed
        self._finished = False

    def finish(self) -> None:
        """Close the engine connection, then meter; later calls do nothing. A stream the client
        cut is metered once its tail is read (``_finish_after_tail``, in the background)."""
        if self._finished:
            return
        self._finished = True
        tail = self._cut_stream()
        if tail is not None:
            self._tails.spawn(self._finish_after_tail(tail))
            return
        if self.upstream is not None:
            if self.completed:
                self.upstream.release()  # read to the end: back to the pool
            else:
                self.upstream.close()  # the engine aborts the generation instead of finishing it
        self._meter_and_settle()

    def _cut_stream(self) -> UpstreamResponse | None:
        """The engine stream a client left (no error of ours or the engine's), if any."""
        if self.completed or self.error is not None:
            return None
        if self.upstream is not None and self.splitter is not None:
            return self.upstream
        if self.pending is not None:
            self.splitter = SseSplitter()
            return self.pending
        return None

    async def _finish_after_tail(self, upstream: UpstreamResponse) -> None:
        """Tell the engine the client is gone and meter what it still sends (it counted those
        tokens), then close and meter as usual."""
        assert self.splitter is not None
        try:
            meter_unread(await upstream.drain(self._tails.timeout_s), self.splitter, self.tracker)
        finally:
            upstream.close()
            self._meter_and_settle()

    def _meter_and_settle(self) -> None:
        record, tracker = self.record, self.tracker
        if self.upstream is not None and self.pool is not None:
            endpoint = self.upstream.endpoint
            self.pool.release(endpoint, self._tenant_name)
            self._metrics.inflight.labels(endpoint.model).dec()
        if self.error is not None:
            record.outcome, record.http_status = Outcome.error, self.error.status_code
            record.error_code = self.error.code
        elif not self.completed:
            record.outcome, record.http_status = Outcome.aborted, CLIENT_CLOSED
        record.prompt_tokens = tracker.prompt_tokens
        record.completion_tokens = tracker.completion_tokens_known
        record.cached_tokens = min(tracker.cached_tokens, tracker.prompt_tokens)
        record.ttft_s = tracker.ttft_s
        record.ended_at = time.time()
        streamed = self.splitter is not None
        self._meter.finish(record, self._tenant_name, time.perf_counter() - self._t0, streamed=streamed)
        if self.reservation is not None:
            self._admission.settle(self.reservation, record)

    async def read_engine_error(self) -> GatewayError:
        """The engine's 4xx/5xx answer, read whole and put in OpenAI's shape (the caller raises
        it, so it reaches the client and the ledger like any other error)."""
        assert self.upstream is not None
        body = await self.upstream.read()
        self.completed = True  # read to its end: the connection can be reused
        unserved = EndpointNotSupportedError(self.record.model, Api(self.record.api).path)
        return error_from_body(self.upstream.status, body, unserved)

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
