"""Metering: each finished request becomes one ledger row and one set of metric updates.

``Meter.finish`` is synchronous and cheap so it can run in any ``finally``, even in a
cancelled task; rows are written to the store in batches by ``LedgerWriter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from gateway.clock import Clock, wall
from gateway.metering.journal import Journal
from gateway.metering.pricing import PriceBook
from gateway.metrics import UNKNOWN, GatewayMetrics
from gateway.records import UsageRecord
from gateway.store import Store

logger = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection"


class LedgerWriter:
    """Batches usage rows into the store; a failed batch is kept and retried, never dropped."""

    def __init__(
        self,
        store: Store,
        journal: Journal,
        metrics: GatewayMetrics,
        flush_interval_s: float,
        batch_size: int,
        clock: Clock = wall,
    ) -> None:
        self._store = store
        self._journal = journal
        self._metrics = metrics
        self._interval_s = flush_interval_s
        self._batch_size = batch_size
        self._clock = clock  # rows' ``ended_at`` is wall time: the backlog's age too
        self._pending: deque[UsageRecord] = deque()
        self._failing = False  # the last write failed: rows wait in the journal (and here)
        metrics.ledger_backlog.set_function(lambda: len(self._pending))
        metrics.ledger_backlog_age.set_function(self.backlog_age_s)
        self._wakeup = asyncio.Event()
        # One flush at a time: two would write the same batch and then each pop it, dropping
        # unwritten rows from the queue (``close`` and callers may flush while ``flush_when_due`` does).
        self._flushing = asyncio.Lock()

    @property
    def spooling(self) -> bool:
        """Rows are waiting because the database refused the last write (an outage)."""
        return self._failing and bool(self._pending)

    @property
    def backlog_rows(self) -> int:
        return len(self._pending)

    def backlog_age_s(self) -> float:
        """How long the oldest row waiting for the database has waited (0: none waits)."""
        return max(0.0, self._clock() - self._pending[0].ended_at) if self._pending else 0.0

    def submit(self, record: UsageRecord) -> None:
        self._pending.append(record)
        if len(self._pending) >= self._batch_size:
            self._wakeup.set()

    async def flush_when_due(self) -> None:
        """One background round (``gateway.supervisor`` runs it back to back): wait for the
        interval to pass or a batch to fill, then flush."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=self._interval_s)
        self._wakeup.clear()
        await self.flush()

    async def flush(self) -> None:
        async with self._flushing:
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        while self._pending:
            batch = [self._pending[i] for i in range(min(self._batch_size, len(self._pending)))]
            try:
                await self._store.insert_usage(batch)
            except Exception:  # the store may be down; keep the rows and try again later
                self._failing = True
                self._metrics.ledger_failures.inc()
                logger.exception("ledger write of %d rows failed; will retry", len(batch))
                await asyncio.sleep(min(self._interval_s * 20, 1.0))
                return
            self._failing = False
            for _ in batch:
                self._pending.popleft()
            self._journal.committed(batch)

    async def close(self) -> None:
        """Write what is left (one final attempt), once the supervisor has stopped the rounds."""
        await self.flush()
        if self._pending:
            logger.error(
                "%d ledger rows could not be written at shutdown; they stay in the journal "
                "and are written at the next start",
                len(self._pending),
            )


class Meter:
    """Prices a finished request and records it in the journal, the ledger and Prometheus, once."""

    def __init__(
        self,
        writer: LedgerWriter,
        journal: Journal,
        prices: PriceBook,
        metrics: GatewayMetrics,
        known_models: set[str],
    ) -> None:
        self._writer = writer
        self._journal = journal
        self._prices = prices
        self._metrics = metrics
        self._known_models = known_models

    def start(self, record: UsageRecord) -> None:
        """Before the engine is called: a crash from here on leaves an ``interrupted`` row."""
        self._journal.started(record)

    def progress(
        self, request_id: str, prompt_tokens: int, completion_tokens: int, ttft_s: float | None
    ) -> None:
        """A running stream's tokens so far: what a crash would bill."""
        self._journal.progress(request_id, prompt_tokens, completion_tokens, ttft_s)

    def price(self, record: UsageRecord) -> None:
        """Cost at the price in force when the request started (never a later one)."""
        price = self._prices.price_at(record.model, record.started_at)
        if price is not None:
            record.cost_pico = price.cost_pico(
                record.prompt_tokens, record.completion_tokens, record.cached_tokens
            )
            record.price_version = price.version

    def finish(
        self, record: UsageRecord, tenant_name: str, duration_s: float, *, streamed: bool = True
    ) -> None:
        self.price(record)
        model_label = record.model if record.model in self._known_models else UNKNOWN
        self._metrics.observe_request(
            tenant_name,
            model_label,
            record.http_status,
            record.prompt_tokens,
            record.completion_tokens,
            duration_s,
            record.ttft_s,
            streamed,
            record.cost_pico,
            record.cached_tokens,
        )
        self.record(record)

    def record(self, record: UsageRecord) -> None:
        """Journal the row, then queue it for the database."""
        self._journal.finished(record)
        self._writer.submit(record)
