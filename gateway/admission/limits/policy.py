"""The admission rules both limiters share: refill, the checks, refusals and the reported state.

A limiter reads each scope's counters into a ``ScopeView`` (before this request), and these
functions decide from it. ``InProcessLimiter`` decides with them directly; ``RedisLimiter`` decides
atomically in Lua with the same rules (see ``gateway.admission.limits.lua``) and uses them to explain the
result, so both report refusals and headers identically.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from gateway.admission.limits.model import Hold, LimitExceeded, Quota, RateLimitState, Reason, Scope
from gateway.limit_spec import LimitSpec
from gateway.utc import month_end

MINUTE_S = 60.0
CONCURRENCY_RETRY_S = 1.0  # a slot frees when some request ends: nothing better to promise


@dataclass(frozen=True, slots=True)
class ScopeView:
    """One scope's counters at admission, before this request; levels are refilled to ``now``."""

    scope: Scope
    limits: LimitSpec
    requests_level: float = 0.0  # RPM bucket (meaningful when limits.rpm is set); may be < 0
    tokens_level: float = 0.0  # TPM bucket; negative after an overrun, paid back by refill
    concurrent: int = 0  # live leases
    month_tokens: int = 0  # used + reserved this month
    month_cost_pico: int = 0


@dataclass(frozen=True, slots=True)
class Demand:
    """What one request asks for, and when."""

    tokens: int
    cost_pico: int
    now: float
    month: str


def require_amounts(tokens: int, cost_pico: int) -> None:
    if tokens < 0 or cost_pico < 0:
        raise ValueError(f"tokens and cost must be ≥ 0, not {tokens} and {cost_pico}")


def scopes(limits: LimitSpec, key_limits: LimitSpec | None) -> list[tuple[Scope, LimitSpec]]:
    """The scopes a request is checked in: its tenant's, and its key's when the key has limits."""
    found: list[tuple[Scope, LimitSpec]] = []
    if not limits.unlimited:
        found.append(("tenant", limits))
    if key_limits is not None and not key_limits.unlimited:
        found.append(("key", key_limits))
    return found


def scope_id(scope: Scope, key_id: str | None) -> str:
    """The scope's name within its tenant's namespace: ``t`` for the tenant, ``k:<key id>`` for a key."""
    return "t" if scope == "tenant" else f"k:{key_id}"


def seeded_scope(key_id: str | None) -> Scope:
    return "tenant" if key_id is None else "key"


def hold_for(scope: Scope, limits: LimitSpec) -> Hold:
    return Hold(scope=scope, tpm=limits.tpm, lease=limits.needs_lease, monthly=limits.monthly)


def new_lease_id() -> str:
    return secrets.token_hex(8)


def refill(level: float, updated: float, limit: int, now: float) -> float:
    """A bucket's level at ``now``: limit/60 per second since ``updated``, never above ``limit``."""
    return min(float(limit), level + max(0.0, now - updated) * limit / MINUTE_S)


def _budget_fits(taken: int, need: int, budget: int) -> bool:
    """Admit while something is left and this request's estimate fits in what is left."""
    return taken < budget and taken + need <= budget


@dataclass(frozen=True, slots=True)
class _Failure:
    reason: Reason
    limit: int
    requested: int
    retry_after_s: float | None  # None: the request alone is larger than the limit

    @property
    def wait(self) -> float:
        return math.inf if self.retry_after_s is None else self.retry_after_s


def _wait(missing: float, limit: int) -> float | None:
    """How long a bucket refilling at limit/60 per second takes to gain ``missing``; None: never."""
    return missing * MINUTE_S / limit if limit else None


def _failures(view: ScopeView, demand: Demand) -> list[_Failure]:
    """Every check of ``view`` that refuses ``demand``."""
    limits, found = view.limits, []
    if limits.max_concurrent is not None and view.concurrent >= limits.max_concurrent:
        found.append(_Failure("concurrency", limits.max_concurrent, 1, CONCURRENCY_RETRY_S))
    if limits.rpm is not None and view.requests_level < 1:
        found.append(_Failure("requests", limits.rpm, 1, _wait(1 - view.requests_level, limits.rpm)))
    if limits.tpm is not None and view.tokens_level < demand.tokens:
        missing = demand.tokens - view.tokens_level
        wait = None if demand.tokens > limits.tpm else _wait(missing, limits.tpm)
        found.append(_Failure("tokens", limits.tpm, demand.tokens, wait))
    until_next_month = max(1.0, month_end(demand.month) - demand.now)
    budget = limits.monthly_tokens
    if budget is not None and not _budget_fits(view.month_tokens, demand.tokens, budget):
        found.append(_Failure("monthly_tokens", budget, demand.tokens, until_next_month))
    budget = limits.monthly_cost_pico
    if budget is not None and not _budget_fits(view.month_cost_pico, demand.cost_pico, budget):
        found.append(_Failure("monthly_cost", budget, demand.cost_pico, until_next_month))
    return found


def refusal(views: list[ScopeView], demand: Demand) -> LimitExceeded | None:
    """The refusal to raise, or None to admit: the failed check with the longest wait wins."""
    worst: tuple[Scope, _Failure] | None = None
    for view in views:
        for failure in _failures(view, demand):
            if worst is None or failure.wait > worst[1].wait:
                worst = (view.scope, failure)
    if worst is None:
        return None
    scope, failure = worst
    state = rate_state(views, demand, admitted=False)
    return LimitExceeded(
        failure.reason, scope, failure.limit, failure.requested, failure.retry_after_s, state
    )


def _quota(limit: int, level: float) -> Quota:
    reset_s = max(0.0, (limit - level) * MINUTE_S / limit) if limit else 0.0
    return Quota(limit=limit, remaining=max(0, math.floor(level)), reset_s=reset_s)


def _binding(quotas: list[Quota]) -> Quota | None:
    """The quota the client runs into first: least remaining, then the smaller limit."""
    return min(quotas, key=lambda quota: (quota.remaining, quota.limit), default=None)


def rate_state(views: list[ScopeView], demand: Demand, admitted: bool) -> RateLimitState:
    """The headers' view: after this request's debit when admitted, before it when refused."""
    requests, tokens = [], []
    for view in views:
        if view.limits.rpm is not None:
            level = view.requests_level - (1 if admitted else 0)
            requests.append(_quota(view.limits.rpm, level))
        if view.limits.tpm is not None:
            level = view.tokens_level - (demand.tokens if admitted else 0)
            tokens.append(_quota(view.limits.tpm, level))
    return RateLimitState(requests=_binding(requests), tokens=_binding(tokens))


def remaining(limit: int | None, taken: int) -> int | None:
    return None if limit is None else max(0, limit - taken)
