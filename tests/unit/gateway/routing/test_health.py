"""Passive ejection's state machine: streak, cool-down, a single half-open probe, back-off (on a
fake clock: cool-downs pass when the test says so)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from gateway.config.pools import PoolSpec
from gateway.errors import NoHealthyEngineError
from gateway.metrics import GatewayMetrics
from gateway.routing.health import EjectionPolicy, HealthChecker
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from tests.support.clock import FakeClock


@dataclass
class Setup:
    pool: EnginePool
    checker: HealthChecker
    metrics: GatewayMetrics
    clock: FakeClock


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    clock = FakeClock()
    spec = PoolSpec(served_name="m", endpoints=["http://e0", "http://e1"])
    pool = EnginePool.from_spec(spec, clock=clock)
    metrics = GatewayMetrics()
    async with aiohttp.ClientSession() as session:
        policy = EjectionPolicy(3, 10.0, 25.0)
        checker = HealthChecker(Router({"m": pool}), session, metrics, 1.0, 1.0, policy, clock)
        yield Setup(pool, checker, metrics, clock)


def ejections(metrics: GatewayMetrics) -> float:
    return metrics.registry.get_sample_value("gateway_engine_ejections_total", {"model": "m"}) or 0.0


async def test_a_streak_of_failures_ejects_and_a_success_resets_it(setup: Setup) -> None:
    pool, checker, metrics, clock = setup.pool, setup.checker, setup.metrics, setup.clock
    e0, e1 = pool.endpoints
    checker.failed(e0)
    checker.failed(e0)
    checker.succeeded(e0)  # the streak is broken
    checker.failed(e0)
    checker.failed(e0)
    assert e0.routable(clock()) and ejections(metrics) == 0
    checker.failed(e0)
    assert not e0.routable(clock()) and e0.cooldown_s == 10.0 and ejections(metrics) == 1
    assert {(await pool.acquire("t")).url for _ in range(5)} == {"http://e1"}
    checker.failed(e0)  # a request from before the ejection: no longer cool-down
    assert e0.cooldown_s == 10.0 and ejections(metrics) == 1


async def test_half_open_lets_exactly_one_probe_through(setup: Setup) -> None:
    pool, checker, metrics, clock = setup.pool, setup.checker, setup.metrics, setup.clock
    e0, e1 = pool.endpoints
    for _ in range(3):
        checker.failed(e0)
    clock.advance(9.5)
    assert not e0.routable(clock())
    clock.advance(0.5)  # the cool-down is over
    e1.healthy = False
    probe = await pool.acquire("t")
    assert probe is e0 and e0.probing
    with pytest.raises(NoHealthyEngineError):  # while the probe is out, nothing else goes there
        await pool.acquire("t")
    checker.failed(e0)  # the probe failed: ejected again, twice as long
    assert e0.cooldown_s == 20.0 and not e0.probing and ejections(metrics) == 2
    pool.release(e0, "t")

    clock.advance(20)
    second = await pool.acquire("t")
    checker.failed(e0)
    assert second is e0 and e0.cooldown_s == 25.0  # capped at max_cooldown_s
    pool.release(e0, "t")

    clock.advance(24.5)
    with pytest.raises(NoHealthyEngineError):  # 25 s this time
        await pool.acquire("t")
    clock.advance(0.5)
    third = await pool.acquire("t")
    pool.release(third, "t")  # the probe ended without a verdict (client left): next may probe
    assert not e0.probing and (await pool.acquire("t")) is e0
    checker.succeeded(e0)
    assert (e0.ejected_until, e0.cooldown_s, e0.failures) == (0.0, 0.0, 0)
    pool.release(e0, "t")
    assert [(await pool.acquire("t")).url for _ in range(3)] == ["http://e0"] * 3  # no probe limit now


async def test_an_engine_back_from_down_starts_with_a_clean_record(setup: Setup) -> None:
    pool, checker, clock = setup.pool, setup.checker, setup.clock
    e0 = pool.endpoints[0]
    for _ in range(3):
        checker.failed(e0)  # its streams broke as it died: ejected
    checker.mark(e0, False)
    assert e0.ejected_until > clock()
    checker.mark(e0, True)  # restarted and answering /health again: no need to sit out the cool-down
    assert e0.routable(clock()) and (e0.failures, e0.cooldown_s) == (0, 0.0)
    checker.mark(e0, True)  # staying up changes nothing
    checker.failed(e0)
    assert e0.failures == 1
