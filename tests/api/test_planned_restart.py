"""A planned engine restart (``kill -HUP`` → ``EngineLauncher.restart``) with the gateway in the
same process, as ``gateway up`` runs them: the engine is drained first, so no request is cut."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from engines.launcher import EngineLauncher
from gateway.app import create_app
from gateway.cli.embedded import RouterDrain
from gateway.config.pools import DeploymentSpec, PoolSpec
from gateway.settings import Settings
from tests.conftest import SIM_MODEL, Gateway
from tests.support.processes import two_free_ports

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 25}


@pytest.fixture
async def launched(tmp_path: Path) -> AsyncIterator[tuple[EngineLauncher, DeploymentSpec]]:
    pool = PoolSpec(
        served_name=SIM_MODEL,
        engine="sim",
        replicas=2,
        base_port=two_free_ports(),
        vllm_args=["--itl-ms", "40", "--output-tokens", "25"],
    )
    spec = DeploymentSpec(pools=[pool])
    launcher = EngineLauncher(spec, tmp_path, tmp_path / "logs")
    await launcher.start()
    try:
        await launcher.wait_ready(30)
        yield launcher, spec
    finally:
        await launcher.stop()


async def test_restart_drains_the_engine_first_and_cuts_nothing(
    launched: tuple[EngineLauncher, DeploymentSpec], tmp_path: Path
) -> None:
    launcher, spec = launched
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        data_dir=tmp_path,
        health_interval_s=0.2,
        auth_cache_ttl_s=0,
        limits_path=None,
    )
    app = create_app(settings, spec)
    launcher.drain_hook = RouterDrain(app)
    first, second = (e.command.url for e in launcher.engines)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            gw = Gateway(app, client, app.state.gateway, first)
            secret, _ = await gw.new_key("restart")
            headers = {"Authorization": f"Bearer {secret}"}
            endpoints = {e.url: e for e in gw.state.router.endpoints()}

            async def stream() -> str:
                response = await client.post(
                    "/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers
                )
                return response.text

            streams = [asyncio.create_task(stream()) for _ in range(2)]
            while not all(e.inflight for e in endpoints.values()):  # one stream on each engine
                await asyncio.sleep(0.01)
            old_pids = [e.process.pid for e in launcher.engines if e.process is not None]
            restart = asyncio.create_task(launcher.restart(f"{SIM_MODEL}#0", drain_timeout_s=20))
            while not endpoints[first].draining:
                await asyncio.sleep(0.01)
            short = {**CHAT, "max_tokens": 2}  # done well before the first engine's stream
            during = [
                await client.post("/v1/chat/completions", json=short, headers=headers) for _ in range(3)
            ]
            assert launcher.engines[0].restarting
            assert [r.status_code for r in during] == [200] * 3
            await restart
            bodies = await asyncio.gather(*streams)
            assert all(b.endswith("data: [DONE]\n\n") and '"error"' not in b for b in bodies)

            new_pids = [e.process.pid for e in launcher.engines if e.process is not None]
            assert new_pids[0] != old_pids[0] and new_pids[1] == old_pids[1]
            assert not endpoints[first].draining and launcher.engines[0].restarts == 1
            await gw.state.ledger.flush()
            rows = await gw.state.store.list_usage()
            assert len(rows) == 5 and all(r.outcome.value == "ok" for r in rows)
            # The three sent while the first engine drained all went to the second one.
            assert [r.endpoint for r in sorted(rows, key=lambda r: r.started_at)[2:]] == [second] * 3


async def test_sighup_restarts_every_engine_one_at_a_time(
    launched: tuple[EngineLauncher, DeploymentSpec],
) -> None:
    launcher, _ = launched
    old_pids = [e.process.pid for e in launcher.engines if e.process is not None]
    launcher.restart_on_sighup()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(300):
            if all(e.restarts == 1 and not e.restarting for e in launcher.engines):
                break
            await asyncio.sleep(0.05)
        new_pids = [e.process.pid for e in launcher.engines if e.process is not None]
        assert all(new != old for new, old in zip(new_pids, old_pids, strict=True))
        assert all(e.restarts == 1 and e.alive for e in launcher.engines)
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
