"""Engine load from vLLM's own metrics, and routing that uses it."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx

from gateway.config.pools import DeploymentSpec, PoolSpec
from gateway.routing.endpoint import Endpoint
from gateway.routing.engine_stats import EngineStats, EngineStatsScraper, parse_engine_stats
from gateway.routing.policies import LeastLoad
from gateway.routing.router import Router
from tests.support.metrics import total

VLLM_PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 12.0
"""


def test_parses_the_three_gauges_summing_ranks() -> None:
    assert parse_engine_stats(VLLM_PAGE) == EngineStats(running=5, waiting=4, kv_usage=0.5)
    old = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.75\nvllm:num_requests_running 1\n'
    assert parse_engine_stats(old) == EngineStats(running=1, waiting=0, kv_usage=0.75)
    assert parse_engine_stats("garbage\nvllm:num_requests_waiting nan-ish\n") == EngineStats()


def test_least_load_avoids_an_engine_busy_with_other_replicas_requests() -> None:
    quiet, busy = Endpoint("m", "http://quiet", inflight=2), Endpoint("m", "http://busy", inflight=1)
    busy.engine_running, busy.engine_waiting = 6, 3  # other gateway replicas' work
    assert {LeastLoad().choose([quiet, busy]).url for _ in range(4)} == {"http://quiet"}
    busy.engine_running = busy.engine_waiting = 0
    busy.kv_usage = 0.9  # a nearly full KV cache counts too
    assert {LeastLoad().choose([quiet, busy]).url for _ in range(4)} == {"http://quiet"}


def test_our_own_finished_requests_do_not_linger_in_the_load() -> None:
    a, b = Endpoint("m", "http://a"), Endpoint("m", "http://b")
    # Scraped while a burst of ours ran: 5 on a (all ours), 2 on b (1 ours, 1 another replica's).
    a.inflight = a.inflight_at_scrape = a.engine_running = 5
    b.inflight = b.inflight_at_scrape = 1
    b.engine_running = 2
    a.inflight, b.inflight = 0, 0  # the burst ended before the next scrape
    assert (a.load(), b.load()) == (0, 1)
    assert LeastLoad().choose([a, b]) is a  # not the one that merely looked busy a moment ago


async def test_scraper_reads_a_real_engine(sim_engine: str) -> None:
    async with httpx.AsyncClient(base_url=sim_engine) as sim:
        (await sim.post("/sim/reset")).raise_for_status()
        (await sim.post("/sim/config", json={"ttft_ms": 2000, "max_num_seqs": 1})).raise_for_status()
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        pending = [
            asyncio.create_task(sim.post("/v1/chat/completions", json=body, timeout=10)) for _ in range(3)
        ]
        await asyncio.sleep(0.3)
        router = Router.from_spec(
            DeploymentSpec(pools=[PoolSpec(served_name="sim-model", endpoints=[sim_engine])])
        )
        async with aiohttp.ClientSession() as session:
            await EngineStatsScraper(router, session, interval_s=1, timeout_s=2).scrape_all()
        [endpoint] = router.endpoints()
        assert (endpoint.engine_running, endpoint.engine_waiting) == (1, 2)
        assert endpoint.load() >= 3
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # The engine is shared by the session's tests: leave it idle, not with this test's
        # requests still queued behind a 2 s first token.
        for _ in range(200):
            page = (await sim.get("/metrics")).text
            if total(page, "vllm:num_requests_running") + total(page, "vllm:num_requests_waiting") == 0:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the engine still holds this test's requests")
        (await sim.post("/sim/reset")).raise_for_status()
