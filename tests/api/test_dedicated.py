"""Dedicated capacity and the fair queue, through the app in front of real simulated engines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.clock import Clock, monotonic
from gateway.config.pools import DeploymentSpec, PoolSpec, QueueSpec
from gateway.settings import Settings
from tests.conftest import SIM_MODEL, Gateway
from tests.support.metrics import sample
from tests.support.processes import start_sim

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@contextlib.asynccontextmanager
async def serving(
    sim_url: str, tmp_path: Path, pool: PoolSpec, clock: Clock = monotonic, **overrides: Any
) -> AsyncIterator[Gateway]:
    fields: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'gateway.db'}",
        "data_dir": tmp_path,
        "health_interval_s": 0.2,
        "auth_cache_ttl_s": 0,
        "limits_path": None,
    }
    settings = Settings(**(fields | overrides))
    app = create_app(settings, DeploymentSpec(pools=[pool]), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            gw = Gateway(app, client, app.state.gateway, sim_url)
            await gw.sim(ttft_ms=0, itl_ms=0, output_tokens=2, failure_rate=0, fail_after_tokens=None)
            yield gw


async def chat(gw: Gateway, secret: str) -> httpx.Response:
    return await gw.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"}
    )


async def endpoints_used(gw: Gateway) -> dict[str, set[str | None]]:
    await gw.state.ledger.flush()
    used: dict[str, set[str | None]] = {}
    tenants = {t.id: t.name for t in await gw.state.store.list_tenants()}
    for row in await gw.state.store.list_usage():
        used.setdefault(tenants[row.tenant_id], set()).add(row.endpoint)
    return used


async def test_dedicated_engine_serves_only_its_tenant(sim_engine: str, tmp_path: Path) -> None:
    proc, own_url = start_sim(tmp_path, SIM_MODEL)
    try:
        pool = PoolSpec(served_name=SIM_MODEL, endpoints=[sim_engine, own_url], dedicated={"vip": [1]})
        async with serving(sim_engine, tmp_path, pool) as gw:
            vip, _ = await gw.new_key("vip")
            other, _ = await gw.new_key("other")
            answers = await asyncio.gather(*(chat(gw, s) for s in [vip, other] * 6))
            assert [r.status_code for r in answers] == [200] * 12
            assert await endpoints_used(gw) == {"vip": {own_url}, "other": {sim_engine}}
    finally:
        proc.stop()


async def wait_depth(gw: Gateway, depth: int) -> None:
    queue = gw.state.router.pool(SIM_MODEL).queue
    assert queue is not None
    for _ in range(200):
        if queue.depth == depth:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"queue depth {queue.depth}, expected {depth}")


async def test_saturated_pool_queues_then_serves_and_refuses_past_its_bounds(
    sim_engine: str, tmp_path: Path
) -> None:
    pool = PoolSpec(
        served_name=SIM_MODEL,
        endpoints=[sim_engine],
        max_inflight_per_engine=1,
        queue=QueueSpec(max_per_tenant=1, max_total=2, max_wait_s=10),
    )
    async with serving(sim_engine, tmp_path, pool) as gw:
        await gw.sim(ttft_ms=300)
        a, _ = await gw.new_key("a")
        b, _ = await gw.new_key("b")
        c, _ = await gw.new_key("c")
        served = [asyncio.create_task(chat(gw, a))]
        await asyncio.sleep(0.1)  # in flight: the engine is saturated
        served.append(asyncio.create_task(chat(gw, a)))
        await wait_depth(gw, 1)
        per_tenant = await chat(gw, a)
        assert per_tenant.status_code == 429 and per_tenant.headers["retry-after"] == "1"
        assert per_tenant.json()["error"]["code"] == "rate_limit_exceeded"
        served.append(asyncio.create_task(chat(gw, b)))
        await wait_depth(gw, 2)
        full = await chat(gw, c)
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json()["error"]["type"] == "service_unavailable"
        assert full.json()["error"]["code"] == "engines_busy"
        assert [r.status_code for r in await asyncio.gather(*served)] == [200, 200, 200]
        text = (await gw.client.get("/metrics")).text
        assert sample(text, "gateway_queue_depth", model=SIM_MODEL) == 0
        assert sample(text, "gateway_queue_wait_seconds_count", model=SIM_MODEL) == 2
        assert sample(text, "gateway_queue_rejected_total", model=SIM_MODEL, reason="tenant_full") == 1
        assert sample(text, "gateway_queue_rejected_total", model=SIM_MODEL, reason="full") == 1
        assert gw.state.router.pool(SIM_MODEL).endpoints[0].inflight == 0
