"""Cached prompt tokens against a real vLLM CPU engine: the client sees them, the ledger records
them, the report adds them up, Prometheus counts them and the cost is lower, to the picodollar.

The launcher starts the engine with ``--enable-prompt-tokens-details``; vLLM's CPU backend caches
whole blocks of 128 tokens and never the last prompt token, so a 300-token prompt sent again has
256 tokens cached. Each test starts its prompt with tokens of its own, so what earlier tests left
in the session engine's prefix cache cannot hit.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from typing import Any

import httpx
import openai

from gateway.records import Outcome
from tests.e2e.conftest import TINY, Engine, GatewayProcess
from tests.support.metrics import sample, total

BLOCK = 128
# configs/prices.yaml's tiny-llama: $0.10 and $0.40 per million tokens, cached input at the
# default 0.1 of the input price; in picodollars per token.
IN, CACHED_IN, OUT = 100_000, 10_000, 400_000


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=120)


def fresh_token_ids(count: int) -> list[int]:
    """``count`` ordinary token ids (clear of the special ones at the start of the vocabulary)
    that no other request has used."""
    rng = random.Random(uuid.uuid4().int)
    return [rng.randrange(100, 1000) for _ in range(count)]


def cached_of(usage: Any) -> int:
    """``usage.prompt_tokens_details.cached_tokens`` (0 when the engine left the details out)."""
    details = usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details is not None else 0


def expected_cached(prompt_tokens: int) -> int:
    """What vLLM caches of a prompt seen before: its whole blocks, never the last token."""
    return (prompt_tokens - 1) // BLOCK * BLOCK


def engine_prefix_hits(engine: Engine) -> float:
    """The engine's own count of prompt tokens served from its prefix cache."""
    return total(httpx.get(f"{engine.url}/metrics", timeout=10).text, "vllm:prefix_cache_hits_total")


def test_a_repeated_prompt_is_cached_in_the_response_the_ledger_the_report_and_the_cost(
    gateway_proc: GatewayProcess, vllm_engine: Engine
) -> None:
    tenant = "cached-tokens"
    sdk = client(gateway_proc, gateway_proc.new_key(tenant))
    prompt = fresh_token_ids(300)
    vllm_engine.wait_idle()
    prompt_before, _ = vllm_engine.counters()
    hits_before = engine_prefix_hits(vllm_engine)

    # Twice as a whole body, then streamed: cached 0, then 256, then 256 in the usage chunk.
    bodies = [sdk.completions.create(model=TINY, prompt=prompt, max_tokens=4) for _ in range(2)]
    assert [b.usage.prompt_tokens for b in bodies if b.usage] == [300, 300]
    assert [cached_of(b.usage) for b in bodies] == [0, 256]
    chunks = list(
        sdk.completions.create(
            model=TINY, prompt=prompt, max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert cached_of(usage_chunk.usage) == 256

    # A chat whose text repeats: the second time, every whole block of its prompt is cached.
    words = f"Session {uuid.uuid4().hex}. " + "The quick brown fox jumps over the lazy dog. " * 40
    messages: Any = [{"role": "user", "content": words}]
    chats = [sdk.chat.completions.create(model=TINY, messages=messages, max_tokens=4) for _ in range(2)]
    chat_prompt = chats[0].usage.prompt_tokens if chats[0].usage else 0
    assert chat_prompt > 2 * BLOCK
    assert [cached_of(c.usage) for c in chats] == [0, expected_cached(chat_prompt)]

    vllm_engine.wait_idle()
    rows = gateway_proc.ledger(tenant, expected_rows=5)
    assert [r.outcome for r in rows] == [Outcome.ok] * 5
    assert [r.cached_tokens for r in rows] == [0, 256, 256, 0, expected_cached(chat_prompt)]
    for row in rows:  # cached tokens at a tenth of the input price, exactly
        uncached = row.prompt_tokens - row.cached_tokens
        assert row.cost_pico == uncached * IN + row.cached_tokens * CACHED_IN + row.completion_tokens * OUT
    assert rows[1].cost_pico < rows[1].prompt_tokens * IN + rows[1].completion_tokens * OUT  # cheaper
    # The engine's own counters agree: every prompt token, and every cache hit, is in the ledger.
    prompt_after, _ = vllm_engine.counters()
    assert sum(r.prompt_tokens for r in rows) == prompt_after - prompt_before
    assert sum(r.cached_tokens for r in rows) == engine_prefix_hits(vllm_engine) - hits_before

    today = dt.datetime.now(dt.UTC).date().isoformat()
    report = json.loads(
        gateway_proc.cli(
            "usage", "report", "--tenant", tenant, "--from", today, "--to", today, "--format", "json"
        )
    )
    assert report["total"]["cached_tokens"] == sum(r.cached_tokens for r in rows)
    assert report["total"]["prompt_tokens"] == sum(r.prompt_tokens for r in rows)
    cached_metric = sample(
        gateway_proc.metrics(), "gateway_tokens_total", tenant=tenant, kind="cached_prompt"
    )
    assert cached_metric == sum(r.cached_tokens for r in rows)
