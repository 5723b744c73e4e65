"""The webhook outbox: pushes the ledger's usage events to a billing webhook, batch after batch.

Each round claims the outbox (one replica at a time: ``UsageEventLog.claim``), reads the events
after its cursor, POSTs them as one signed batch, and moves the cursor past them only after a 2xx.
So an event acknowledged once is never sent again, and a batch that failed is sent again (with
whatever followed it, up to the batch size) after an exponential backoff. One case resends: a
crash, or a lost database connection, between the receiver's 2xx and the cursor's commit resends
that batch once, so receivers dedupe by event id (the request id), which they must do anyway.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from gateway.billing.events import EventBatch, UsageEventFeed
from gateway.billing.webhook import BatchSender, WebhookDeliveryError
from gateway.clock import Clock, Sleep, wall
from gateway.metrics import GatewayMetrics
from gateway.store.events import UsageEventLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryBackoff:
    """The wait after ``failures`` failed deliveries in a row: doubling from ``initial_s``, capped."""

    initial_s: float = 1.0
    max_s: float = 60.0

    def delay(self, failures: int) -> float:
        doublings = min(max(failures - 1, 0), 32)
        return min(self.initial_s * float(2**doublings), self.max_s)


class WebhookOutbox:
    """``push_round`` is the supervised round; it paces itself (run it with ``interval_s=0``)."""

    def __init__(
        self,
        log: UsageEventLog,
        feed: UsageEventFeed,
        sender: BatchSender,
        metrics: GatewayMetrics,
        *,
        name: str = "webhook",
        batch_size: int = 100,
        interval_s: float = 1.0,
        backoff: RetryBackoff | None = None,
        clock: Clock = wall,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._log = log
        self._feed = feed
        self._sender = sender
        self._metrics = metrics
        self.name = name
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._backoff = backoff or RetryBackoff()
        self._clock = clock
        self._sleep = sleep
        self.failures = 0  # deliveries failed in a row

    async def push_round(self) -> None:
        """Push one batch, then wait: not at all while more are queued, ``interval_s`` once caught
        up (or while another replica pushes), the backoff after a failure."""
        await self._sleep(await self.push_once())

    async def push_once(self) -> float:
        """Deliver the next batch if this process holds the outbox; returns how long to wait."""
        async with self._log.claim(self.name) as claim:
            if claim is None:
                await self._observe_lag_elsewhere()
                return self._interval_s
            batch = await self._feed.read(claim.seq, self._batch_size)
            self._observe_lag(batch)
            if not batch.events:
                return self._interval_s
            try:
                await self._sender.send(batch.events)
            except WebhookDeliveryError as exc:
                return self._failed(batch, exc)
            await claim.advance(batch.next_seq)
        # Counted once the cursor is committed: the claim's end is where it becomes durable.
        self._metrics.usage_events_sent.inc(len(batch.events))
        self.failures = 0
        if batch.has_more:
            return 0.0
        self._metrics.usage_events_lag.set(0)
        return self._interval_s

    async def _observe_lag_elsewhere(self) -> None:
        """While another replica pushes, the lag is still this replica's to report (a gauge left
        at its last value would go stale): the age of the first event after the stored cursor."""
        self._observe_lag(await self._feed.read(await self._log.cursor(self.name), 1))

    def _observe_lag(self, batch: EventBatch) -> None:
        if batch.oldest_ended_at is None:
            self._metrics.usage_events_lag.set(0)
        else:
            self._metrics.usage_events_lag.set(max(0.0, self._clock() - batch.oldest_ended_at))

    def _failed(self, batch: EventBatch, error: WebhookDeliveryError) -> float:
        self.failures += 1
        self._metrics.usage_webhook_failures.labels(error.reason).inc()
        delay = self._backoff.delay(self.failures)
        logger.warning(
            "usage webhook %s: a batch of %d events was not acknowledged (%s, %d in a row); "
            "retrying in %.1f s",
            self.name,
            len(batch.events),
            error,
            self.failures,
            delay,
        )
        return delay
