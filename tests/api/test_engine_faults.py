"""Faults a client should not see, through the app in front of the simulated engine: requests held
while the engines restart, Retry-After on every 503 of an outage, the ledger spooling in /health."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from gateway.app import create_app
from gateway.config.pools import PoolSpec
from gateway.records import ApiKey
from gateway.settings import Settings
from gateway.store import StoreError
from gateway.store.sqlite import SqliteStore
from tests.api.test_dedicated import serving
from tests.conftest import SIM_MODEL, Gateway, pool_spec
from tests.support.metrics import sample
from tests.support.processes import free_port

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def chat(gw: Gateway, secret: str) -> httpx.Response:
    return await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth(secret))


async def test_a_request_is_held_while_the_engine_is_down_and_served_once_it_is_back(
    sim_engine: str, tmp_path: Path
) -> None:
    pool = PoolSpec(served_name=SIM_MODEL, endpoints=[sim_engine])
    async with serving(sim_engine, tmp_path, pool, health_interval_s=0.3) as gw:
        secret, _ = await gw.new_key("held")
        [endpoint] = gw.state.router.endpoints()
        gw.state.health.mark(endpoint, False)  # as a failed check would; the next one passes
        answer = await chat(gw, secret)
        assert answer.status_code == 200
        assert sample(await metrics(gw), "gateway_queue_depth", model=SIM_MODEL) == 0


async def test_a_request_is_held_while_the_only_engine_drains_and_served_when_it_resumes(
    gateway: Gateway,
) -> None:
    secret, _ = await gateway.new_key("drained")
    router = gateway.state.router
    router.set_draining(gateway.sim_url, True)
    request = asyncio.create_task(chat(gateway, secret))
    await asyncio.sleep(0.3)
    assert not request.done()
    router.set_draining(gateway.sim_url, False)
    assert (await request).status_code == 200


async def test_an_engine_that_does_not_come_back_is_a_503_with_retry_after(
    sim_engine: str, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    pool = PoolSpec(served_name=SIM_MODEL, endpoints=[nowhere])
    async with serving(sim_engine, tmp_path, pool, no_engine_wait_s=0.3, health_interval_s=0.1) as gw:
        secret, _ = await gw.new_key("gone")
        answer = await chat(gw, secret)
        assert answer.status_code == 503
        assert (answer.headers["retry-after"], answer.headers["retry-after-ms"]) == ("5", "5000")
        assert answer.json()["error"] == {
            "message": f"No engine serving `{SIM_MODEL}` came back within 0.3s.",
            "type": "service_unavailable",
            "param": None,
            "code": "no_healthy_engine",
        }
        text = await metrics(gw)
        assert sample(text, "gateway_queue_rejected_total", model=SIM_MODEL, reason="no_engine") == 1


class OutageStore(SqliteStore):
    """SQLite, with a switch that makes key lookups and ledger writes fail like a lost database."""

    down = False

    async def get_key_by_hash(self, key_hash: str) -> ApiKey | None:
        if self.down:
            raise StoreError("database unreachable")
        return await super().get_key_by_hash(key_hash)

    async def insert_usage(self, records: object) -> int:
        if self.down:
            raise StoreError("database unreachable")
        return await super().insert_usage(records)  # type: ignore[arg-type]


async def test_a_database_outage_refuses_unknown_keys_with_retry_after_and_spools_the_ledger(
    sim_engine: str, tmp_path: Path
) -> None:
    store = OutageStore(tmp_path / "gateway.db")
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        data_dir=tmp_path,
        auth_cache_ttl_s=60,
        ledger_flush_interval_s=0.05,
    )
    app = create_app(settings, pool_spec(sim_engine), store=store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            gw = Gateway(app, client, app.state.gateway, sim_engine)
            known, _ = await gw.new_key("outage")
            never_seen, _ = await gw.new_key("outage")
            assert (await chat(gw, known)).status_code == 200  # its key is cached from here on
            await gw.state.ledger.flush()
            store.down = True
            assert (await chat(gw, known)).status_code == 200
            refused = await chat(gw, never_seen)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
            assert (refused.headers["retry-after"], refused.headers["retry-after-ms"]) == ("2", "2000")
            spooling = await wait_for_status(client, "degraded: ledger spooling")
            assert spooling.status_code == 200 and spooling.json()["ledger_backlog"]["rows"] == 1
            assert sample(await metrics(gw), "gateway_ledger_backlog_rows") == 1
            store.down = False
            recovered = await wait_for_status(client, "ok")
            assert "ledger_backlog" not in recovered.json()
            assert sample(await metrics(gw), "gateway_ledger_backlog_rows") == 0
            assert len(await store.list_usage()) == 2  # the refused request never reached the ledger


async def wait_for_status(client: httpx.AsyncClient, status: str) -> httpx.Response:
    for _ in range(100):
        response = await client.get("/health", params={"scope": "gateway"})
        if response.json()["status"] == status:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"/health?scope=gateway never said {status!r}: {response.json()}")


async def metrics(gw: Gateway) -> str:
    return (await gw.client.get("/metrics")).text
