"""Engine faults a client must not see, against real processes (the gateway and simulated engines,
uvicorn under both, like vLLM's): overload on one engine in waves that reuse pooled connections
as the engine's 5 s keep-alive closes them (issue 19, item 1), and a single engine killed and
restarted while requests keep coming (item 2)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from gateway.config.pools import PoolSpec, QueueSpec
from tests.e2e.conftest import start_gateway
from tests.support.processes import Process, free_port

MODEL = "sim-faults"
STREAMS = 64
# Idle gaps between waves, around uvicorn's 5 s keep-alive: pooled connections are closed by the
# engine just as the next wave takes them (today's 30 s pool sent on them, then ejected the engine).
GAPS_S = [4.8 + 0.05 * i for i in range(11)]


def start_engine(tmp: Path, port: int, *flags: str) -> Process:
    argv = [sys.executable, "-m", "engines.sim", "--port", str(port), "--model", MODEL, *flags]
    proc = Process(argv, tmp / f"sim-{port}-{time.monotonic_ns()}.log")
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health", 30)
    except BaseException:
        proc.stop()
        raise
    return proc


def chat(max_tokens: int, stream: bool = False) -> dict[str, object]:
    messages = [{"role": "user", "content": "go"}]
    return {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": stream}


async def stream(client: httpx.AsyncClient, key: str) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"}
    response = await client.post("/v1/chat/completions", json=chat(100, stream=True), headers=headers)
    return response.status_code, response.text


async def waves(base_url: str, keys: list[str]) -> list[tuple[int, str]]:
    answers: list[tuple[int, str]] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        for i, gap in enumerate(GAPS_S):
            key = keys[i % len(keys)]
            answers += await asyncio.gather(*(stream(client, key) for _ in range(STREAMS)))
            await asyncio.sleep(gap)
    return answers


def test_overload_on_one_engine_answers_only_200_and_429(tmp_path: Path) -> None:
    port = free_port()
    engine = start_engine(tmp_path, port, "--itl-ms", "10", "--output-tokens", "100")  # ~1 s streams
    pool = PoolSpec(served_name=MODEL, endpoints=[f"http://127.0.0.1:{port}"])
    no_defaults = {"GATEWAY_LIMITS_PATH": str(tmp_path / "no-limits.yaml")}  # nothing but what is set
    proc, gateway = start_gateway(tmp_path, [pool], no_defaults)
    try:
        limited = gateway.new_key("limited")
        gateway.cli("limits", "set", "--tenant", "limited", "--max-concurrent", "16")
        unlimited = gateway.new_key("unlimited")
        answers = asyncio.run(waves(gateway.url, [limited, unlimited]))
        counts = Counter(status for status, _ in answers)
        assert set(counts) <= {200, 429}, counts
        assert counts[200] >= len(GAPS_S) * 16, counts
        served = [text for status, text in answers if status == 200]
        assert all(text.endswith("data: [DONE]\n\n") and '"error"' not in text for text in served)
        assert "is DOWN" not in gateway.log.read_text()  # the engine was never taken out
    finally:
        proc.stop()
        engine.stop()


async def steady_load(base_url: str, key: str, seconds: float, rate_per_s: float) -> list[int]:
    headers = {"Authorization": f"Bearer {key}"}
    statuses: list[int] = []

    async def one(client: httpx.AsyncClient) -> None:
        response = await client.post("/v1/chat/completions", json=chat(4), headers=headers)
        statuses.append(response.status_code)

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        tasks = []
        for _ in range(int(seconds * rate_per_s)):
            tasks.append(asyncio.create_task(one(client)))
            await asyncio.sleep(1 / rate_per_s)
        await asyncio.gather(*tasks)
    return statuses


def test_requests_wait_for_a_restarting_engine_instead_of_getting_503(tmp_path: Path) -> None:
    port = free_port()
    engine = start_engine(tmp_path, port)
    # Room in the queue for every request of the outage (6-8 s at 20/s): past a tenant's share the
    # answer is 429 with Retry-After, which is not what this test is about.
    queue = QueueSpec(max_per_tenant=512)
    pool = PoolSpec(served_name=MODEL, endpoints=[f"http://127.0.0.1:{port}"], queue=queue)
    (tmp_path / "no-limits.yaml").write_text("defaults:\n")  # 20 requests/s: past the default rpm
    no_defaults = {"GATEWAY_LIMITS_PATH": str(tmp_path / "no-limits.yaml")}
    proc, gateway = start_gateway(tmp_path, [pool], {"GATEWAY_NO_ENGINE_WAIT_S": "30", **no_defaults})
    restarted: Process | None = None
    try:
        key = gateway.new_key("restart")

        async def scenario() -> list[int]:
            nonlocal restarted
            load = asyncio.create_task(steady_load(gateway.url, key, seconds=10, rate_per_s=20))
            await asyncio.sleep(3)
            engine.signal(signal.SIGKILL)  # the model's only engine dies...
            await asyncio.to_thread(engine.popen.wait, 10)
            await asyncio.sleep(3)
            restarted = await asyncio.to_thread(start_engine, tmp_path, port)  # ...and is back 3 s later
            return await load

        statuses = asyncio.run(scenario())
        assert Counter(statuses) == Counter({200: len(statuses)})  # held, then served: no 503
        assert len(gateway.ledger("restart", expected_rows=len(statuses))) == len(statuses)
    finally:
        proc.stop()
        engine.stop()
        if restarted is not None:
            restarted.stop()
