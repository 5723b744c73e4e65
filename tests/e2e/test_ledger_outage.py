"""Stop the real PostgreSQL under load and bring it back: every request is in the ledger once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from gateway.config.pools import PoolSpec
from gateway.records import Outcome, UsageRecord
from gateway.store.postgres import PostgresStore
from tests.e2e.conftest import start_gateway
from tests.support.postgres import postgres_ctl, require_postgres, temporary_schema
from tests.support.processes import start_sim

MODEL = "sim-outage"
RATE_PER_S = 40
LOAD_S = 12.0
OUTAGE = (3.0, 8.0)  # seconds into the load: PostgreSQL stops, then starts again


async def ledger_rows(url: str, tenant: str) -> list[UsageRecord]:
    store = PostgresStore(url)
    await store.open()
    try:
        return await store.list_usage((await store.get_tenant(tenant)).id)
    finally:
        await store.close()


async def send_load(base_url: str, key: str) -> tuple[list[str], list[int]]:
    """Open-loop load at RATE_PER_S for LOAD_S; the request ids of the answers, and every status."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    headers = {"Authorization": f"Bearer {key}"}
    ids: list[str] = []
    statuses: list[int] = []

    async def one(client: httpx.AsyncClient, stream: bool) -> None:
        response = await client.post("/v1/chat/completions", json={**body, "stream": stream}, headers=headers)
        statuses.append(response.status_code)
        ids.append(response.headers.get("x-request-id", ""))

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        tasks = []
        for i in range(int(RATE_PER_S * LOAD_S)):
            tasks.append(asyncio.create_task(one(client, stream=i % 2 == 1)))
            await asyncio.sleep(1 / RATE_PER_S)
        await asyncio.gather(*tasks)
    return ids, statuses


async def test_postgres_outage_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    require_postgres()
    sim, sim_url = start_sim(tmp_path, MODEL)
    async with temporary_schema("outage") as url:
        proc, gateway = start_gateway(
            tmp_path, [PoolSpec(served_name=MODEL, endpoints=[sim_url])], {"GATEWAY_DATABASE_URL": url}
        )
        try:
            key = gateway.new_key("outage")
            load = asyncio.create_task(send_load(gateway.url, key))
            await asyncio.sleep(OUTAGE[0])
            try:
                await asyncio.to_thread(postgres_ctl, "stop")
                with pytest.raises(psycopg.OperationalError):  # the outage is real
                    await psycopg.AsyncConnection.connect(url, connect_timeout=2)
                await asyncio.sleep(OUTAGE[1] - OUTAGE[0])
            finally:
                await asyncio.to_thread(postgres_ctl, "start")
            ids, statuses = await load
            # Auth served known keys from its cache and the journal held the rows: nobody noticed.
            assert statuses == [200] * len(statuses)
            deadline = time.monotonic() + 60
            while len(rows := await ledger_rows(url, "outage")) < len(ids) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert sorted(r.request_id for r in rows) == sorted(ids)  # each exactly once
            assert all(r.outcome == Outcome.ok and r.completion_tokens == 4 for r in rows)
            # Rows of requests answered while the database was down made it too.
            during = [r for r in rows if OUTAGE[0] < r.started_at - rows[0].started_at < OUTAGE[1] - 1]
            assert len(during) > RATE_PER_S
        finally:
            proc.stop()
            sim.stop()
