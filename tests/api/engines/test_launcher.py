"""The launcher's commands, and its lifecycle against real (simulated-engine) processes."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from engines.launcher import EngineLauncher, EngineStartError, PortTakenError, build_commands
from engines.models import ModelSourceError, resolve_model_source
from engines.process import port_taken
from gateway.app import create_app
from gateway.config.pools import DeploymentSpec, PoolSpec, load_spec
from gateway.settings import Settings
from gateway.tenancy.auth import generate_key
from tests.support.processes import REPO, free_port


def test_vllm_command_per_replica_with_gpu_placement(tmp_path: Path) -> None:
    spec = load_spec(REPO / "configs" / "gpu-llama.yaml")
    commands = build_commands(spec, tmp_path, python="py")
    assert [c.name for c in commands] == [
        "llama-3.1-8b-instruct#0",
        "llama-3.1-8b-instruct#1",
        "llama-3.1-8b-instruct-tp2#0",
    ]
    first, second, tp2 = commands
    assert first.argv[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert first.argv[first.argv.index("--model") + 1] == "/models/Meta-Llama-3.1-8B-Instruct"
    assert first.argv[first.argv.index("--host") + 1] == "127.0.0.1"
    assert (first.argv[first.argv.index("--port") + 1], second.argv[second.argv.index("--port") + 1]) == (
        "8100",
        "8101",
    )
    assert (first.env["CUDA_VISIBLE_DEVICES"], second.env["CUDA_VISIBLE_DEVICES"]) == ("0", "1")
    assert tp2.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert tp2.argv[tp2.argv.index("--tensor-parallel-size") + 1] == "2"
    assert all(c.env["HF_HUB_OFFLINE"] == "1" for c in commands)


def test_embedding_pool_runs_the_pooling_runner(tmp_path: Path) -> None:
    pool = PoolSpec(served_name="emb", model="/m", kind="embed")
    (command,) = build_commands(DeploymentSpec(pools=[pool]), tmp_path)
    assert command.argv[command.argv.index("--runner") + 1] == "pooling"


def test_external_pools_launch_nothing(tmp_path: Path) -> None:
    pool = PoolSpec(served_name="ext", model="/m", endpoints=["http://10.0.0.5:8000"])
    assert build_commands(DeploymentSpec(pools=[pool]), tmp_path) == []


def test_builtin_models_resolve(tmp_path: Path) -> None:
    assert resolve_model_source("/weights/llama", tmp_path) == "/weights/llama"
    assert resolve_model_source("meta-llama/Llama-3.1-8B-Instruct", tmp_path).startswith("meta-llama/")
    minilm = Path(resolve_model_source("builtin:all-minilm-l6-v2", tmp_path))
    assert (minilm / "config.json").is_file()
    with pytest.raises(ModelSourceError, match="unknown built-in"):
        resolve_model_source("builtin:nope", tmp_path)


def test_engines_must_bind_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        PoolSpec(served_name="x", host="0.0.0.0")


def _sim_spec(*args: str, replicas: int = 1) -> DeploymentSpec:
    pool = PoolSpec(
        served_name="sim", engine="sim", replicas=replicas, base_port=free_port(), vllm_args=list(args)
    )
    return DeploymentSpec(pools=[pool])


async def test_starts_waits_restarts_and_stops(tmp_path: Path) -> None:
    launcher = EngineLauncher(_sim_spec(), tmp_path, tmp_path / "logs")
    await launcher.start()
    supervisor: asyncio.Task[None] | None = None
    try:
        progress: list[str] = []
        await launcher.wait_ready(30, progress.append)
        assert any("ready at" in line for line in progress)
        (engine,) = launcher.engines
        assert engine.process is not None
        first_pid = engine.process.pid
        supervisor = asyncio.create_task(launcher.supervise(poll_s=0.1))
        os.killpg(first_pid, signal.SIGKILL)
        for _ in range(100):
            await asyncio.sleep(0.1)
            if engine.restarts == 1 and engine.alive:
                break
        assert engine.restarts == 1 and engine.process.pid != first_pid
        engine.ready = False
        await launcher.wait_ready(30)
    finally:
        if supervisor is not None:
            supervisor.cancel()
        await launcher.stop()
    assert engine.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(engine.process.pid, 0)


async def test_engine_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    launcher = EngineLauncher(_sim_spec("--failure-rate", "7"), tmp_path, tmp_path / "logs")
    await launcher.start()
    try:
        with pytest.raises(EngineStartError, match="exited with status 2") as raised:
            await launcher.wait_ready(30)
        assert "failure_rate" in str(raised.value)
    finally:
        await launcher.stop()


def test_a_pool_may_not_move_its_engines_off_loopback_or_set_their_key_quietly() -> None:
    """A pool's vllm_args came after the launcher's --host: ``--host 0.0.0.0`` silently exposed
    an engine that answers anyone."""
    for args in (["--host", "0.0.0.0"], ["--host=0.0.0.0"]):
        with pytest.raises(ValueError, match="allow_host_override"):
            PoolSpec(served_name="x", vllm_args=args)
    opted_in = PoolSpec(served_name="x", vllm_args=["--host", "0.0.0.0"], allow_host_override=True)
    assert opted_in.overrides_host
    with pytest.raises(ValueError, match="GATEWAY_ENGINE_API_KEY"):
        PoolSpec(served_name="x", vllm_args=["--api-key", "mine"])
    with pytest.raises(ValueError, match="GATEWAY_ENGINE_API_KEY"):
        PoolSpec(served_name="x", env={"VLLM_API_KEY": "mine"})


def test_the_api_key_reaches_each_engine_in_its_environment_not_its_command_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = load_spec(REPO / "configs" / "gpu-llama.yaml")
    commands = build_commands(spec, tmp_path, python="py", api_key="engine-key-1")
    assert all(c.env["VLLM_API_KEY"] == "engine-key-1" for c in commands)
    assert not any("engine-key-1" in arg for c in commands for arg in c.argv)
    build_commands(spec, tmp_path, python="py")
    assert "engines start without an API key" in caplog.text
    exposed = PoolSpec(served_name="x", model="/m", vllm_args=["--host=0.0.0.0"], allow_host_override=True)
    build_commands(DeploymentSpec(pools=[exposed]), tmp_path, api_key="k")
    assert "x: vllm_args override --host (allow_host_override)" in caplog.text


async def test_an_engine_port_refuses_requests_without_the_gateways_key(tmp_path: Path) -> None:
    """Anything that reached an engine port bypassed keys, limits and the ledger (a direct
    request got 200, and /v1/models told the model's path)."""
    spec = _sim_spec()
    key = secrets.token_urlsafe(32)
    launcher = EngineLauncher(spec, tmp_path, tmp_path / "logs", api_key=key)
    await launcher.start()
    try:
        await launcher.wait_ready(30)
        (url,) = spec.pools[0].endpoint_urls()
        chat = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        async with httpx.AsyncClient(base_url=url) as engine:
            assert (await engine.get("/v1/models")).status_code == 401
            assert (await engine.post("/v1/chat/completions", json=chat)).status_code == 401
            wrong = {"Authorization": "Bearer not-the-key"}
            assert (await engine.post("/v1/chat/completions", json=chat, headers=wrong)).status_code == 401
            assert (await engine.get("/health")).status_code == 200  # probes need no key
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'g.db'}", data_dir=tmp_path, engine_api_key=key
        )
        app = create_app(settings, DeploymentSpec(pools=[PoolSpec(served_name="sim", endpoints=[url])]))
        async with app.router.lifespan_context(app):
            await app.state.gateway.store.create_tenant("acme")
            new = generate_key()
            await app.state.gateway.store.create_key("acme", new.key_hash, new.prefix, None, None)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as gw:
                through = await gw.post(
                    "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {new.secret}"}
                )
        assert through.status_code == 200
    finally:
        await launcher.stop()


