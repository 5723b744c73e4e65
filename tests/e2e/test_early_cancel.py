"""A client that leaves before its stream's first token (queued in the engine) cuts the engine
request at once: the engine never generates for it, and the ledger bills exactly what it counted."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gateway.records import Outcome
from tests.e2e.conftest import TINY, Engine, GatewayProcess
from tests.support.metrics import total

LONG = 6000  # tokens per busy stream: the engine's 8 slots stay full for several seconds
SLOTS = 8  # the session engine's --max-num-seqs


def _body(max_tokens: int) -> dict[str, object]:
    return {
        "model": TINY,
        "messages": [{"role": "user", "content": "count to a very large number"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }


def _gauge(engine: Engine, name: str) -> float:
    return total(httpx.get(f"{engine.url}/metrics", timeout=10).text, name)


async def _read_all(client: httpx.AsyncClient, url: str, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream("POST", url, json=_body(LONG), headers=headers) as response:
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            pass


async def test_a_stream_left_while_queued_is_cut_at_once_and_billed_what_the_engine_counted(
    vllm_engine: Engine, gateway_proc: GatewayProcess
) -> None:
    key = gateway_proc.new_key("early-leaver")
    url = f"{gateway_proc.url}/v1/chat/completions"
    vllm_engine.wait_idle()
    prompt_before, generated_before = vllm_engine.counters()
    async with httpx.AsyncClient(timeout=httpx.Timeout(120)) as client:
        busy = [asyncio.create_task(_read_all(client, url, key)) for _ in range(SLOTS)]
        deadline = time.monotonic() + 30
        while _gauge(vllm_engine, "vllm:num_requests_running") < SLOTS:
            assert time.monotonic() < deadline, "the engine never filled its slots"
            await asyncio.sleep(0.05)
        # The ninth waits in the engine's queue; its client gives up before any token comes.
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                url,
                json=_body(LONG),
                headers={"Authorization": f"Bearer {key}"},
                timeout=httpx.Timeout(30, read=0.5),
            )
        await asyncio.sleep(1.0)
        assert _gauge(vllm_engine, "vllm:num_requests_waiting") == 0, "the engine still holds it"
        assert _gauge(vllm_engine, "vllm:num_requests_running") == SLOTS  # the others go on
        await asyncio.gather(*busy)
    vllm_engine.wait_idle()
    prompt_after, generated_after = vllm_engine.counters()
    assert generated_after - generated_before == SLOTS * LONG  # nothing for the one that left
    rows = gateway_proc.ledger("early-leaver", expected_rows=SLOTS + 1)
    [left] = [r for r in rows if r.outcome is Outcome.aborted]
    assert (left.http_status, left.prompt_tokens, left.completion_tokens) == (499, 0, 0)
    assert left.endpoint == vllm_engine.url  # named, so reconciliation could give it any residual
    assert sum(r.completion_tokens for r in rows) == generated_after - generated_before
    assert sum(r.prompt_tokens for r in rows) == prompt_after - prompt_before
