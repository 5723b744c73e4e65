"""The launcher's commands, and its lifecycle against real (simulated-engine) processes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from engines.launcher import EngineLauncher, EngineStartError, build_commands
from engines.models import ModelSourceError, resolve_model_source
from gateway.config.pools import DeploymentSpec, PoolSpec, load_spec
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
