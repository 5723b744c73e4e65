"""The fair queue and a saturated pool: turns across tenants, bounds, giving up without leaks."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config.pools import PoolSpec, QueueSpec
from gateway.errors import EnginesBusyError, TenantQueueFullError
from gateway.routing.endpoint import Endpoint
from gateway.routing.fairqueue import FairQueue
from gateway.routing.pool import EnginePool


def saturated_pool(max_per_tenant: int = 100, max_total: int = 200, max_wait_s: float = 5) -> EnginePool:
    """One shared engine taking one request at a time, already busy."""
    spec = PoolSpec(
        served_name="m",
        endpoints=["http://e0"],
        max_inflight_per_engine=1,
        queue=QueueSpec(max_per_tenant=max_per_tenant, max_total=max_total, max_wait_s=max_wait_s),
    )
    pool = EnginePool.from_spec(spec)
    pool.endpoints[0].inflight = 1
    return pool


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_queue_serves_tenants_in_turn_and_new_tenants_first() -> None:
    queue = FairQueue("m", max_per_tenant=100, max_total=100, max_wait_s=1)
    for _ in range(3):
        queue.push("a")
    queue.push("b")
    queue.push("b")
    queue.push("c")
    order = []
    while (waiter := queue.pop_next()) is not None:
        order.append(waiter.tenant)
    assert order == ["a", "b", "c", "a", "b", "a"]
    assert queue.depth == 0


async def test_one_waiter_of_a_late_tenant_is_served_at_the_next_release() -> None:
    pool = saturated_pool()
    burst = [asyncio.create_task(pool.acquire("a")) for _ in range(50)]
    await settle()
    pool.release(pool.endpoints[0], "x")  # a's first waiter gets the slot
    await settle()
    late = asyncio.create_task(pool.acquire("b"))
    await settle()
    assert pool.queue is not None and pool.queue.depth == 50
    pool.release(pool.endpoints[0], "x")
    await settle()
    assert late.done() and late.result() is pool.endpoints[0]
    assert sum(t.done() for t in burst) == 1
    for task in burst:
        task.cancel()
    await asyncio.gather(*burst, return_exceptions=True)
    assert pool.queue.depth == 0
    assert pool.endpoints[0].inflight == 1  # b's slot only


async def test_bounds_refuse_with_retry_after() -> None:
    pool = saturated_pool(max_per_tenant=2, max_total=3)
    waiting = [asyncio.create_task(pool.acquire(t)) for t in ("a", "a", "b")]
    await settle()
    with pytest.raises(TenantQueueFullError) as per_tenant:
        await pool.acquire("a")
    assert per_tenant.value.status_code == 429 and per_tenant.value.code == "rate_limit_exceeded"
    assert per_tenant.value.headers["retry-after"] == "1"
    with pytest.raises(EnginesBusyError) as full:
        await pool.acquire("c")
    assert full.value.status_code == 503 and full.value.error_type == "service_unavailable"
    assert full.value.headers["retry-after"] == "1"
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_waiting_too_long_is_a_503_and_leaves_the_queue() -> None:
    pool = saturated_pool(max_wait_s=0.05)
    with pytest.raises(EnginesBusyError, match="stayed busy"):
        await pool.acquire("a")
    assert pool.queue is not None and pool.queue.depth == 0
    assert pool.endpoints[0].inflight == 1


async def test_cancelled_waiters_leak_no_slot() -> None:
    pool = saturated_pool()
    endpoint = pool.endpoints[0]
    first, second = asyncio.create_task(pool.acquire("a")), asyncio.create_task(pool.acquire("b"))
    await settle()
    first.cancel()  # gives up while waiting
    await asyncio.gather(first, return_exceptions=True)
    pool.release(endpoint, "x")  # the slot goes to b, not to the cancelled a
    await settle()
    assert second.result() is endpoint and endpoint.inflight == 1
    # A waiter granted a slot in the same tick it is cancelled passes the slot on.
    third, fourth = asyncio.create_task(pool.acquire("a")), asyncio.create_task(pool.acquire("c"))
    await settle()
    pool.release(endpoint, "x")  # granted to a...
    third.cancel()  # ...which gives up before it runs again
    await asyncio.gather(third, return_exceptions=True)
    await settle()
    assert fourth.result() is endpoint and endpoint.inflight == 1
    pool.release(endpoint, "x")
    assert endpoint.inflight == 0 and pool.queue is not None and pool.queue.depth == 0


async def test_nothing_waits_without_a_limit() -> None:
    pool = EnginePool.from_spec(PoolSpec(served_name="m", endpoints=["http://e0"]))
    for _ in range(100):
        await pool.acquire("a")
    assert pool.endpoints[0].inflight == 100
    assert pool.queue is not None and pool.queue.depth == 0  # it only holds requests for a restart


def test_endpoint_comes_back_healthy_serves_waiters() -> None:
    async def scenario() -> None:
        pool = saturated_pool()
        pool.endpoints.append(extra := Endpoint("m", "http://e1", healthy=False))
        pool.shared.append(extra)
        waiter = asyncio.create_task(pool.acquire("a"))
        await settle()
        extra.healthy = True
        pool.grant_waiting()
        await settle()
        assert waiter.result() is extra

    asyncio.run(scenario())


async def test_fair_share_keeps_a_slot_free_for_a_newcomer_while_a_tenant_bursts() -> None:
    spec = PoolSpec(served_name="m", endpoints=["http://e0"], max_inflight_per_engine=4)
    pool = EnginePool.from_spec(spec)
    await pool.acquire("b")  # b has been active: two tenants share the 4 slots, 2 each
    pool.release(pool.endpoints[0], "b")
    burst = [asyncio.create_task(pool.acquire("a")) for _ in range(10)]
    await settle()
    assert sum(t.done() for t in burst) == 2 and pool.endpoints[0].inflight == 2  # a holds its share
    newcomer = await asyncio.wait_for(pool.acquire("b"), 1)  # served at once, no release needed
    assert newcomer is pool.endpoints[0] and pool.endpoints[0].inflight == 3
    done = next(t for t in burst if t.done())
    pool.release(done.result(), "a")  # one of a's ends: a may take that slot again, not more
    await settle()
    assert sum(t.done() for t in burst) == 3 and pool.endpoints[0].inflight == 3
    for task in burst:
        task.cancel()
    await asyncio.gather(*burst, return_exceptions=True)


async def test_a_tenant_alone_uses_every_slot() -> None:
    pool = EnginePool.from_spec(PoolSpec(served_name="m", endpoints=["http://e0"], max_inflight_per_engine=4))
    held = [await asyncio.wait_for(pool.acquire("a"), 1) for _ in range(4)]
    assert len(held) == 4 and pool.endpoints[0].inflight == 4