def test_a_port_someone_listens_on_is_taken_and_a_closed_one_is_free() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_taken("127.0.0.1", port)
    assert not port_taken("127.0.0.1", port)


async def test_a_start_on_a_taken_port_refuses_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        spec = DeploymentSpec(
            pools=[PoolSpec(served_name="sim", engine="sim", base_port=listener.getsockname()[1])]
        )
        launcher = EngineLauncher(spec, tmp_path, tmp_path / "logs")
        with pytest.raises(PortTakenError, match="is taken by another process"):
            await launcher.start()
        assert launcher.engines == []


_LAUNCHER = """
import asyncio, sys
from pathlib import Path
from engines.launcher import EngineLauncher
from gateway.config.pools import DeploymentSpec, PoolSpec

async def main() -> None:
    pool = PoolSpec(served_name="sim", engine="sim", base_port=int(sys.argv[1]))
    launcher = EngineLauncher(DeploymentSpec(pools=[pool]), Path(sys.argv[2]), Path(sys.argv[2]) / "logs")
    await launcher.start()
    await launcher.wait_ready(60)
    print(launcher.engines[0].process.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited, not yet reaped by whoever adopted it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_an_engine_dies_with_a_launcher_killed_with_sigkill(tmp_path: Path) -> None:
    port = free_port()
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(port), str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    engine_pid = 0
    try:
        assert launcher.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(launcher.stdout.readline), 60)
        engine_pid = int(line)
        assert not _gone(engine_pid)
        os.kill(launcher.pid, signal.SIGKILL)  # no cleanup runs in the launcher
        launcher.wait(10)
        for _ in range(100):
            if _gone(engine_pid) and not port_taken("127.0.0.1", port):
                break
            await asyncio.sleep(0.1)
        assert _gone(engine_pid), "the engine outlived its launcher"
        assert not port_taken("127.0.0.1", port)  # a next start finds its port free
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(10)
        if engine_pid and not _gone(engine_pid):
            os.killpg(engine_pid, signal.SIGKILL)
