"""The shared limiter: every gateway replica's counters in one Redis, changed by atomic Lua scripts.

One round trip per admission (``EVALSHA`` of ``lua.ADMIT``) and one per settlement; keys carry the
tenant as a ``{hash tag}``, expire when idle (buckets refilled and no lease left), and month counters
expire a day after their month.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.admission.limits import lua
from gateway.admission.limits.model import (
    BudgetRemaining,
    Hold,
    RateLimitState,
    Reservation,
    Scope,
    Subject,
)
from gateway.admission.limits.policy import (
    Demand,
    ScopeView,
    hold_for,
    new_lease_id,
    rate_state,
    refusal,
    remaining,
    require_amounts,
    scope_id,
    scopes,
    seeded_scope,
)
from gateway.limit_spec import LimitSpec
from gateway.utc import month_end, month_of

_DAY_S = 86_400.0
_VIEW_FIELDS = 7  # values the admit script returns per scope


def _arg(value: int | None) -> str:
    return "-" if value is None else str(value)


def _limits_arg(limits: LimitSpec) -> str:
    values = (limits.rpm, limits.tpm, limits.max_concurrent, limits.monthly_tokens, limits.monthly_cost_pico)
    return " ".join(_arg(value) for value in values)


def _hold_arg(hold: Hold) -> str:
    return f"{_arg(hold.tpm)} {int(hold.lease)} {int(hold.monthly)}"


def _view(scope: Scope, limits: LimitSpec, raw: Sequence[bytes]) -> ScopeView:
    return ScopeView(
        scope=scope,
        limits=limits,
        requests_level=float(raw[0]),
        tokens_level=float(raw[1]),
        concurrent=int(raw[2]),
        month_tokens=int(raw[3]) + int(raw[4]),
        month_cost_pico=int(raw[5]) + int(raw[6]),
    )


class RedisLimiter:
    """Limits that hold across replicas. ``clock`` (tests) replaces the Redis server's ``TIME``."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "gw:limits:",
        lease_ttl_s: float = 900.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces: the tenant is the hash tag")
        self._client = client
        self._prefix = prefix
        self._lease_ttl_us = str(round(lease_ttl_s * 1_000_000))
        self._clock = clock
        self._admit = client.register_script(lua.ADMIT)
        self._settle = client.register_script(lua.SETTLE)
        self._seed = client.register_script(lua.SEED)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.5, **options: Any) -> RedisLimiter:
        """A limiter with its own client: short timeouts and one immediate retry (a stale connection)."""
        client = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
        )
        return cls(client, **options)

    def _keys(self, tenant_id: str, scope_name: str, month: str) -> list[str]:
        base = f"{self._prefix}{{{tenant_id}}}:{scope_name}:"
        return [base + "state", base + "leases", f"{base}month:{month}"]

    def _wall(self) -> float:
        return self._clock() if self._clock is not None else time.time()

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(round(self._clock() * 1_000_000))

    def _month_ttl_ms(self, month: str) -> str:
        return str(max(1000, round((month_end(month) + _DAY_S - self._wall()) * 1000)))

    async def admit(
        self,
        subject: Subject,
        limits: LimitSpec,
        key_limits: LimitSpec | None = None,
        *,
        tokens: int,
        cost_pico: int = 0,
    ) -> Reservation:
        require_amounts(tokens, cost_pico)
        checked = scopes(limits, key_limits)
        lease_id, month = new_lease_id(), month_of(self._wall())
        if not checked:
            return Reservation(subject, lease_id, month, tokens, cost_pico, holds=(), state=RateLimitState())
        keys: list[str] = []
        args = [self._now_arg(), lease_id, self._lease_ttl_us, str(tokens), str(cost_pico)]
        for scope, scope_limits in checked:
            keys += self._keys(subject.tenant_id, scope_id(scope, subject.key_id), month)
            args.append(_limits_arg(scope_limits))
        raw = (await self._admit(keys=keys, args=args)).split()
        views = [
            _view(scope, scope_limits, raw[2 + _VIEW_FIELDS * i : 2 + _VIEW_FIELDS * (i + 1)])
            for i, (scope, scope_limits) in enumerate(checked)
        ]
        demand = Demand(tokens=tokens, cost_pico=cost_pico, now=float(raw[1]) / 1_000_000, month=month)
        if raw[0] != b"1":
            refused = refusal(views, demand)
            if refused is None:
                raise RuntimeError(f"the admit script refused what the policy admits: {raw!r}")
            raise refused
        return Reservation(
            subject=subject,
            lease_id=lease_id,
            month=month,
            tokens=tokens,
            cost_pico=cost_pico,
            holds=tuple(hold_for(scope, scope_limits) for scope, scope_limits in checked),
            state=rate_state(views, demand, admitted=True),
        )

    async def settle(self, reservation: Reservation, tokens: int, cost_pico: int) -> None:
        require_amounts(tokens, cost_pico)
        if reservation.settled or reservation.degraded:
            return
        reservation.settled = True
        if not reservation.holds:
            return
        subject = reservation.subject
        keys: list[str] = []
        args = [self._now_arg(), reservation.lease_id, self._lease_ttl_us, str(reservation.tokens)]
        args += [str(tokens), str(cost_pico), self._month_ttl_ms(reservation.month)]
        for hold in reservation.holds:
            keys += self._keys(subject.tenant_id, scope_id(hold.scope, subject.key_id), reservation.month)
            args.append(_hold_arg(hold))
        await self._settle(keys=keys, args=args)

    async def seed_month(
        self, tenant_id: str, month: str, tokens: int, cost_pico: int, key_id: str | None = None
    ) -> None:
        month_key = self._keys(tenant_id, scope_id(seeded_scope(key_id), key_id), month)[2]
        await self._seed(keys=[month_key], args=[str(tokens), str(cost_pico), self._month_ttl_ms(month)])

    async def remaining_budget(self, tenant_id: str, limits: LimitSpec) -> BudgetRemaining:
        state_key, _, month_key = self._keys(tenant_id, "t", month_of(self._wall()))
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hmget(month_key, ["tokens", "cost"])
            pipe.hmget(state_key, ["rt", "rc"])
            (used_tokens, used_cost), (held_tokens, held_cost) = await pipe.execute()
        return BudgetRemaining(
            tokens=remaining(limits.monthly_tokens, int(used_tokens or 0) + int(held_tokens or 0)),
            cost_pico=remaining(limits.monthly_cost_pico, int(used_cost or 0) + int(held_cost or 0)),
        )

    async def aclose(self) -> None:
        await self._client.aclose()
