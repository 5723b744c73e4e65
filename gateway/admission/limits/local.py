"""The default limiter: counters in this process's memory, for a single gateway replica.

Admission and settling never await, so on one event loop every call is atomic without a lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.admission.limits.model import BudgetRemaining, Reservation, Subject
from gateway.admission.limits.policy import (
    Demand,
    ScopeView,
    hold_for,
    new_lease_id,
    rate_state,
    refill,
    refusal,
    remaining,
    require_amounts,
    scope_id,
    scopes,
    seeded_scope,
)
from gateway.clock import Clock, wall
from gateway.limit_spec import LimitSpec
from gateway.utc import month_of


@dataclass(slots=True)
class _Bucket:
    level: float | None = None  # None: never used, i.e. full
    updated: float = 0.0

    def current(self, limit: int, now: float) -> float:
        return float(limit) if self.level is None else refill(self.level, self.updated, limit, now)

    def set(self, level: float, now: float) -> None:
        self.level, self.updated = level, now


@dataclass(slots=True)
class _Lease:
    expires_at: float
    tokens: int
    cost_pico: int


@dataclass(slots=True)
class _ScopeState:
    requests: _Bucket = field(default_factory=_Bucket)
    tokens: _Bucket = field(default_factory=_Bucket)
    leases: dict[str, _Lease] = field(default_factory=dict)
    reserved_tokens: int = 0  # sum over live leases, whatever their month
    reserved_cost_pico: int = 0

    def sweep(self, now: float) -> None:
        """Forget leases whose request never settled (it cannot here, but the rules match Redis)."""
        for lease_id in [id_ for id_, lease in self.leases.items() if lease.expires_at <= now]:
            self.release(lease_id)

    def release(self, lease_id: str) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is not None:
            self.reserved_tokens -= lease.tokens
            self.reserved_cost_pico -= lease.cost_pico


class InProcessLimiter:
    """Token buckets, leases and monthly counters in dictionaries. ``clock`` is wall time (months
    are calendar months, and the rules match the Redis limiter's, which runs on Redis ``TIME``)."""

    def __init__(self, *, lease_ttl_s: float = 900.0, clock: Clock = wall) -> None:
        self._lease_ttl_s = lease_ttl_s
        self._clock = clock
        self._scopes: dict[tuple[str, str], _ScopeState] = {}
        self._months: dict[tuple[str, str, str], list[int]] = {}  # (tenant, scope id, month) → [tokens, cost]

    def _scope(self, subject: Subject, scope_name: str) -> _ScopeState:
        state = self._scopes.get((subject.tenant_id, scope_name))
        if state is None:
            state = self._scopes[(subject.tenant_id, scope_name)] = _ScopeState()
        return state

    def _month(self, tenant_id: str, scope_name: str, month: str) -> list[int]:
        used = self._months.get((tenant_id, scope_name, month))
        if used is None:
            used = self._months[(tenant_id, scope_name, month)] = [0, 0]
        return used

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
        now = self._clock()
        demand = Demand(tokens=tokens, cost_pico=cost_pico, now=now, month=month_of(now))
        checked = scopes(limits, key_limits)
        views = []
        for scope, scope_limits in checked:
            name = scope_id(scope, subject.key_id)
            state = self._scope(subject, name)
            state.sweep(now)
            used = self._month(subject.tenant_id, name, demand.month)
            views.append(
                ScopeView(
                    scope=scope,
                    limits=scope_limits,
                    requests_level=state.requests.current(scope_limits.rpm or 0, now),
                    tokens_level=state.tokens.current(scope_limits.tpm or 0, now),
                    concurrent=len(state.leases),
                    month_tokens=used[0] + state.reserved_tokens,
                    month_cost_pico=used[1] + state.reserved_cost_pico,
                )
            )
        refused = refusal(views, demand)
        if refused is not None:
            raise refused
        lease_id = new_lease_id()
        for view in views:
            self._take(self._scope(subject, scope_id(view.scope, subject.key_id)), view, demand, lease_id)
        return Reservation(
            subject=subject,
            lease_id=lease_id,
            month=demand.month,
            tokens=tokens,
            cost_pico=cost_pico,
            holds=tuple(hold_for(scope, scope_limits) for scope, scope_limits in checked),
            state=rate_state(views, demand, admitted=True),
        )

    def _take(self, state: _ScopeState, view: ScopeView, demand: Demand, lease_id: str) -> None:
        if view.limits.rpm is not None:
            state.requests.set(view.requests_level - 1, demand.now)
        if view.limits.tpm is not None:
            state.tokens.set(view.tokens_level - demand.tokens, demand.now)
        if view.limits.needs_lease:
            state.leases[lease_id] = _Lease(demand.now + self._lease_ttl_s, demand.tokens, demand.cost_pico)
            state.reserved_tokens += demand.tokens
            state.reserved_cost_pico += demand.cost_pico

    async def settle(self, reservation: Reservation, tokens: int, cost_pico: int) -> None:
        require_amounts(tokens, cost_pico)
        if reservation.settled or reservation.degraded:
            return
        reservation.settled = True
        now = self._clock()
        subject = reservation.subject
        for hold in reservation.holds:
            name = scope_id(hold.scope, subject.key_id)
            state = self._scope(subject, name)
            if hold.tpm is not None:
                level = state.tokens.current(hold.tpm, now) + reservation.tokens - tokens
                state.tokens.set(min(float(hold.tpm), level), now)
            if hold.lease:
                state.release(reservation.lease_id)
            if hold.monthly:
                used = self._month(subject.tenant_id, name, reservation.month)
                used[0] += tokens
                used[1] += cost_pico

    async def seed_month(
        self, tenant_id: str, month: str, tokens: int, cost_pico: int, key_id: str | None = None
    ) -> None:
        used = self._month(tenant_id, scope_id(seeded_scope(key_id), key_id), month)
        used[0], used[1] = max(used[0], tokens), max(used[1], cost_pico)

    async def remaining_budget(self, tenant_id: str, limits: LimitSpec) -> BudgetRemaining:
        state = self._scopes.get((tenant_id, "t"), _ScopeState())
        state.sweep(self._clock())
        used = self._months.get((tenant_id, "t", month_of(self._clock())), [0, 0])
        return BudgetRemaining(
            tokens=remaining(limits.monthly_tokens, used[0] + state.reserved_tokens),
            cost_pico=remaining(limits.monthly_cost_pico, used[1] + state.reserved_cost_pico),
        )

    async def aclose(self) -> None:
        return None
