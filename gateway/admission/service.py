"""Admission: the limiter step of the request path (auth → admission → router → upstream → meter).

A request is checked against its tenant's limits (the stored ones, else the configured defaults)
and its key's own. What it may cost is reserved up front: the prompt counted with the model's
tokenizer plus the output cap, and, for a cost budget, that estimate priced. ``settle`` then
trades the reservation for what the engine reported. Token counting costs tens of microseconds,
so it only happens when a token or cost limit applies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from gateway.admission.limits import Limiter, LimitExceeded, Reservation, Subject
from gateway.admission.tokens import TokenCounter
from gateway.inference import InferenceRequest
from gateway.limit_spec import LimitSpec
from gateway.metering.pricing import PriceBook
from gateway.metrics import GatewayMetrics
from gateway.money import PICO
from gateway.records import Api, ApiKey, UsageRecord
from gateway.store import Store
from gateway.utc import month_of, month_start

logger = logging.getLogger(__name__)


class Admission:
    """Reserves each request's share of its limits, and settles it when the request ends."""

    def __init__(
        self,
        limiter: Limiter,
        counters: Mapping[str, TokenCounter],
        prices: PriceBook,
        defaults: LimitSpec | None,
        metrics: GatewayMetrics,
        default_max_tokens: int,
    ) -> None:
        self._limiter = limiter
        self._counters = counters
        self._prices = prices
        self._defaults = defaults or LimitSpec()
        self._metrics = metrics
        self._default_max_tokens = default_max_tokens
        self._settling: set[asyncio.Task[None]] = set()

    def limits_for(self, key: ApiKey) -> tuple[LimitSpec, LimitSpec | None]:
        """(the tenant's limits, the key's own) — the tenant's default to the configured ones."""
        return self._tenant_limits(key.tenant_limits), key.limits

    async def admit(self, request: InferenceRequest, started_at: float) -> Reservation | None:
        """Reserve for the request's key, or raise ``LimitExceeded`` (429). None: nothing limits it."""
        key = request.key
        tenant_limits, key_limits = self.limits_for(key)
        if tenant_limits.unlimited and (key_limits is None or key_limits.unlimited):
            return None
        tokens = cost = 0
        if _counts_tokens(tenant_limits) or (key_limits is not None and _counts_tokens(key_limits)):
            prompt, output = self._estimate(request)
            tokens = prompt + output
            price = self._prices.price_at(request.model, started_at)
            cost = price.cost_pico(prompt, output) if price is not None else 0
        return await self._reserve(key, tenant_limits, key_limits, tokens, cost)

    async def charge_refused(self, key: ApiKey) -> None:
        """Take one request from the key's requests per minute for a request refused before
        admission (a body that is not valid JSON, a model the key may not use): junk is not free,
        so a flood of it meets the same 429 as a flood of real requests. Only ``rpm`` is charged;
        nothing is held, so there is nothing to settle."""
        tenant_limits, key_limits = self.limits_for(key)
        rpm_only = LimitSpec(rpm=tenant_limits.rpm)
        key_rpm_only = LimitSpec(rpm=key_limits.rpm) if key_limits is not None else None
        if rpm_only.unlimited and (key_rpm_only is None or key_rpm_only.unlimited):
            return
        await self._reserve(key, rpm_only, key_rpm_only, 0, 0)

    async def _reserve(
        self, key: ApiKey, tenant_limits: LimitSpec, key_limits: LimitSpec | None, tokens: int, cost: int
    ) -> Reservation:
        try:
            return await self._limiter.admit(
                Subject(key.tenant_id, key.id), tenant_limits, key_limits, tokens=tokens, cost_pico=cost
            )
        except LimitExceeded as exc:
            self._metrics.ratelimited.labels(key.tenant_name, exc.reason).inc()
            raise

    def _estimate(self, request: InferenceRequest) -> tuple[int, int]:
        """(prompt tokens, output tokens) to reserve: the prompt as counted (the engine reports it
        once, whatever ``n``), the output at its cap for each of the ``n`` choices (each may
        generate up to ``max_tokens``, and the engine bills their sum)."""
        counter = self._counters.get(request.model)
        prompt = counter.count_prompt(request) if counter is not None else 0
        if request.api is Api.embeddings:
            return prompt, 0
        return prompt, (request.max_tokens or self._default_max_tokens) * request.n

    def settle(self, reservation: Reservation, record: UsageRecord) -> None:
        """Trade the reservation for the actual usage; runs from any ``finally`` (never awaits)."""
        used = record.prompt_tokens + record.completion_tokens
        task = asyncio.get_running_loop().create_task(
            self._limiter.settle(reservation, used, record.cost_pico)
        )
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def wait_settled(self) -> None:
        """Wait for settlements in flight (shutdown; tests)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def close(self) -> None:
        await self._limiter.aclose()

    async def seed_months(self, store: Store, now: float) -> int:
        """Start this month's budget counters from the ledger (a restart, or Redis that lost its
        data, must not hand out a budget twice). Returns the subjects seeded."""
        month = month_of(now)
        start = month_start(month)
        seeded = 0
        for tenant in await store.list_tenants():
            limits = self._tenant_limits(tenant.limits)
            keys = [k for k in await store.list_keys(tenant.name) if k.limits and k.limits.monthly]
            if not limits.monthly and not keys:
                continue
            per_key = await store.usage_report(tenant.id, start, now + 1, "key")
            if limits.monthly:
                tokens = sum(g.prompt_tokens + g.completion_tokens for g in per_key)
                await self._limiter.seed_month(tenant.id, month, tokens, sum(g.cost_pico for g in per_key))
                seeded += 1
            used = {g.group: g for g in per_key}
            for key in keys:
                group = used.get(key.id)
                if group is not None:
                    total = group.prompt_tokens + group.completion_tokens
                    await self._limiter.seed_month(tenant.id, month, total, group.cost_pico, key_id=key.id)
                    seeded += 1
        return seeded

    async def publish_budgets(self, store: Store) -> None:
        """Set ``gateway_budget_remaining`` for every tenant with a monthly budget: one background
        round (``gateway.supervisor`` runs it, and logs, counts and retries a store or Redis outage)."""
        for tenant in await store.list_tenants():
            limits = self._tenant_limits(tenant.limits)
            if not limits.monthly:
                continue
            left = await self._limiter.remaining_budget(tenant.id, limits)
            if left.tokens is not None:
                self._metrics.budget_remaining.labels(tenant.name, "tokens").set(left.tokens)
            if left.cost_pico is not None:
                self._metrics.budget_remaining.labels(tenant.name, "cost").set(left.cost_pico / PICO)

    def _tenant_limits(self, limits: LimitSpec | None) -> LimitSpec:
        return limits if limits is not None else self._defaults


def _counts_tokens(limits: LimitSpec) -> bool:
    return any(v is not None for v in (limits.tpm, limits.monthly_tokens, limits.monthly_cost_pico))
