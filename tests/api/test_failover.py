"""Failover through the app in front of real simulated engines: passive ejection and its
half-open probe, connect / first-token / total timeouts (504), an engine dying before its first
byte. The 5xx retry is in test_routing_policies.py, a death mid-stream in test_gateway.py."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway.config.pools import PoolSpec
from gateway.records import Outcome
from tests.api.test_dedicated import serving
from tests.conftest import SIM_MODEL, Gateway
from tests.support.clock import FakeClock
from tests.support.metrics import sample
from tests.support.processes import start_sim

MESSAGES = [{"role": "user", "content": "hi"}]


async def configure(url: str, **patch: object) -> None:
    async with httpx.AsyncClient(base_url=url) as sim:
        (await sim.post("/sim/config", json=patch)).raise_for_status()


async def ask(
    gw: Gateway, secret: str, *, stream: bool = False, api: str = "chat", **extra: Any
) -> httpx.Response:
    if api == "chat":
        path, body = "/v1/chat/completions", {"model": SIM_MODEL, "messages": MESSAGES, "max_tokens": 4}
    else:
        path, body = "/v1/completions", {"model": SIM_MODEL, "prompt": "hi", "max_tokens": 4}
    return await gw.client.post(
        path, json={**body, "stream": stream, **extra}, headers={"Authorization": f"Bearer {secret}"}
    )


async def ledger(gw: Gateway) -> list[Any]:
    await gw.state.ledger.flush()
    return list(await gw.state.store.list_usage())


@contextlib.contextmanager
def unaccepting_listener() -> Iterator[str]:
    """A port whose accept queue is full: the kernel drops new SYNs, so connecting times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = server.getsockname()
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(address)
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        for sock in [*fillers, server]:
            sock.close()


async def test_failing_engine_is_ejected_then_one_probe_brings_it_back(
    sim_engine: str, tmp_path: Path
) -> None:
    broken, broken_url = start_sim(tmp_path, SIM_MODEL, "--failure-rate", "1", "--failure-status", "500")
    try:
        pool = PoolSpec(served_name=SIM_MODEL, endpoints=[broken_url, sim_engine], routing="round_robin")
        clock = FakeClock()
        async with serving(
            sim_engine,
            tmp_path,
            pool,
            clock,
            eject_after_failures=2,
            eject_cooldown_s=0.6,
            health_interval_s=30,
        ) as gw:
            secret, _ = await gw.new_key("ejected")
            broken_ep = next(e for e in gw.state.router.endpoints() if e.url == broken_url)
            for _ in range(4):  # the 5xx are retried on the good engine: every answer is a 200
                assert (await ask(gw, secret)).status_code == 200
            assert broken_ep.healthy and broken_ep.ejected_until > clock()  # /health still 200
            assert broken_ep.failures == 2  # ejected after two: the two later requests never tried it
            text = gw.state.metrics.render().decode()
            assert sample(text, "gateway_engine_ejections_total", model=SIM_MODEL) == 1

            await configure(broken_url, failure_rate=0)  # repaired during its cool-down
            clock.advance(0.6)
            answers = await asyncio.gather(*(ask(gw, secret) for _ in range(6)))
            assert [a.status_code for a in answers] == [200] * 6
            assert broken_ep.ejected_until == 0 and broken_ep.failures == 0  # the probe passed
            rows = await ledger(gw)
            assert any(r.endpoint == broken_url for r in rows)
            assert all(e.inflight == 0 and not e.probing for e in gw.state.router.endpoints())
    finally:
        broken.stop()


async def test_failed_probe_doubles_the_cool_down(sim_engine: str, tmp_path: Path) -> None:
    broken, broken_url = start_sim(tmp_path, SIM_MODEL, "--failure-rate", "1", "--failure-status", "503")
    try:
        pool = PoolSpec(served_name=SIM_MODEL, endpoints=[broken_url, sim_engine], routing="round_robin")
        clock = FakeClock()
        async with serving(
            sim_engine,
            tmp_path,
            pool,
            clock,
            eject_after_failures=1,
            eject_cooldown_s=0.3,
            health_interval_s=30,
        ) as gw:
            secret, _ = await gw.new_key("probe")
            broken_ep = next(e for e in gw.state.router.endpoints() if e.url == broken_url)
            for _ in range(2):  # round robin: one of the two tries the broken engine first
                assert (await ask(gw, secret)).status_code == 200
            assert broken_ep.cooldown_s == 0.3 and broken_ep.failures == 1
            clock.advance(0.3)
            for _ in range(2):  # one of these is the probe; it fails and is retried elsewhere
                assert (await ask(gw, secret)).status_code == 200
            assert broken_ep.cooldown_s == 0.6 and broken_ep.ejected_until > clock()
            assert broken_ep.failures == 2
    finally:
        broken.stop()


