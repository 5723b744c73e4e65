"""When Redis is unreachable: fail open (admit, count, warn now and then) or closed (503)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import RedisError

from gateway.admission.limits import (
    FailPolicyLimiter,
    Hold,
    InProcessLimiter,
    Limiter,
    LimitExceeded,
    RateLimitState,
    Reservation,
    Subject,
    create_limiter,
)
from gateway.errors import LimiterUnavailableError
from gateway.limit_spec import LimitSpec
from tests.support.clock import FakeClock
from tests.support.processes import free_port
from tests.support.redis import redis_url, require_redis, temporary_prefix

ACME = Subject("ten_acme", "key_a")
LIMITS = LimitSpec(rpm=10, max_concurrent=2, monthly_tokens=1000)


@pytest.fixture
async def nowhere() -> AsyncIterator[str]:
    """A Redis URL where nothing listens."""
    yield f"redis://127.0.0.1:{free_port()}/0"


def held(subject: Subject = ACME) -> Reservation:
    """A reservation as a healthy Redis would have granted it."""
    return Reservation(
        subject=subject,
        lease_id="0123456789abcdef",
        month="2026-11",
        tokens=100,
        cost_pico=0,
        holds=(Hold("tenant", None, lease=True, monthly=True),),
        state=RateLimitState(),
    )


async def test_fail_open_admits_unchecked_counts_and_warns_once(
    nowhere: str, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[str] = []
    limiter = create_limiter(nowhere, fail_open=True, timeout_s=0.2, on_error=errors.append)
    assert isinstance(limiter, FailPolicyLimiter)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.admission.limits"):
            reservations = [await limiter.admit(ACME, LIMITS, tokens=10) for _ in range(3)]
            await limiter.settle(reservations[0], 10, 0)  # degraded: nothing to give back, no call
            await limiter.settle(held(), 10, 0)  # a real reservation whose settle is lost
            await limiter.seed_month("ten_acme", "2026-11", 1, 1)
        assert all(r.degraded and r.holds == () and r.state.headers() == {} for r in reservations)
        assert dict(limiter.failures) == {"admit": 3, "settle": 1, "seed": 1}
        assert limiter.failures_total == 5 and errors == ["admit"] * 3 + ["settle", "seed"]
        warnings = [r for r in caplog.records if r.name == "gateway.admission.limits"]
        assert len(warnings) == 1 and "failing open" in warnings[0].getMessage()
        with pytest.raises(LimiterUnavailableError):
            await limiter.remaining_budget("ten_acme", LIMITS)  # unknown is not unlimited
    finally:
        await limiter.aclose()


async def test_fail_closed_refuses_with_503(nowhere: str) -> None:
    limiter = create_limiter(nowhere, fail_open=False, timeout_s=0.2)
    try:
        with pytest.raises(LimiterUnavailableError) as caught:
            await limiter.admit(ACME, LIMITS, tokens=10)
        error = caught.value
        assert error.status_code == 503 and error.headers == {"retry-after": "1"}
        assert error.to_dict()["error"] == {
            "message": "Rate limiting is temporarily unavailable; please retry shortly.",
            "type": "service_unavailable",
            "param": None,
            "code": "rate_limiter_unavailable",
        }
        assert isinstance(error.__cause__, RedisError)
        with pytest.raises(LimiterUnavailableError):
            await limiter.seed_month("ten_acme", "2026-11", 1, 1)
        await limiter.settle(held(), 10, 0)  # the response is served: settling never raises
    finally:
        await limiter.aclose()


async def test_warnings_repeat_after_the_interval_with_the_count_in_between(
    nowhere: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(0)
    inner = create_limiter(nowhere, fail_open=True, timeout_s=0.2)
    assert isinstance(inner, FailPolicyLimiter)
    limiter = FailPolicyLimiter(
        inner.inner, fail_open=True, errors=(RedisError,), log_interval_s=30, clock=clock
    )
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.admission.limits"):
            for _ in range(4):
                await limiter.admit(ACME, LIMITS, tokens=1)
                clock.advance(10)
        messages = [r.getMessage() for r in caplog.records if r.name == "gateway.admission.limits"]
        assert len(messages) == 2 and messages[1].endswith("; 2 failures since the last warning")
    finally:
        await limiter.aclose()


async def test_limits_still_refuse_through_the_policy() -> None:
    require_redis()
    async with temporary_prefix("test-limits") as prefix:
        limiter = create_limiter(redis_url(), fail_open=True, prefix=prefix)
        try:
            await limiter.admit(ACME, LimitSpec(rpm=1), tokens=0)
            with pytest.raises(LimitExceeded):
                await limiter.admit(ACME, LimitSpec(rpm=1), tokens=0)
            assert isinstance(limiter, FailPolicyLimiter) and limiter.failures_total == 0
        finally:
            await limiter.aclose()


def test_without_a_redis_url_the_limiter_is_in_process() -> None:
    limiter: Limiter = create_limiter(None, fail_open=False)
    assert isinstance(limiter, InProcessLimiter)
