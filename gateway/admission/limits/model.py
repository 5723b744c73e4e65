"""The limiter's vocabulary: quotas, who is limited, what admission took, and why it refused.

What a scope may use is a ``gateway.limit_spec.LimitSpec``, the same object the records carry.

A request is checked against its tenant's limits (buckets shared by every key of the tenant) and,
when its key has limits of its own, against the key's limits too (buckets of that key alone). So a
key override can only tighten what the key may use: the tenant-wide limits still hold for the
tenant's total across all its keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.errors import RateLimitError
from gateway.limit_spec import LimitSpec

Reason = Literal["requests", "tokens", "concurrency", "monthly_tokens", "monthly_cost"]
Scope = Literal["tenant", "key"]


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a request is charged to: a tenant, through one of its keys."""

    tenant_id: str
    key_id: str


@dataclass(frozen=True, slots=True)
class Quota:
    """One rate dimension as reported to the client: the binding limit, what is left, when it is full."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """What the ``x-ratelimit-*`` headers report; a dimension without a limit is left out."""

    requests: Quota | None = None
    tokens: Quota | None = None

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, quota in (("requests", self.requests), ("tokens", self.tokens)):
            if quota is not None:
                headers[f"x-ratelimit-limit-{name}"] = str(quota.limit)
                headers[f"x-ratelimit-remaining-{name}"] = str(quota.remaining)
                headers[f"x-ratelimit-reset-{name}"] = format_duration(quota.reset_s)
        return headers


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes resets (Go's ``time.Duration``): ``20ms``, ``1s``, ``6m0s``, ``1m2.5s``."""
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    second = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{second}s"
    if minutes:
        return f"{minutes}m{second}s"
    return f"{second}s"


_WHAT = {
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "concurrency": "concurrent requests",
    "monthly_tokens": "monthly tokens",
    "monthly_cost": "monthly cost (picodollars)",
}


# OpenAI's type and code for a spent budget: its SDKs map it to RateLimitError like any 429.
INSUFFICIENT_QUOTA = "insufficient_quota"
_BUDGETS: tuple[Reason, ...] = ("monthly_tokens", "monthly_cost")


class LimitExceeded(RateLimitError):
    """429 ``rate_limit_exceeded``, with ``Retry-After`` and the ``x-ratelimit-*`` headers set.

    A monthly budget is OpenAI's ``insufficient_quota`` instead (type and code), and it, like a
    request larger than a limit (``retry_after_s`` None), carries ``x-should-retry: false``: the
    OpenAI SDKs retry a 429 unless told not to, and no retry within the minute can succeed.

    ``reason`` and ``scope`` are bounded values meant for ``gateway_ratelimited_total{tenant,reason}``.
    ``retry_after_s`` is None when waiting cannot help: the request alone is larger than the limit.
    """

    def __init__(
        self,
        reason: Reason,
        scope: Scope,
        limit: int,
        requested: int,
        retry_after_s: float | None,
        state: RateLimitState,
    ) -> None:
        who = "tenant" if scope == "tenant" else "API key"
        quota = reason in _BUDGETS
        amounts = f"limit {limit}, requested {requested}."
        if quota:
            message = f"Not enough {_WHAT[reason]} left in this {who}'s budget: {amounts}"
        else:
            message = f"Rate limit reached for {_WHAT[reason]} of this {who}: {amounts}"
        if retry_after_s is None:
            message += " The request alone is larger than the limit, so retrying cannot help: reduce"
            message += " max_tokens or the prompt."
        elif quota:
            message += f" The budget renews at 00:00 UTC on the 1st, in {format_duration(retry_after_s)}."
        else:
            message += f" Please try again in {format_duration(retry_after_s)}."
        super().__init__(message, code=INSUFFICIENT_QUOTA if quota else None)
        if quota:
            self.error_type = INSUFFICIENT_QUOTA
        if quota or retry_after_s is None:
            self.headers["x-should-retry"] = "false"
        self.reason: Reason = reason
        self.scope: Scope = scope
        self.limit = limit
        self.requested = requested
        self.retry_after_s = retry_after_s
        self.state = state
        self.headers.update(state.headers())
        if retry_after_s is not None:
            self.headers["retry-after"] = str(max(1, math.ceil(retry_after_s)))
            self.headers["retry-after-ms"] = str(max(1, math.ceil(retry_after_s * 1000)))


@dataclass(frozen=True, slots=True)
class Hold:
    """What admission took in one scope, so settling gives back exactly that."""

    scope: Scope
    tpm: int | None  # the token bucket's limit at admission; None: no token bucket was debited
    lease: bool  # a lease was taken (a concurrency slot and/or a monthly reservation)
    monthly: bool  # usage counts toward this scope's monthly counters


@dataclass(slots=True)
class Reservation:
    """What ``admit`` took for one request; hand it to ``settle`` exactly once when the request ends."""

    subject: Subject
    lease_id: str
    month: str  # UTC month of admission, "2026-11": settled usage counts toward it
    tokens: int  # reserved: estimated prompt tokens + max_tokens
    cost_pico: int  # reserved cost estimate (0 when the caller gave none)
    holds: tuple[Hold, ...]
    state: RateLimitState
    degraded: bool = False  # admitted unchecked: the limiter's backend was down and the policy fails open
    settled: bool = False


@dataclass(frozen=True, slots=True)
class BudgetRemaining:
    """What a tenant may still spend this month (used and reserved subtracted); None: no budget."""

    tokens: int | None
    cost_pico: int | None


class Limiter(Protocol):
    """Admission control: reserve at admission, reconcile when the request ends.

    ``admit`` raises ``LimitExceeded`` (429) when any limit of the tenant or of the key refuses; it
    takes nothing in that case. ``settle`` gives back what the request reserved but did not use (an
    aborted request settles with what it used so far) or takes the excess when it used more.
    """

    async def admit(
        self,
        subject: Subject,
        limits: LimitSpec,
        key_limits: LimitSpec | None = None,
        *,
        tokens: int,
        cost_pico: int = 0,
    ) -> Reservation: ...

    async def settle(self, reservation: Reservation, tokens: int, cost_pico: int) -> None: ...

    async def seed_month(
        self, tenant_id: str, month: str, tokens: int, cost_pico: int, key_id: str | None = None
    ) -> None:
        """Raise the month's usage counters to at least the ledger's totals (idempotent across replicas)."""
        ...

    async def remaining_budget(self, tenant_id: str, limits: LimitSpec) -> BudgetRemaining: ...

    async def aclose(self) -> None: ...