async def test_connect_timeout_tries_the_next_engine_then_answers_504(
    sim_engine: str, tmp_path: Path
) -> None:
    with unaccepting_listener() as black_hole:
        pool = PoolSpec(served_name=SIM_MODEL, endpoints=[black_hole, sim_engine], routing="round_robin")
        overrides = {"connect_timeout_s": 0.3, "health_interval_s": 30, "health_timeout_s": 0.2}
        async with serving(sim_engine, tmp_path, pool, **overrides) as gw:
            secret, _ = await gw.new_key("connect")
            hole = next(e for e in gw.state.router.endpoints() if e.url == black_hole)
            hole.healthy = True  # as if it had answered its last check and then hung
            assert (await ask(gw, secret)).status_code == 200
            assert (await ask(gw, secret)).status_code == 200
            assert not hole.healthy  # marked down after its connect timed out
            assert {r.endpoint for r in await ledger(gw)} == {sim_engine}

        alone = PoolSpec(served_name=SIM_MODEL, endpoints=[black_hole])
        # Its failed health probe marks it down: the request would be held for it to come back.
        no_hold = {**overrides, "no_engine_wait_s": 0}
        async with serving(sim_engine, tmp_path / "alone", alone, **no_hold) as gw:
            secret, _ = await gw.new_key("connect")
            gw.state.router.endpoints()[0].healthy = True
            started = time.monotonic()
            response = await ask(gw, secret)
            assert response.status_code == 504, response.text
            assert response.json()["error"]["code"] == "upstream_timeout"
            assert time.monotonic() - started < 2


async def test_no_first_token_in_time_is_a_504_and_the_engine_is_cut(sim_engine: str, tmp_path: Path) -> None:
    pool = PoolSpec(served_name=SIM_MODEL, endpoints=[sim_engine])
    async with serving(sim_engine, tmp_path, pool, first_token_timeout_s=0.3, health_interval_s=30) as gw:
        await configure(sim_engine, ttft_ms=5000)
        secret, _ = await gw.new_key("slow")
        started = time.monotonic()
        response = await ask(gw, secret, stream=True)
        assert response.status_code == 504
        assert response.json()["error"] == {
            "message": "The engine sent no first token within 0.3s.",
            "type": "timeout",
            "param": None,
            "code": "upstream_timeout",
        }
        assert time.monotonic() - started < 2
        [row] = await ledger(gw)
        assert (row.outcome, row.http_status, row.error_code) == (Outcome.error, 504, "upstream_timeout")
        assert gw.state.router.endpoints()[0].failures == 1  # counts towards ejection
        async with httpx.AsyncClient(base_url=sim_engine) as sim:  # the engine saw the cut
            for _ in range(50):
                if (
                    sample(
                        (await sim.get("/metrics")).text, "vllm:num_requests_running", model_name=SIM_MODEL
                    )
                    == 0
                ):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the engine still runs the timed-out request")


async def test_total_timeout_is_a_504_or_an_error_event_mid_stream(sim_engine: str, tmp_path: Path) -> None:
    pool = PoolSpec(served_name=SIM_MODEL, endpoints=[sim_engine])
    async with serving(sim_engine, tmp_path, pool, request_timeout_s=0.6, health_interval_s=30) as gw:
        await configure(sim_engine, ttft_ms=0, itl_ms=100, output_tokens=30)
        secret, _ = await gw.new_key("long")
        whole = await ask(gw, secret, max_tokens=30)
        assert whole.status_code == 504 and whole.json()["error"]["code"] == "upstream_timeout"

        streamed = await ask(gw, secret, stream=True, max_tokens=30)
        assert streamed.status_code == 200  # the first token came in time
        events = [e.removeprefix("data: ") for e in streamed.text.split("\n\n") if e]
        assert events[-1] == "[DONE]"
        error = orjson.loads(events[-2])["error"]
        assert error["code"] == "upstream_timeout"
        tokens = [
            e for e in events[:-2] if orjson.loads(e)["choices"] and orjson.loads(e)["choices"][0]["delta"]
        ]
        rows = await ledger(gw)
        assert [(r.outcome, r.http_status) for r in rows] == [(Outcome.error, 504)] * 2
        assert 0 < rows[1].completion_tokens < 30
        assert rows[1].completion_tokens >= len(tokens) - 1  # the role chunk carries no token


async def test_engine_dying_before_its_first_byte_is_retried_elsewhere(
    sim_engine: str, tmp_path: Path
) -> None:
    dying, dying_url = start_sim(tmp_path, SIM_MODEL, "--fail-after-tokens", "0")
    try:
        pool = PoolSpec(served_name=SIM_MODEL, endpoints=[dying_url, sim_engine], routing="round_robin")
        async with serving(sim_engine, tmp_path, pool, health_interval_s=30) as gw:
            secret, _ = await gw.new_key("early")
            for _ in range(3):
                response = await ask(gw, secret, stream=True, api="completions")
                assert response.status_code == 200
                assert response.text.endswith("data: [DONE]\n\n") and '"error"' not in response.text
            rows = await ledger(gw)
            assert {(r.endpoint, r.outcome) for r in rows} == {(sim_engine, Outcome.ok)}
    finally:
        dying.stop()


async def test_an_engine_killed_between_requests_costs_no_request(sim_engine: str, tmp_path: Path) -> None:
    doomed, doomed_url = start_sim(tmp_path, SIM_MODEL)
    try:
        pool = PoolSpec(served_name=SIM_MODEL, endpoints=[doomed_url, sim_engine], routing="round_robin")
        async with serving(sim_engine, tmp_path, pool, health_interval_s=30) as gw:
            secret, _ = await gw.new_key("killed")
            for stream in (False, True):  # keep-alive connections to both engines are pooled now
                assert (await ask(gw, secret, stream=stream)).status_code == 200
            doomed.signal(signal.SIGKILL)
            doomed.popen.wait(5)
            answers = await asyncio.gather(*(ask(gw, secret, stream=i % 2 == 0) for i in range(8)))
            assert [a.status_code for a in answers] == [200] * 8
            assert all('"error"' not in a.text for a in answers)
            assert not next(e for e in gw.state.router.endpoints() if e.url == doomed_url).healthy
    finally:
        doomed.stop()
