"""What an anonymous caller may learn: /metrics, /health and /openapi.json in production and in
development, and the metrics token (issue 18, item 9)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from gateway.app import create_app
from gateway.config.pools import PoolSpec
from gateway.settings import Settings
from tests.conftest import SIM_MODEL, pool_spec

ADMIN_TOKEN = secrets.token_urlsafe(32)
METRICS_TOKEN = secrets.token_urlsafe(32)


@contextlib.asynccontextmanager
async def client(sim_engine: str, tmp_path: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    down = PoolSpec(served_name="down-model", endpoints=["http://10.9.8.7:9"])  # an engine's address
    app = create_app(
        Settings(database_url=f"sqlite:///{tmp_path / 'g.db'}", data_dir=tmp_path, **settings),
        pool_spec(sim_engine, down),
    )
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as http:
            await app.state.gateway.store.create_tenant("secret-customer")
            await http.get("/metrics")
            yield http


async def test_production_tells_an_anonymous_caller_only_up_or_down(sim_engine: str, tmp_path: Path) -> None:
    """/metrics showed tenant names and engine addresses to anyone, /health every model, and
    /openapi.json every admin route."""
    async with client(sim_engine, tmp_path, environment="production", admin_token=ADMIN_TOKEN) as http:
        metrics = await http.get("/metrics")
        health = await http.get("/health")
        ready = await http.get("/health", params={"scope": "gateway"})
        schema = await http.get("/openapi.json")
    assert metrics.status_code == 403
    assert metrics.json()["error"] == {
        "message": "/metrics is not public here: set GATEWAY_METRICS_TOKEN and scrape with it as a bearer"
        " token.",
        "type": "permission_error",
        "param": None,
        "code": "metrics_disabled",
    }
    assert (health.status_code, health.json()) == (503, {"status": "degraded"})
    assert (ready.status_code, ready.json()) == (200, {"status": "degraded"})
    paths = schema.json()["paths"]
    assert "/v1/chat/completions" in paths and not [p for p in paths if p.startswith("/admin")]


async def test_the_metrics_token_lets_a_scraper_in_and_nobody_else(sim_engine: str, tmp_path: Path) -> None:
    settings = {"environment": "production", "admin_token": ADMIN_TOKEN, "metrics_token": METRICS_TOKEN}
    async with client(sim_engine, tmp_path, **settings) as http:
        scraped = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        wrong = await http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        anonymous = await http.get("/metrics")
    assert scraped.status_code == 200 and "gateway_engine_up" in scraped.text
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")
    assert anonymous.status_code == 401 and "10.9.8.7" not in anonymous.text


async def test_development_and_an_explicit_opt_in_keep_everything_public(
    sim_engine: str, tmp_path: Path
) -> None:
    opted_in = {"environment": "production", "admin_token": ADMIN_TOKEN, "expose_internals": True}
    for run, settings in enumerate(({}, opted_in)):
        (tmp_path / str(run)).mkdir()
        async with client(sim_engine, tmp_path / str(run), **settings) as http:
            metrics = await http.get("/metrics")
            health = await http.get("/health")
            schema = await http.get("/openapi.json")
        assert metrics.status_code == 200 and "10.9.8.7" in metrics.text
        assert health.json()["models"][SIM_MODEL] == {"healthy": 1, "total": 1}
        assert "/admin/tenants" in schema.json()["paths"]
