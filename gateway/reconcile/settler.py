"""The settlement round: settle due periods one transaction each, then publish the drift.

A period is due ``settle_after_s`` after its end, so every replica's ledger writer has flushed the
rows that ended in it. Any replica may run the round: the store settles each period once
(``settle_next_period``), and every replica computes the drift gauge from the store.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from gateway.clock import Clock, wall
from gateway.metrics import GatewayMetrics
from gateway.reconcile.allocation import plan_settlement
from gateway.records import UsageRecord
from gateway.store import Store
from gateway.store.settlement import SettledPeriod

logger = logging.getLogger(__name__)

DRIFT_WINDOW_S = 3600.0
MAX_PERIODS_PER_ROUND = 200


class Settler:
    """Settles reconcile periods (``settle_round``, a supervised background round)."""

    def __init__(
        self,
        store: Store,
        price: Callable[[UsageRecord], None],
        metrics: GatewayMetrics,
        settle_after_s: float,
        clock: Clock = wall,
    ) -> None:
        self._store = store
        self._plan = functools.partial(plan_settlement, price=price)
        self._metrics = metrics
        self._settle_after_s = settle_after_s
        self._clock = clock
        self._drift_engines: set[str] = set()

    async def settle_round(self) -> None:
        now = self._clock()
        for _ in range(MAX_PERIODS_PER_ROUND):
            settled = await self._store.settle_next_period(now - self._settle_after_s, now, self._plan)
            if settled is None:
                break
            self._settled(settled)
        await self.publish_drift(now)

    def _settled(self, settled: SettledPeriod) -> None:
        adjustments = settled.settlement.adjustments
        prompt = sum(row.prompt_tokens for row in adjustments)
        completion = sum(row.completion_tokens for row in adjustments)
        if prompt:
            self._metrics.metering_adjusted.labels("prompt").inc(prompt)
        if completion:
            self._metrics.metering_adjusted.labels("completion").inc(completion)
        period = settled.period
        if period.resets:
            logger.warning(
                "engine %s restarted between %.3f and %.3f: that period is reported, not adjusted",
                period.engine,
                period.start_at,
                period.end_at,
            )
        elif adjustments:
            logger.info(
                "settled %s up to %.3f: %d adjustment rows, %d prompt and %d completion tokens",
                period.engine,
                period.end_at,
                len(adjustments),
                prompt,
                completion,
            )

    async def publish_drift(self, now: float) -> None:
        """``gateway_metering_drift_tokens{engine}`` over the last hour's settled periods."""
        drift = await self._store.metering_drift(now - DRIFT_WINDOW_S)
        for engine in self._drift_engines - drift.keys():
            self._metrics.metering_drift.labels(engine).set(0)
        for engine, tokens in drift.items():
            self._metrics.metering_drift.labels(engine).set(tokens)
        self._drift_engines |= drift.keys()
