"""``gateway up`` supervises the engines it launched (issue 19, item 3), with simulated engines
(real processes, seconds to start): a killed engine is restarted and requests wait for it instead
of failing; ``kill -9`` of ``gateway up`` takes its engines with it; a start that finds an engine's
port taken (an orphan of an earlier run) says so in one line and stops."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

from tests.e2e.test_gateway_up import gateway_script, snippets, wait_for_banner
from tests.support.processes import Process, free_port

MODEL = "sim-up"


def engine_pids(port: int) -> list[int]:
    """Live processes running ``python -m engines.sim … --port PORT``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"engines.sim" in argv and str(port).encode() in argv and state != "Z":
            pids.append(int(proc.name))
    return pids


def up(tmp: Path, engine_port: int, name: str) -> tuple[Process, int]:
    spec = {"pools": [{"served_name": MODEL, "engine": "sim", "base_port": engine_port}]}
    config = tmp / "pools.yaml"
    config.write_text(yaml.safe_dump(spec))
    port = free_port()
    env = {
        "GATEWAY_CONFIG_PATH": str(config),
        "GATEWAY_PORT": str(port),
        "GATEWAY_DATA_DIR": str(tmp / "data"),
        "GATEWAY_DATABASE_URL": f"sqlite:///{tmp / 'data' / 'gateway.db'}",
        "GATEWAY_NO_ENGINE_WAIT_S": "30",
    }
    return Process([gateway_script(), "up"], tmp / f"{name}.log", env), port


async def burst(port: int, key: str, count: int) -> list[int]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        answers = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
                for _ in range(count)
            )
        )
    return [a.status_code for a in answers]


def wait_gone(engine_port: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := engine_pids(engine_port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_gateway_up_restarts_a_dead_engine_and_takes_its_engines_down_with_it(tmp_path: Path) -> None:
    engine_port = free_port()
    proc, port = up(tmp_path, engine_port, "up")
    try:
        key, _, _ = snippets(wait_for_banner(proc))
        assert Counter(asyncio.run(burst(port, key, 4))) == Counter({200: 4})
        [first] = engine_pids(engine_port)
        os.kill(first, signal.SIGKILL)
        # Sent while the engine is dead and being restarted (1 s backoff, then its start): they wait.
        assert Counter(asyncio.run(burst(port, key, 20))) == Counter({200: 20})
        [second] = engine_pids(engine_port)
        assert second != first
        assert "restarting in 1 s" in proc.log_path.read_text()

        os.kill(proc.popen.pid, signal.SIGKILL)  # kill -9 of `gateway up`: no cleanup of its own
        proc.popen.wait(10)
        assert wait_gone(engine_port, 10) == [], "an engine outlived `gateway up`"
    finally:
        proc.stop()
        for pid in engine_pids(engine_port):
            os.killpg(pid, signal.SIGKILL)


def test_gateway_up_refuses_an_engine_port_held_by_an_orphan(tmp_path: Path) -> None:
    engine_port = free_port()
    argv = [sys.executable, "-m", "engines.sim", "--port", str(engine_port), "--model", MODEL]
    orphan = Process(argv, tmp_path / "orphan.log")  # healthy and answering for the model
    try:
        orphan.wait_http(f"http://127.0.0.1:{engine_port}/health", 30)
        proc, _ = up(tmp_path, engine_port, "second-up")
        try:
            code = proc.popen.wait(120)
        finally:
            proc.stop()
        log = proc.log_path.read_text()
        # gateway up's own check, before anything starts (the launcher's PortTakenError is the
        # backstop for a port taken between that check and the engine's start).
        assert code == 2, log
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: engine port {engine_port} ({MODEL}) on 127.0.0.1 is in use (an engine left by an "
            f"earlier run, or another `gateway up`?): stop it (e.g. `fuser -k {engine_port}/tcp`) or "
            f"move the engines with `gateway up --engine-base-port {engine_port + 100}`"
        ], log
        assert "Gateway ready" not in log and "Traceback" not in log
        assert engine_pids(engine_port) == [orphan.popen.pid]  # nothing else started on it
    finally:
        orphan.stop()
