"""Three gateway processes on one PostgreSQL: one consistent ledger, keys shared, metrics add up."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import httpx

from gateway.config.pools import PoolSpec
from gateway.store.postgres import PostgresStore
from tests.e2e.conftest import GatewayProcess, start_gateway
from tests.support.metrics import sample
from tests.support.postgres import require_postgres, temporary_schema
from tests.support.processes import Process, start_sim

MODEL = "sim-replicas"
REQUESTS = 300


async def drive(gateways: list[GatewayProcess], key: str) -> list[str]:
    """Round-robin over the replicas, 16 at a time, streamed and not; returns the request ids."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 6}
    headers = {"Authorization": f"Bearer {key}"}
    targets = itertools.cycle(gateways)
    limit = asyncio.Semaphore(16)

    async def one(client: httpx.AsyncClient, gateway: GatewayProcess, i: int) -> str:
        async with limit:
            response = await client.post(
                f"{gateway.url}/v1/chat/completions", json={**body, "stream": i % 3 == 0}, headers=headers
            )
        assert response.status_code == 200, response.text
        return response.headers["x-request-id"]

    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(one(client, next(targets), i) for i in range(REQUESTS)))


async def test_three_replicas_write_one_ledger(tmp_path: Path) -> None:
    require_postgres()
    sim, sim_url = start_sim(tmp_path, MODEL)
    procs: list[Process] = []
    async with temporary_schema("replicas") as url:
        try:
            gateways = []
            for replica in range(3):
                home = tmp_path / f"replica-{replica}"  # each replica has its own journal
                home.mkdir()
                proc, gateway = start_gateway(
                    home,
                    [PoolSpec(served_name=MODEL, endpoints=[sim_url])],
                    {"GATEWAY_DATABASE_URL": url},
                )
                procs.append(proc)
                gateways.append(gateway)
            key = gateways[0].new_key("shared")  # created through one replica's CLI, used on all
            ids = await drive(gateways, key)

            store = PostgresStore(url)
            await store.open()
            try:
                tenant_id = (await store.get_tenant("shared")).id
                deadline = time.monotonic() + 30
                while (
                    len(rows := await store.list_usage(tenant_id)) < REQUESTS and time.monotonic() < deadline
                ):
                    await asyncio.sleep(0.2)
            finally:
                await store.close()
            assert sorted(r.request_id for r in rows) == sorted(ids)
            assert {r.completion_tokens for r in rows} == {6}
            labels = {"tenant": "shared", "model": MODEL, "status": "200"}
            per_replica = [sample(g.metrics(), "gateway_requests_total", **labels) for g in gateways]
            assert per_replica == [REQUESTS / 3] * 3 and sum(per_replica) == len(rows)
        finally:
            for proc in procs:
                proc.stop()
            sim.stop()
