"""When no engine is up: requests are held while one is expected back, the last engine is never
taken out by one request's error (on a fake clock; probes are scripted, nothing is sent)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from gateway.config.pools import PoolSpec
from gateway.errors import NoHealthyEngineError
from gateway.metrics import GatewayMetrics
from gateway.routing.endpoint import Endpoint
from gateway.routing.health import EjectionPolicy, HealthChecker
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from tests.support.clock import FakeClock

URLS = ["http://e0", "http://e1"]


@dataclass
class Setup:
    pool: EnginePool
    router: Router
    checker: HealthChecker
    metrics: GatewayMetrics
    clock: FakeClock
    up: dict[str, bool] = field(default_factory=dict)  # what each engine's /health answers
    probes: list[str] = field(default_factory=list)


def make_pool(
    clock: FakeClock, metrics: GatewayMetrics, urls: list[str], wait_s: float = 30.0, **spec: object
) -> EnginePool:
    pool_spec = PoolSpec(served_name="m", endpoints=urls, **spec)  # type: ignore[arg-type]
    return EnginePool.from_spec(pool_spec, metrics, clock, no_engine_wait_s=wait_s)


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    clock, metrics = FakeClock(), GatewayMetrics()
    pool = make_pool(clock, metrics, URLS)
    router = Router({"m": pool})
    async with aiohttp.ClientSession() as session:
        built = Setup(pool, router, None, metrics, clock)  # type: ignore[arg-type]

        async def probe(endpoint: Endpoint) -> bool:
            built.probes.append(endpoint.url)
            await asyncio.sleep(0)
            return built.up.get(endpoint.url, True)

        policy = EjectionPolicy(3, 10.0, 60.0)
        built.checker = HealthChecker(router, session, metrics, 1.0, 1.0, policy, clock, probe=probe)
        yield built


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def rejected(metrics: GatewayMetrics, reason: str) -> float:
    labels = {"model": "m", "reason": reason}
    return metrics.registry.get_sample_value("gateway_queue_rejected_total", labels) or 0.0


async def test_requests_are_held_while_every_engine_is_down_and_served_when_one_is_back(
    setup: Setup,
) -> None:
    e0, e1 = setup.pool.endpoints
    setup.checker.mark(e0, False)
    setup.checker.mark(e1, False)
    held = [asyncio.create_task(setup.pool.acquire(tenant)) for tenant in ("a", "a", "b")]
    await settle()
    assert not any(t.done() for t in held) and setup.pool.queue is not None
    assert setup.pool.queue.depth == 3
    setup.checker.mark(e1, True)  # its health check passes again: every waiter gets it at once
    await settle()
    assert [t.result() for t in held] == [e1, e1, e1] and e1.inflight == 3
    assert setup.pool.queue.depth == 0


async def test_requests_are_held_while_the_only_engine_drains_for_a_restart(setup: Setup) -> None:
    pool = make_pool(setup.clock, setup.metrics, ["http://e0"])
    router = Router({"m": pool})
    router.set_draining("http://e0", True)
    held = asyncio.create_task(pool.acquire("a"))
    await settle()
    assert not held.done()
    router.set_draining("http://e0", False)
    await settle()
    assert held.result() is pool.endpoints[0]


async def test_an_ejected_engine_is_expected_back_after_its_cool_down(setup: Setup) -> None:
    pool = make_pool(setup.clock, setup.metrics, ["http://e0"])
    [e0] = pool.endpoints
    e0.ejected_until = setup.clock() + 10  # ejected by an earlier verdict
    held = asyncio.create_task(pool.acquire("a"))
    await settle()
    setup.clock.advance(10)
    pool.grant_waiting()  # what the health checks' round does for a pool with waiters
    await settle()
    assert held.result() is e0 and e0.probing  # the one probe request


async def test_a_held_request_gives_up_after_the_wait_with_503_and_retry_after(setup: Setup) -> None:
    pool = make_pool(setup.clock, setup.metrics, ["http://e0"], wait_s=0.01)
    pool.endpoints[0].healthy = False
    with pytest.raises(NoHealthyEngineError) as caught:
        await pool.acquire("a")
    assert caught.value.message == "No engine serving `m` came back within 0.01s."
    assert caught.value.headers == {"retry-after": "5", "retry-after-ms": "5000"}
    assert rejected(setup.metrics, "no_engine") == 1 and pool.queue is not None and pool.queue.depth == 0


async def test_a_client_leaving_while_held_leaves_the_queue(setup: Setup) -> None:
    e0, e1 = setup.pool.endpoints
    e0.healthy = e1.healthy = False
    held = asyncio.create_task(setup.pool.acquire("a"))
    await settle()
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)
    assert setup.pool.queue is not None and setup.pool.queue.depth == 0
    setup.checker.mark(e0, True)
    assert e0.inflight == 0


@pytest.mark.parametrize("wait_s", [0.0, 30.0])
async def test_nothing_is_held_without_an_engine_to_wait_for(setup: Setup, wait_s: float) -> None:
    empty = make_pool(setup.clock, setup.metrics, ["http://e0"], wait_s=wait_s)
    empty.update_endpoints([])  # discovery found none
    down = make_pool(setup.clock, setup.metrics, ["http://e0"], wait_s=0.0)
    down.endpoints[0].healthy = False
    for pool in (empty, down):
        with pytest.raises(NoHealthyEngineError) as caught:
            await pool.acquire("a")
        assert caught.value.message == "No healthy engine is serving model `m` right now."
        assert caught.value.headers["retry-after"] == "1"


async def test_an_engine_that_is_up_but_was_tried_already_is_not_waited_for(setup: Setup) -> None:
    e0, e1 = setup.pool.endpoints
    e1.healthy = False
    with pytest.raises(NoHealthyEngineError):  # e0 failed this request: the caller answers now
        await setup.pool.acquire("a", exclude=[e0])
    assert setup.pool.queue is not None and setup.pool.queue.depth == 0


async def test_a_tenant_kept_on_its_own_engines_is_held_for_them_not_given_a_shared_one(
    setup: Setup,
) -> None:
    pool = make_pool(setup.clock, setup.metrics, URLS, dedicated={"acme": [0]}, dedicated_spill_over=False)
    own, shared = pool.endpoints
    own.healthy = False
    held = asyncio.create_task(pool.acquire("acme"))
    await settle()
    assert (await pool.acquire("other")) is shared  # others are served meanwhile
    pool.grant_waiting()
    await settle()
    assert not held.done()
    own.healthy = True
    pool.grant_waiting()
    await settle()
    assert held.result() is own


async def test_one_unreachable_request_marks_an_engine_down_while_another_can_take_over(
    setup: Setup,
) -> None:
    e0, e1 = setup.pool.endpoints
    await setup.checker.unreachable(e0)
    assert not e0.healthy and e1.healthy and setup.probes == []


async def test_the_last_engine_stays_in_rotation_unless_its_health_probe_fails(setup: Setup) -> None:
    e0, e1 = setup.pool.endpoints
    setup.checker.mark(e1, False)
    await asyncio.gather(*(setup.checker.unreachable(e0) for _ in range(5)))
    assert e0.healthy and setup.probes == ["http://e0"]  # one probe for the five requests
    setup.up["http://e0"] = False
    await setup.checker.unreachable(e0)
    assert not e0.healthy and setup.probes == ["http://e0", "http://e0"]  # the probe's verdict


async def test_failures_in_a_row_never_eject_the_last_engine(setup: Setup) -> None:
    e0, e1 = setup.pool.endpoints
    setup.checker.mark(e1, False)
    for _ in range(10):
        setup.checker.failed(e0)
    assert e0.routable(setup.clock()) and e0.ejected_until == 0.0
    setup.checker.mark(e1, True)  # another engine is back: the streak now ejects
    setup.checker.failed(e0)
    assert not e0.routable(setup.clock()) and e0.cooldown_s == 10.0
