"""The real Redis for tests: each test (or benchmark run) works under its own key prefix, deleted after.

The server is ``$GATEWAY_TEST_REDIS_URL``, by default the local one. When that variable is unset and
nothing answers at the default address the Redis tests are skipped; when it is set, an unreachable
server fails them.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis
from redis.asyncio import Redis

URL_VARIABLE = "GATEWAY_TEST_REDIS_URL"
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    return os.environ.get(URL_VARIABLE) or DEFAULT_URL


@functools.cache
def _unreachable_reason() -> str | None:
    try:
        with redis.Redis.from_url(redis_url(), socket_connect_timeout=3) as client:
            client.ping()
            return None
    except redis.RedisError as exc:
        return f"no Redis at {redis_url()} ({exc}); set {URL_VARIABLE} to run these"


def require_redis() -> None:
    """Skip the calling test when the default server is absent; fail when a configured one is."""
    reason = _unreachable_reason()
    if reason is not None:
        if os.environ.get(URL_VARIABLE):
            pytest.fail(reason)
        pytest.skip(reason)


async def delete_prefix(prefix: str) -> int:
    """Delete every key under ``prefix``; how many there were."""
    async with Redis.from_url(redis_url()) as client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        return len(keys)


@asynccontextmanager
async def temporary_prefix(name: str = "test") -> AsyncIterator[str]:
    """A unique key prefix (no braces: the tenant is the hash tag); its keys are deleted afterwards."""
    prefix = f"{name}:{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        await delete_prefix(prefix)
