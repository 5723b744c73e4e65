"""Embeddings through the gateway from a real all-MiniLM-L6-v2 served by vLLM CPU."""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest

from gateway.config.pools import PoolSpec
from gateway.records import Outcome
from tests.e2e.conftest import MINILM, Engine, GatewayProcess, start_gateway


@pytest.fixture(scope="module")
def embedding_gateway(
    embedding_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    proc, gateway = start_gateway(
        tmp_path_factory.mktemp("embed-gateway"),
        [PoolSpec(served_name=MINILM, endpoints=[embedding_engine.url])],
    )
    try:
        yield gateway
    finally:
        proc.stop()


def test_embeddings_are_relayed_and_metered(
    embedding_gateway: GatewayProcess, embedding_engine: Engine
) -> None:
    key = embedding_gateway.new_key("embedder")
    sdk = openai.OpenAI(base_url=f"{embedding_gateway.url}/v1", api_key=key, max_retries=0)
    prompt_before, _ = embedding_engine.counters()
    result = sdk.embeddings.create(
        model=MINILM, input=["A cat sat on the mat.", "Stocks fell sharply today."]
    )
    vectors = [d.embedding for d in result.data]
    assert [len(v) for v in vectors] == [384, 384]
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-3 for v in vectors)  # normalised
    similar = sdk.embeddings.create(model=MINILM, input="A cat is sitting on a mat.").data[0].embedding
    cos = [sum(a * b for a, b in zip(similar, v, strict=True)) for v in vectors]
    assert cos[0] > cos[1] + 0.3, "a real sentence model puts paraphrases together"
    prompt_after, _ = embedding_engine.counters()

    rows = embedding_gateway.ledger("embedder", expected_rows=2)
    assert [(r.api, r.outcome, r.completion_tokens) for r in rows] == [("embeddings", Outcome.ok, 0)] * 2
    assert rows[0].prompt_tokens == result.usage.prompt_tokens > 0
    assert sum(r.prompt_tokens for r in rows) == prompt_after - prompt_before
