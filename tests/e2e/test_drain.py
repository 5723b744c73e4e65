"""SIGTERM drains a real gateway process: streams in flight finish, new connections are refused,
the deadline cuts what is left, and every request is in the ledger once the process has exited."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from engines.launcher import EngineLauncher, GatewayAdminDrain
from gateway.config.pools import DeploymentSpec, PoolSpec
from gateway.records import Outcome
from tests.conftest import ADMIN_TOKEN, SIM_MODEL
from tests.e2e.conftest import GatewayProcess, start_gateway
from tests.support.processes import Process, start_sim, two_free_ports

STREAMS = 3
# uvicorn re-raises SIGTERM once it has shut down cleanly (lifespan shutdown, ledger flushed).
EXITED = (0, -signal.SIGTERM)


async def streams_through_sigterm(proc: Process, gw: GatewayProcess, key: str) -> list[str]:
    """Start ``STREAMS`` streams, SIGTERM the gateway once each has its first bytes, check that
    a new connection is refused meanwhile, and return what each stream received."""
    started = asyncio.Semaphore(0)
    body = {
        "model": SIM_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 40,
        "stream": True,
    }

    async def stream(client: httpx.AsyncClient) -> str:
        received = b""
        headers = {"Authorization": f"Bearer {key}"}
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status_code == 200
            try:
                async for chunk in response.aiter_raw():
                    if not received:
                        started.release()
                    received += chunk
            except httpx.RemoteProtocolError:
                pass  # cut at the drain deadline
        return received.decode()

    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        tasks = [asyncio.create_task(stream(client)) for _ in range(STREAMS)]
        for _ in range(STREAMS):
            await asyncio.wait_for(started.acquire(), 20)
        proc.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=5) as fresh:
            with pytest.raises(httpx.ConnectError):
                await fresh.get(f"{gw.url}/health")
        return await asyncio.gather(*tasks)


async def test_sigterm_lets_streams_in_flight_finish(tmp_path: Path) -> None:
    sim, sim_url = start_sim(tmp_path, SIM_MODEL, "--itl-ms", "50", "--output-tokens", "40")
    proc, gw = start_gateway(
        tmp_path, [PoolSpec(served_name=SIM_MODEL, endpoints=[sim_url])], {"GATEWAY_DRAIN_TIMEOUT_S": "20"}
    )
    try:
        key = gw.new_key("drain")
        bodies = await streams_through_sigterm(proc, gw, key)
        assert await asyncio.to_thread(proc.popen.wait, 20) in EXITED
        for text in bodies:
            assert text.endswith("data: [DONE]\n\n") and '"error"' not in text
        rows = await asyncio.to_thread(gw.ledger, "drain", STREAMS)
        assert [(r.outcome, r.completion_tokens) for r in rows] == [(Outcome.ok, 40)] * STREAMS
    finally:
        proc.stop()
        sim.stop()


async def test_drain_deadline_cuts_the_rest_and_meters_what_was_sent(tmp_path: Path) -> None:
    sim, sim_url = start_sim(tmp_path, SIM_MODEL, "--itl-ms", "100", "--output-tokens", "40")
    proc, gw = start_gateway(
        tmp_path, [PoolSpec(served_name=SIM_MODEL, endpoints=[sim_url])], {"GATEWAY_DRAIN_TIMEOUT_S": "1"}
    )
    try:
        key = gw.new_key("cut")
        bodies = await streams_through_sigterm(proc, gw, key)
        assert await asyncio.to_thread(proc.popen.wait, 20) in EXITED
        assert all("[DONE]" not in text for text in bodies)  # 4 s streams, a 1 s deadline
        rows = await asyncio.to_thread(gw.ledger, "cut", STREAMS)
        assert len(rows) == STREAMS
        assert all(r.outcome == Outcome.aborted and 0 < r.completion_tokens < 40 for r in rows)
    finally:
        proc.stop()
        sim.stop()


async def test_launcher_drains_an_engine_on_a_gateway_in_another_process(tmp_path: Path) -> None:
    pool = PoolSpec(
        served_name=SIM_MODEL,
        engine="sim",
        replicas=2,
        base_port=two_free_ports(),
        vllm_args=["--itl-ms", "40", "--output-tokens", "25"],
    )
    launcher = EngineLauncher(DeploymentSpec(pools=[pool]), tmp_path, tmp_path / "logs")
    await launcher.start()
    external = PoolSpec(served_name=SIM_MODEL, endpoints=pool.endpoint_urls())
    proc, gw = start_gateway(tmp_path, [external], {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        await launcher.wait_ready(30)
        launcher.drain_hook = GatewayAdminDrain([gw.url], ADMIN_TOKEN)
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        first = pool.endpoint_urls()[0]
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:

            async def draining() -> bool:
                engines = (await client.get("/admin/engines", headers=admin)).json()["data"]
                return next(e["draining"] for e in engines if e["url"] == first)

            restart = asyncio.create_task(launcher.restart(f"{SIM_MODEL}#0", drain_timeout_s=20))
            seen = False
            while not restart.done():
                seen = seen or await draining()
                await asyncio.sleep(0.02)
            await restart
            assert seen and not await draining()
            assert launcher.engines[0].restarts == 1
    finally:
        proc.stop()
        await launcher.stop()
