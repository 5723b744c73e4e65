"""/health: engine scope (the default) and gateway scope (the Kubernetes readiness probe)."""

from __future__ import annotations

from pathlib import Path

import httpx

from gateway.app import create_app
from gateway.config.pools import PoolSpec
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
    assert (gateway.status_code, gateway.json()) == (200, body)
    assert unknown.status_code == 400
