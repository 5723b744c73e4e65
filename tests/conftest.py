"""Fixtures shared by every tier."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from gateway.config.pools import DeploymentSpec, PoolSpec
from gateway.records import ApiKey
from gateway.settings import Settings
from gateway.state import GatewayState
from gateway.tenancy.auth import generate_key
from tests.support.processes import Process, start_sim

SIM_MODEL = "sim-model"
TESTS = Path(__file__).parent
# Each tier's marker and per-test time limit (seconds), from the folder a test lives in.
TIERS = {"unit": 30, "api": 120, "e2e": 1200}


def pytest_configure(config: pytest.Config) -> None:
    """Tests never read the developer's own ``GATEWAY_*`` settings: a ``GATEWAY_PORT`` or
    ``GATEWAY_DATABASE_URL`` exported for a manual run must not change what a test starts or
    where it writes. Only the ``GATEWAY_TEST_*`` variables (which servers to test against) stay."""
    for name in [n for n in os.environ if n.startswith("GATEWAY_") and not n.startswith("GATEWAY_TEST_")]:
        del os.environ[name]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier (``-m unit``, ``-m api``, ``-m e2e``) and give it the tier's
    time limit unless it sets its own ``@pytest.mark.timeout``."""
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0]
        if tier not in TIERS:
            continue
        item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIERS[tier]))


ADMIN_TOKEN = "test-admin-token-0123456789abcdefghijklmnop"


@pytest.fixture(scope="session")
def sim_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One simulated engine for the session; tests reset it through ``/sim/*``."""
    proc: Process
    proc, url = start_sim(tmp_path_factory.mktemp("sim"), SIM_MODEL)
    try:
        yield url
    finally:
        proc.stop()


@dataclass
class Gateway:
    app: FastAPI
    client: httpx.AsyncClient
    state: GatewayState
    sim_url: str

    async def new_key(
        self, tenant: str = "acme", models: frozenset[str] | None = None, expires_at: float | None = None
    ) -> tuple[str, ApiKey]:
        try:
            await self.state.store.create_tenant(tenant)
        except Exception:  # noqa: BLE001 - exists already in this test's store
            pass
        new = generate_key()
        key = await self.state.store.create_key(tenant, new.key_hash, new.prefix, models, expires_at)
        return new.secret, key

    async def sim(self, **patch: object) -> None:
        async with httpx.AsyncClient(base_url=self.sim_url) as sim:
            (await sim.post("/sim/reset")).raise_for_status()
            (await sim.post("/sim/config", json=patch)).raise_for_status()


def pool_spec(sim_url: str, *extra: PoolSpec) -> DeploymentSpec:
    return DeploymentSpec(pools=[PoolSpec(served_name=SIM_MODEL, endpoints=[sim_url]), *extra])


@pytest.fixture
async def gateway(sim_engine: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The app in-process over ASGITransport, lifespan running, fronting the session's sim."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        data_dir=tmp_path,
        max_body_bytes=64 * 1024,
        health_interval_s=0.2,
        auth_cache_ttl_s=0,
        admin_token=ADMIN_TOKEN,
    )
    defaults = {"ttft_ms": 0, "itl_ms": 0, "output_tokens": 16, "failure_rate": 0, "fail_after_tokens": None}
    app = create_app(settings, pool_spec(sim_engine))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            gw = Gateway(app, client, app.state.gateway, sim_engine)
            await gw.sim(**defaults)
            yield gw
