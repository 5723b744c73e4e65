"""What to do when the limiter's backend (Redis) fails: admit unchecked (open) or refuse (closed).

Either way each failure is counted by operation (``failures``, and ``on_error`` for a metrics
counter) and logged as a warning at most once per ``log_interval_s``, with how many went unlogged.
Settling never raises: the response has already been served, so a lost settlement is only logged.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from gateway.admission.limits.model import (
    BudgetRemaining,
    Limiter,
    RateLimitState,
    Reservation,
    Subject,
)
from gateway.errors import LimiterUnavailableError
from gateway.limit_spec import LimitSpec
from gateway.utc import month_of

logger = logging.getLogger("gateway.admission.limits")


class FailPolicyLimiter:
    """Wraps a limiter; ``errors`` are the exceptions that mean "backend down", not "limit reached"."""

    def __init__(
        self,
        inner: Limiter,
        *,
        fail_open: bool,
        errors: tuple[type[Exception], ...],
        log_interval_s: float = 30.0,
        on_error: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.fail_open = fail_open
        self.failures: Counter[str] = Counter()  # by operation: admit, settle, seed, budget
        self._errors = errors
        self._log_interval_s = log_interval_s
        self._on_error = on_error
        self._clock = clock
        self._logged_at: float | None = None
        self._unlogged = 0

    @property
    def failures_total(self) -> int:
        return sum(self.failures.values())

    def _failed(self, operation: str, exc: Exception) -> None:
        self.failures[operation] += 1
        if self._on_error is not None:
            self._on_error(operation)
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self._log_interval_s:
            self._unlogged += 1
            return
        logger.warning(
            "rate limiter backend failed during %s (%s: %s); failing %s; %d failures since the last warning",
            operation,
            type(exc).__name__,
            exc,
            "open" if self.fail_open else "closed",
            self._unlogged,
        )
        self._logged_at, self._unlogged = now, 0

    def _unavailable(self, exc: Exception) -> LimiterUnavailableError:
        error = LimiterUnavailableError("Rate limiting is temporarily unavailable; please retry shortly.")
        error.headers["retry-after"] = "1"
        error.__cause__ = exc
        return error

    async def admit(
        self,
        subject: Subject,
        limits: LimitSpec,
        key_limits: LimitSpec | None = None,
        *,
        tokens: int,
        cost_pico: int = 0,
    ) -> Reservation:
        try:
            return await self.inner.admit(subject, limits, key_limits, tokens=tokens, cost_pico=cost_pico)
        except self._errors as exc:
            self._failed("admit", exc)
            if not self.fail_open:
                raise self._unavailable(exc) from exc
            return Reservation(
                subject=subject,
                lease_id="",
                month=month_of(time.time()),
                tokens=tokens,
                cost_pico=cost_pico,
                holds=(),
                state=RateLimitState(),
                degraded=True,
            )

    async def settle(self, reservation: Reservation, tokens: int, cost_pico: int) -> None:
        try:
            await self.inner.settle(reservation, tokens, cost_pico)
        except self._errors as exc:
            self._failed("settle", exc)

    async def seed_month(
        self, tenant_id: str, month: str, tokens: int, cost_pico: int, key_id: str | None = None
    ) -> None:
        try:
            await self.inner.seed_month(tenant_id, month, tokens, cost_pico, key_id)
        except self._errors as exc:
            self._failed("seed", exc)
            if not self.fail_open:
                raise self._unavailable(exc) from exc

    async def remaining_budget(self, tenant_id: str, limits: LimitSpec) -> BudgetRemaining:
        """Raises ``LimiterUnavailableError`` in both modes: an unknown budget is not an unlimited one."""
        try:
            return await self.inner.remaining_budget(tenant_id, limits)
        except self._errors as exc:
            self._failed("budget", exc)
            raise self._unavailable(exc) from exc

    async def aclose(self) -> None:
        await self.inner.aclose()
