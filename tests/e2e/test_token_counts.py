"""The gateway's prompt token counts equal what a real vLLM engine reports for the same request."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.admission.tokens import TokenCounter, build_counters
from gateway.config.pools import DeploymentSpec, PoolSpec
from gateway.records import Api
from tests.e2e.conftest import DATA_DIR, MINILM, TINY, Engine
from tests.support.inference import typed_request

CHATS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Tell me a story about a cat."}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Japan? Answer with <|user|> and </s> in the text, naïvely: 東京"},
    ],
    [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Summarise these two parts:"},
                {"type": "text", "text": "one about the gateway,\nand one about the engines."},
            ],
        }
    ],
]


def prompt_tokens(engine: Engine, api: Api, body: dict[str, Any]) -> int:
    response = httpx.post(f"{engine.url}{api.path}", json={"model": engine.model, **body}, timeout=120)
    response.raise_for_status()
    tokens: int = response.json()["usage"]["prompt_tokens"]
    return tokens


def counter(served_name: str, model: str) -> TokenCounter:
    """The counter the gateway builds for a pool of this model (the model the engine serves)."""
    spec = DeploymentSpec(pools=[PoolSpec(served_name=served_name, model=model)])
    built = build_counters(spec, DATA_DIR)[served_name]
    assert built.source.startswith("hf:")
    return built


def test_chat_and_completion_counts_equal_vllms_prompt_tokens(vllm_engine: Engine) -> None:
    tiny = counter(TINY, "builtin:tiny-llama")
    for messages in CHATS:
        body = {"messages": messages, "max_tokens": 1}
        assert tiny.count_prompt(typed_request(Api.chat, body)) == prompt_tokens(vllm_engine, Api.chat, body)
    for prompt in ("Once upon a time", ["first prompt", "a second, longer prompt"]):
        body = {"prompt": prompt, "max_tokens": 1}
        assert tiny.count_prompt(typed_request(Api.completions, body)) == prompt_tokens(
            vllm_engine, Api.completions, body
        )


def test_embedding_counts_equal_vllms_prompt_tokens(embedding_engine: Engine) -> None:
    minilm = counter(MINILM, "builtin:all-minilm-l6-v2")
    for texts in ("The quick brown fox jumps over the lazy dog.", ["Tokenization, WordPiece-style!", "hi"]):
        body = {"input": texts}
        assert minilm.count_prompt(typed_request(Api.embeddings, body)) == prompt_tokens(
            embedding_engine, Api.embeddings, body
        )
