"""A pool whose engines are discovered (DNS) serves through the app once the lifespan found them."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.pools import PoolSpec
from tests.api.test_dedicated import chat, serving


async def test_discovered_engine_serves_from_the_first_request(sim_engine: str, tmp_path: Path) -> None:
    port = urlsplit(sim_engine).port
    pool = PoolSpec.model_validate({"served_name": "sim-model", "discovery": {"dns": f"localhost:{port}"}})
    async with serving(sim_engine, tmp_path, pool) as gw:
        endpoints = gw.state.router.pool("sim-model").endpoints
        assert sim_engine in [e.url for e in endpoints]  # found before the first health check
        assert next(e for e in endpoints if e.url == sim_engine).healthy
        secret, _ = await gw.new_key()
        answer = await chat(gw, secret)
        assert answer.status_code == 200, answer.text
        assert (await gw.client.get("/health")).status_code == 200
