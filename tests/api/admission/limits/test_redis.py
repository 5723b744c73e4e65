"""What only the Redis limiter does: the server's clock, key layout and expiry, one round trip per
call, and limits that hold across processes hammering the same tenant at once."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
from collections.abc import AsyncIterator
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.admission.limits import LimitExceeded, RedisLimiter, Subject
from gateway.limit_spec import LimitSpec
from tests.support.redis import redis_url, require_redis, temporary_prefix

ACME = Subject("ten_acme", "key_a")
PROCESSES = 3


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    require_redis()
    async with temporary_prefix("test-limits") as name:
        yield name


async def test_buckets_refill_on_the_redis_servers_clock(prefix: str) -> None:
    limiter = RedisLimiter.from_url(redis_url(), prefix=prefix)  # no clock: Redis TIME
    limits = LimitSpec(rpm=120)  # two per second
    try:
        admitted, refusal = 0, None
        while refusal is None and admitted < 240:  # the bucket refills while this runs: go until empty
            try:
                await limiter.admit(ACME, limits, tokens=0)
                admitted += 1
            except LimitExceeded as error:
                refusal = error
        assert refusal is not None and 120 <= admitted < 240
        assert 0 < (refusal.retry_after_s or 0) <= 0.5
        await asyncio.sleep((refusal.retry_after_s or 0) + 0.05)
        await limiter.admit(ACME, limits, tokens=0)
    finally:
        await limiter.aclose()


async def test_keys_share_the_tenants_hash_slot_and_expire(prefix: str) -> None:
    limiter = RedisLimiter.from_url(redis_url(), prefix=prefix, lease_ttl_s=60)
    tenant = LimitSpec(rpm=10, tpm=1000, max_concurrent=4, monthly_tokens=10**6)
    try:
        reservation = await limiter.admit(ACME, tenant, LimitSpec(max_concurrent=1), tokens=100)
        await limiter.settle(reservation, 50, 7)
        async with Redis.from_url(redis_url()) as client:
            keys = sorted([key.decode() async for key in client.scan_iter(match=f"{prefix}*")])
            assert keys == [
                f"{prefix}{{ten_acme}}:k:key_a:state",
                f"{prefix}{{ten_acme}}:t:month:{reservation.month}",
                f"{prefix}{{ten_acme}}:t:state",
            ]  # the leases were released: their sorted sets are gone
            assert {key_slot(key.encode()) for key in keys} == {key_slot(b"ten_acme")}
            for key in keys:
                assert 0 < await client.pttl(key) <= 33 * 86_400_000
            assert await client.pttl(keys[2]) <= 60_000 + 60_000  # lease TTL + a minute of refill
    finally:
        await limiter.aclose()


async def test_one_round_trip_per_admit_and_per_settle(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = Redis.from_url(redis_url())
    limiter = RedisLimiter(client, prefix=prefix)
    tenant = LimitSpec(rpm=10, tpm=1000, max_concurrent=4, monthly_tokens=10**6, monthly_cost_pico=10**9)
    try:
        await limiter.settle(
            await limiter.admit(ACME, tenant, LimitSpec(rpm=5), tokens=1), 1, 1
        )  # loads scripts
        sent: list[str] = []
        execute = client.execute_command

        async def counted(*args: Any, **options: Any) -> Any:
            sent.append(str(args[0]))
            return await execute(*args, **options)

        monkeypatch.setattr(client, "execute_command", counted)
        reservation = await limiter.admit(ACME, tenant, LimitSpec(rpm=5), tokens=100, cost_pico=10)
        await limiter.settle(reservation, 80, 8)
        assert sent == ["EVALSHA", "EVALSHA"]
    finally:
        await limiter.aclose()


# Tenant → its limits; each replica sends ATTEMPTS requests of 10 tokens to every tenant at once.
BURSTS = {
    "ten_rpm": LimitSpec(rpm=20),
    "ten_tpm": LimitSpec(tpm=400),  # 40 requests of 10 tokens
    "ten_concurrency": LimitSpec(max_concurrent=25),  # never settled: exact
    "ten_all": LimitSpec(rpm=30, tpm=10_000, max_concurrent=50, monthly_tokens=250, monthly_cost_pico=10**6),
}
ATTEMPTS = 80


def _hammer(url: str, prefix: str, barrier: Barrier, results: Queue[dict[str, int]]) -> None:
    """One replica: wait for the others, then try every burst at once, 16 admissions in flight."""

    async def run() -> dict[str, int]:
        limiter = RedisLimiter.from_url(url, prefix=prefix, timeout_s=5)
        try:
            await limiter.admit(Subject("ten_warmup", "key"), LimitSpec(rpm=10**6), tokens=0)  # connect, load
            barrier.wait()
            gate = asyncio.Semaphore(16)

            async def one(tenant: str) -> str | None:
                async with gate:
                    try:
                        await limiter.admit(Subject(tenant, "key"), BURSTS[tenant], tokens=10, cost_pico=1)
                        return tenant
                    except LimitExceeded:
                        return None

            admitted = await asyncio.gather(*(one(tenant) for tenant in BURSTS for _ in range(ATTEMPTS)))
            return {tenant: admitted.count(tenant) for tenant in BURSTS}
        finally:
            await limiter.aclose()

    results.put(asyncio.run(run()))


def _result(
    results: Queue[dict[str, int]], processes: list[BaseProcess], timeout_s: float = 60
) -> dict[str, int]:
    """The next replica's counts; fails at once when a replica died instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            crashed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if crashed:
                pytest.fail(f"a replica process failed with exit code {crashed[0]}")
    pytest.fail(f"no result from the replicas within {timeout_s} s")


def _burst(prefix: str) -> dict[str, int]:
    """Start the replicas as OS processes and add up what each tenant got admitted."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(PROCESSES, timeout=60), context.Queue()
    processes = [
        context.Process(target=_hammer, args=(redis_url(), prefix, barrier, results))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        counts = [_result(results, processes) for _ in processes]
        return {tenant: sum(count[tenant] for count in counts) for tenant in BURSTS}
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


async def test_limits_hold_across_processes(prefix: str) -> None:
    admitted = await asyncio.to_thread(_burst, prefix)

    # Buckets refill on the server's clock while the burst runs (20/min: one every 3 s), so one more
    # request may fit; leases and monthly budgets don't refill.
    assert 20 <= admitted["ten_rpm"] <= 21
    assert 40 <= admitted["ten_tpm"] <= 41
    assert admitted["ten_concurrency"] == 25
    assert admitted["ten_all"] == 25  # 250 monthly tokens, 10 reserved each
