"""Dedicated capacity: whose engines a request may reach, spill-over, unhealthy engines, the spec."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from gateway.config.pools import PoolSpec
from gateway.errors import NoHealthyEngineError
from gateway.routing.pool import EnginePool

URLS = ["http://e0", "http://e1", "http://e2"]


def pool(spill_over: bool = True, max_inflight: int | None = 2) -> EnginePool:
    """e0 is acme's, e1 and e2 are shared."""
    spec = PoolSpec(
        served_name="m",
        endpoints=URLS,
        dedicated={"acme": [0]},
        dedicated_spill_over=spill_over,
        max_inflight_per_engine=max_inflight,
    )
    return EnginePool.from_spec(spec)


async def test_dedicated_engine_is_never_picked_for_another_tenant() -> None:
    p = pool(max_inflight=None)
    picked = {(await p.acquire("other")).url for _ in range(50)}
    assert picked == {"http://e1", "http://e2"}
    p.shared[0].healthy = p.shared[1].healthy = False
    with pytest.raises(NoHealthyEngineError):
        await p.acquire("other")


async def test_dedicated_tenant_uses_its_own_engine_first() -> None:
    p = pool()
    assert [(await p.acquire("acme")).url for _ in range(2)] == ["http://e0", "http://e0"]
    assert p.endpoints[0].inflight == 2


async def test_spill_over_to_shared_when_own_engines_are_saturated_or_down() -> None:
    p = pool()
    p.endpoints[0].inflight = 2  # saturated
    assert (await p.acquire("acme")).dedicated_to is None
    p.endpoints[0].inflight = 0
    p.endpoints[0].healthy = False
    assert (await p.acquire("acme")).dedicated_to is None


async def test_without_spill_over_the_tenant_stays_on_its_own_engines() -> None:
    p = pool(spill_over=False)
    p.endpoints[0].inflight = 5  # past the limit: its own engine queues it, the shared ones never see it
    assert (await p.acquire("acme")).url == "http://e0"
    p.endpoints[0].healthy = False
    with pytest.raises(NoHealthyEngineError):
        await p.acquire("acme")


async def test_freed_dedicated_slot_goes_to_its_tenant_waiting_in_the_shared_queue() -> None:
    p = pool()
    for e in p.endpoints:
        e.inflight = 2
    waiter = asyncio.create_task(p.acquire("acme"))
    other = asyncio.create_task(p.acquire("other"))
    await asyncio.sleep(0)
    p.release(p.endpoints[0], "x")
    await asyncio.sleep(0)
    assert waiter.result().url == "http://e0" and not other.done()
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)


def test_spec_validates_dedicated_indices() -> None:
    with pytest.raises(ValidationError, match="no engine 3"):
        PoolSpec(served_name="m", endpoints=URLS, dedicated={"acme": [3]})
    with pytest.raises(ValidationError, match="dedicated to both acme and beta"):
        PoolSpec(served_name="m", endpoints=URLS, dedicated={"acme": [0], "beta": [1, 0]})
    launched = PoolSpec(served_name="m", replicas=2, dedicated={"acme": [1]})
    assert [launched.dedicated_owner(i) for i in range(2)] == [None, "acme"]
    with pytest.raises(ValidationError, match="no engine 2"):
        PoolSpec(served_name="m", replicas=2, dedicated={"acme": [2]})
