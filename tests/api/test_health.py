"""/health: engine scope (the default) and gateway scope (the Kubernetes readiness probe), which
is 503 while a critical background task is down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.config.pools import PoolSpec
from gateway.routing.health import HealthChecker
from gateway.settings import Settings
from tests.conftest import SIM_MODEL, pool_spec


async def test_gateway_scope_stays_ready_while_a_model_has_no_engine(sim_engine: str, tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'gateway.db'}", data_dir=tmp_path)
    down = PoolSpec(served_name="down-model", endpoints=["http://127.0.0.1:9"])  # nothing listens there
    app = create_app(settings, pool_spec(sim_engine, down))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            engines = await client.get("/health")
            gateway = await client.get("/health", params={"scope": "gateway"})
            unknown = await client.get("/health", params={"scope": "everything"})
    body = {
        "status": "degraded",
        "models": {SIM_MODEL: {"healthy": 1, "total": 1}, "down-model": {"healthy": 0, "total": 1}},
    }
    assert (engines.status_code, engines.json()) == (503, body)
    assert (gateway.status_code, gateway.json()) == (200, body | {"critical_tasks_down": []})
    assert unknown.status_code == 400


async def test_gateway_scope_is_503_while_the_health_checks_are_down(
    sim_engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls, restarted = 0, asyncio.Event()

    async def check_round(self: HealthChecker) -> None:
        """Crashes once; the restarted round then waits for the test before it succeeds."""
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("health round broke")
        if calls == 2:
            await restarted.wait()

    monkeypatch.setattr(HealthChecker, "check_round", check_round)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}", data_dir=tmp_path, health_interval_s=0.01
    )
    app = create_app(settings, pool_spec(sim_engine))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            for _ in range(200):
                if calls == 2:
                    break
                await asyncio.sleep(0.01)  # the first round is 10 ms after start, its restart 100 ms
            down = await client.get("/health", params={"scope": "gateway"})
            engines = await client.get("/health")
            metrics = (await client.get("/metrics")).text
            restarted.set()
            for _ in range(100):
                if calls > 2:
                    break
                await asyncio.sleep(0.01)
            up = await client.get("/health", params={"scope": "gateway"})
    models = {SIM_MODEL: {"healthy": 1, "total": 1}}
    assert (down.status_code, down.json()) == (
        503,
        {"status": "ok", "models": models, "critical_tasks_down": ["health"]},
    )
    assert engines.status_code == 200  # the engines' view is not the background tasks'
    assert 'gateway_background_task_restarts_total{task="health"} 1.0\n' in metrics
    assert 'gateway_background_task_restarts_total{task="ledger"} 0.0\n' in metrics
    assert (up.status_code, up.json()["critical_tasks_down"]) == (200, [])
