"""Per-tenant quotas (RPM, TPM, concurrency, monthly tokens and cost) with optional per-key limits.

Reserve, then reconcile: ``admit`` reserves the estimated prompt tokens plus ``max_tokens`` (and a
cost estimate when given) or raises ``LimitExceeded`` (429); ``settle`` gives back what the request
did not use, or takes what it used beyond the reservation, and counts the usage toward the month.

    limiter = create_limiter(settings.redis_url, fail_open=True)
    reservation = await limiter.admit(Subject(tenant_id, key_id), tenant_limits, key_limits, tokens=n)
    try:
        ...  # serve; add reservation.state.headers() to the response
    finally:
        await limiter.settle(reservation, used_tokens, cost_pico)

``InProcessLimiter`` is the default (one replica); ``RedisLimiter`` shares the limits between
replicas and is wrapped in ``FailPolicyLimiter`` for when Redis is down.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.exceptions import RedisError

from gateway.admission.limits.failpolicy import FailPolicyLimiter
from gateway.admission.limits.local import InProcessLimiter
from gateway.admission.limits.model import (
    BudgetRemaining,
    Hold,
    Limiter,
    LimitExceeded,
    Quota,
    RateLimitState,
    Reason,
    Reservation,
    Scope,
    Subject,
    format_duration,
)
from gateway.admission.limits.redis_limiter import RedisLimiter

__all__ = [
    "BudgetRemaining",
    "FailPolicyLimiter",
    "Hold",
    "InProcessLimiter",
    "LimitExceeded",
    "Limiter",
    "Quota",
    "RateLimitState",
    "Reason",
    "RedisLimiter",
    "Reservation",
    "Scope",
    "Subject",
    "create_limiter",
    "format_duration",
]


def create_limiter(
    redis_url: str | None,
    fail_open: bool,
    *,
    prefix: str = "gw:limits:",
    lease_ttl_s: float = 900.0,
    timeout_s: float = 0.5,
    log_interval_s: float = 30.0,
    on_error: Callable[[str], None] | None = None,
) -> Limiter:
    """The in-process limiter without a Redis URL; else the Redis one under the fail policy."""
    if redis_url is None:
        return InProcessLimiter(lease_ttl_s=lease_ttl_s)
    shared = RedisLimiter.from_url(redis_url, timeout_s=timeout_s, prefix=prefix, lease_ttl_s=lease_ttl_s)
    return FailPolicyLimiter(
        shared,
        fail_open=fail_open,
        errors=(RedisError, OSError),
        log_interval_s=log_interval_s,
        on_error=on_error,
    )
