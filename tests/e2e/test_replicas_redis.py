"""Three gateway replicas share one Redis: a burst spread over all of them is admitted once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from gateway.config.pools import PoolSpec
from gateway.limit_spec import LimitSpec
from gateway.records import Outcome
from gateway.store.postgres import PostgresStore
from tests.e2e.conftest import GatewayProcess, start_gateway
from tests.support.metrics import sample
from tests.support.postgres import require_postgres, temporary_schema
from tests.support.processes import Process, start_sim
from tests.support.redis import redis_url, require_redis

MODEL = "sim-burst"
RPM = 30
BURST = 90


async def burst(gateways: list[GatewayProcess], key: str) -> list[int]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30) as client:
        replies = await asyncio.gather(
            *(
                client.post(f"{gateways[i % 3].url}/v1/chat/completions", json=body, headers=headers)
                for i in range(BURST)
            )
        )
    return [r.status_code for r in replies]


async def test_a_burst_over_three_replicas_stays_within_one_request_of_the_limit(tmp_path: Path) -> None:
    require_postgres()
    require_redis()
    sim, sim_url = start_sim(tmp_path, MODEL)
    procs: list[Process] = []
    async with temporary_schema("burst") as url:
        try:
            gateways = []
            for replica in range(3):
                home = tmp_path / f"replica-{replica}"
                home.mkdir()
                env = {"GATEWAY_DATABASE_URL": url, "GATEWAY_REDIS_URL": redis_url()}
                proc, gateway = start_gateway(home, [PoolSpec(served_name=MODEL, endpoints=[sim_url])], env)
                procs.append(proc)
                gateways.append(gateway)
            key = gateways[0].new_key("bursty")
            store = PostgresStore(url)
            await store.open()
            try:
                await store.set_tenant_limits("bursty", LimitSpec(rpm=RPM))
                await asyncio.sleep(1)  # every replica's key cache (0.5 s) has seen the limit
                statuses = await burst(gateways, key)
                admitted = statuses.count(200)
                # RPM 30 refills one request every 2 s: the burst may catch one refill at most.
                assert RPM <= admitted <= RPM + 1, statuses
                assert statuses.count(429) == BURST - admitted
                refused_by = [
                    sample(g.metrics(), "gateway_ratelimited_total", tenant="bursty", reason="requests") or 0
                    for g in gateways
                ]
                assert sum(refused_by) == BURST - admitted  # whichever replica the refusals fell on
                tenant_id = (await store.get_tenant("bursty")).id
                deadline = time.monotonic() + 20
                while len(rows := await store.list_usage(tenant_id)) < BURST and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert sorted(r.http_status for r in rows) == sorted(statuses)
                assert sum(r.outcome == Outcome.ok for r in rows) == admitted

                # Revoking the key through one replica's CLI reaches every replica within the
                # stated bound: GATEWAY_AUTH_CACHE_TTL_S (0.5 s here) plus one lookup.
                key_id = gateways[0].cli("keys", "list", "--tenant", "bursty").split()[0]
                gateways[2].cli("keys", "revoke", key_id)
                await asyncio.sleep(0.5 + 0.5)
                headers = {"Authorization": f"Bearer {key}"}
                async with httpx.AsyncClient(timeout=10) as client:
                    for gateway in gateways:
                        refused = await client.get(f"{gateway.url}/v1/models", headers=headers)
                        assert refused.status_code == 401, gateway.url
            finally:
                await store.close()
        finally:
            for proc in procs:
                proc.stop()
            sim.stop()
