"""A fresh limiter per test for each implementation, on one fake clock; Redis under its own prefix."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from gateway.admission.limits import InProcessLimiter, Limiter, RedisLimiter
from tests.support.clock import FakeClock
from tests.support.redis import redis_url, require_redis, temporary_prefix

LEASE_TTL_S = 900.0
MID_NOVEMBER = dt.datetime(2026, 11, 15, 12, 0, tzinfo=dt.UTC).timestamp()


@asynccontextmanager
async def _in_process(clock: FakeClock) -> AsyncIterator[Limiter]:
    yield InProcessLimiter(lease_ttl_s=LEASE_TTL_S, clock=clock)


@asynccontextmanager
async def _redis(clock: FakeClock) -> AsyncIterator[Limiter]:
    require_redis()
    async with temporary_prefix("test-limits") as prefix:
        limiter = RedisLimiter.from_url(redis_url(), prefix=prefix, lease_ttl_s=LEASE_TTL_S, clock=clock)
        try:
            yield limiter
        finally:
            await limiter.aclose()


IMPLEMENTATIONS: dict[str, Callable[[FakeClock], AbstractAsyncContextManager[Limiter]]] = {
    "in_process": _in_process,
    "redis": _redis,
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(MID_NOVEMBER)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def limiter(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Limiter]:
    async with IMPLEMENTATIONS[request.param](clock) as implementation:
        yield implementation
