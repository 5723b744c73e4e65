"""The simulated engine, in-process over ``httpx.ASGITransport`` (and raw ASGI for disconnects).

Token rule under test: chat prompt = 3 per message + content words; completions prompt = words
(or token-id count); completion = min(max_tokens or room left in the context, output_tokens).
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import struct
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engines.sim import SimApp, SimConfig, create_sim_app
from engines.sim.__main__ import config_from_args, parse_args
from engines.sim.engine import tokens_due
from engines.sim.errors import SimulatedCrash
from engines.sim.prefix_cache import PrefixCache

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
TWO_MESSAGES = [
    {"role": "system", "content": "You are terse"},
    {"role": "user", "content": "hello there"},
]
TWO_MESSAGES_PROMPT_TOKENS = 2 * 3 + 5


def sim_config(**overrides: Any) -> SimConfig:
    return SimConfig(**{"models": ["m", "m2"], "output_tokens": 8, "seed": 7, **overrides})


def client_for(app: SimApp, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://sim")


@pytest.fixture
def app() -> SimApp:
    return create_sim_app(sim_config())


@pytest.fixture
async def client(app: SimApp) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as client:
        yield client


def sse_events(body: str) -> list[Any]:
    """Decode an SSE body; ``[DONE]`` stays a string. Every event must be ``data: ...\\n\\n``."""
    assert body.endswith("\n\n")
    events: list[Any] = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


async def metric_values(client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
    """``(sample name, model_name[/finished_reason]) -> value`` from ``/metrics``."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = sample.labels["model_name"]
            if "finished_reason" in sample.labels:
                key += "/" + sample.labels["finished_reason"]
            assert sample.labels["engine"] == "0"
            values[(sample.name, key)] = sample.value
    return values


def strip_identity(body: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Check and drop the per-response ``id`` and ``created``."""
    assert re.fullmatch(prefix + r"[0-9a-f]{32}", body.pop("id"))
    assert isinstance(body.pop("created"), int)
    return body


# -- plain endpoints ------------------------------------------------------------------------------


async def test_health_is_an_empty_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.content == b""


async def test_models_lists_every_served_name(client: httpx.AsyncClient, app: SimApp) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    card = {"object": "model", "created": app.engine.created, "owned_by": "vllm", "parent": None}
    assert response.json() == {
        "object": "list",
        "data": [
            {"id": "m", **card, "root": "m", "max_model_len": 4096},
            {"id": "m2", **card, "root": "m2", "max_model_len": 4096},
        ],
    }


# -- chat and completions, non-streaming ----------------------------------------------------------


async def test_chat_non_stream_wire_format(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT_URL, json={"model": "m", "messages": TWO_MESSAGES, "max_tokens": 5})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert strip_identity(response.json(), "chatcmpl-") == {
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": " lorem ipsum dolor sit amet",
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "reasoning": None,
                },
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": {
            "prompt_tokens": 11,
            "total_tokens": 16,
            "completion_tokens": 5,
            "prompt_tokens_details": None,
        },
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


@pytest.mark.parametrize(
    ("limits", "completion_tokens", "finish_reason"),
    [
        ({}, 8, "stop"),  # the model says its 8 tokens
        ({"max_tokens": 8}, 8, "length"),  # the limit is reached exactly
        ({"max_tokens": 3}, 3, "length"),
        ({"max_tokens": 100}, 8, "stop"),
        ({"max_tokens": 100, "max_completion_tokens": 2}, 2, "length"),  # the newer field wins
    ],
)
async def test_chat_usage_follows_the_token_rule(
    client: httpx.AsyncClient, limits: dict[str, int], completion_tokens: int, finish_reason: str
) -> None:
    response = await client.post(CHAT_URL, json={"model": "m", "messages": TWO_MESSAGES, **limits})
    body = response.json()
    assert body["usage"]["prompt_tokens"] == TWO_MESSAGES_PROMPT_TOKENS
    assert body["usage"]["completion_tokens"] == completion_tokens
    assert body["usage"]["total_tokens"] == TWO_MESSAGES_PROMPT_TOKENS + completion_tokens
    assert body["choices"][0]["finish_reason"] == finish_reason
    assert len(body["choices"][0]["message"]["content"].split()) == completion_tokens


async def test_chat_counts_text_parts_and_defaults_the_model(client: httpx.AsyncClient) -> None:
    content = [{"type": "text", "text": "one two"}, {"type": "image_url", "image_url": {"url": "x"}}]
    response = await client.post(CHAT_URL, json={"messages": [{"role": "user", "content": content}]})
    body = response.json()
    assert body["model"] == "m"
    assert body["usage"]["prompt_tokens"] == 3 + 2


async def test_completion_non_stream_wire_format(client: httpx.AsyncClient) -> None:
    response = await client.post(
        COMPLETIONS_URL, json={"model": "m2", "prompt": "a b  c\nd", "max_tokens": 2}
    )
    assert response.status_code == 200
    assert strip_identity(response.json(), "cmpl-") == {
        "object": "text_completion",
        "model": "m2",
        "choices": [
            {
                "index": 0,
                "text": " lorem ipsum",
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
                "prompt_logprobs": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": {
            "prompt_tokens": 4,
            "total_tokens": 6,
            "completion_tokens": 2,
            "prompt_tokens_details": None,
        },
        "kv_transfer_params": None,
    }


@pytest.mark.parametrize(("prompt", "prompt_tokens"), [([5, 6, 7], 3), (["x y"], 2), ([[1, 2, 3, 4, 5]], 5)])
async def test_completion_prompt_forms(client: httpx.AsyncClient, prompt: Any, prompt_tokens: int) -> None:
    response = await client.post(COMPLETIONS_URL, json={"model": "m", "prompt": prompt})
    assert response.json()["usage"] == {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + 8,
        "completion_tokens": 8,
        "prompt_tokens_details": None,
    }


@pytest.mark.parametrize(
    ("limits", "completion_tokens", "finish_reason"),
    [
        ({}, 16, "length"),  # vLLM's completions default: max_tokens=16
        ({"max_tokens": None}, 50, "stop"),  # explicit null: up to the context
        ({"max_tokens": 20}, 20, "length"),
    ],
)
async def test_completion_max_tokens_default(
    limits: dict[str, Any], completion_tokens: int, finish_reason: str
) -> None:
    async with client_for(create_sim_app(sim_config(output_tokens=50))) as client:
        response = await client.post(COMPLETIONS_URL, json={"model": "m", "prompt": "a b", **limits})
    choice, usage = response.json()["choices"][0], response.json()["usage"]
    assert (usage["completion_tokens"], choice["finish_reason"]) == (completion_tokens, finish_reason)


@pytest.mark.parametrize("limits", [{}, {"max_tokens": 7}, {"max_tokens": None}])
async def test_max_tokens_is_clamped_to_the_context_left(limits: dict[str, Any]) -> None:
    async with client_for(create_sim_app(sim_config(max_model_len=10, output_tokens=50))) as client:
        response = await client.post(
            COMPLETIONS_URL, json={"model": "m", "prompt": "one two three four", **limits}
        )
    body = response.json()
    assert body["usage"]["completion_tokens"] == 6
    assert body["choices"][0]["finish_reason"] == "length"


# -- streaming ------------------------------------------------------------------------------------


async def test_chat_stream_wire_format(client: httpx.AsyncClient) -> None:
    response = await client.post(
        CHAT_URL, json={"model": "m", "messages": TWO_MESSAGES, "max_tokens": 3, "stream": True}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    ids = {chunk.pop("id") for chunk in chunks}
    assert len(ids) == 1 and re.fullmatch(r"chatcmpl-[0-9a-f]{32}", ids.pop())
    assert len({chunk.pop("created") for chunk in chunks}) == 1
    head = {"object": "chat.completion.chunk", "model": "m"}

    def chunk(delta: dict[str, str], **finish: Any) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None, **finish}
        return {**head, "choices": [choice]}

    assert chunks == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": " lorem"}),
        chunk({"content": " ipsum"}),
        chunk({"content": " dolor"}, finish_reason="length", stop_reason=None),
    ]


async def test_chat_stream_include_usage_adds_a_final_usage_chunk(client: httpx.AsyncClient) -> None:
    payload = {
        "model": "m",
        "messages": TWO_MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = sse_events((await client.post(CHAT_URL, json=payload)).text)
    assert [e == "[DONE]" for e in events].count(True) == 1 and events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert len(chunks) == 1 + 8
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 11, "total_tokens": 19, "completion_tokens": 8}
    assert usage_chunk["id"] == chunks[0]["id"]


async def test_chat_stream_continuous_usage_on_every_chunk(client: httpx.AsyncClient) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    payload = {
        "model": "m",
        "messages": TWO_MESSAGES,
        "max_tokens": 4,
        "stream": True,
        "stream_options": options,
    }
    chunks = sse_events((await client.post(CHAT_URL, json=payload)).text)[:-1]
    running = [chunk["usage"]["completion_tokens"] for chunk in chunks]
    assert running == [0, 1, 2, 3, 4, 4]  # role chunk, 4 tokens, final usage chunk
    assert all(chunk["usage"]["prompt_tokens"] == 11 for chunk in chunks)
    assert all(chunk["usage"]["total_tokens"] == 11 + chunk["usage"]["completion_tokens"] for chunk in chunks)


async def test_completion_stream_wire_format(client: httpx.AsyncClient) -> None:
    payload = {"model": "m", "prompt": "a b c", "max_tokens": 2, "stream": True}
    payload["stream_options"] = {"include_usage": True}
    events = sse_events((await client.post(COMPLETIONS_URL, json=payload)).text)
    for event in events[:-1]:
        assert re.fullmatch(r"cmpl-[0-9a-f]{32}", event.pop("id"))
        assert isinstance(event.pop("created"), int)
    head = {"object": "text_completion", "model": "m"}
    choice = {"index": 0, "logprobs": None, "stop_reason": None}
    assert events == [
        {**head, "choices": [{**choice, "text": " lorem", "finish_reason": None}]},
        {**head, "choices": [{**choice, "text": " ipsum", "finish_reason": "length"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2}},
        "[DONE]",
    ]


async def test_stream_with_zero_output_tokens_still_finishes() -> None:
    async with client_for(create_sim_app(sim_config(output_tokens=0))) as client:
        payload = {"model": "m", "messages": TWO_MESSAGES, "stream": True}
        events = sse_events((await client.post(CHAT_URL, json=payload)).text)
    assert [e["choices"][0]["delta"] for e in events[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": ""},
    ]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


# -- embeddings -----------------------------------------------------------------------------------


async def test_embeddings_shape_normalisation_and_determinism(client: httpx.AsyncClient) -> None:
    payload = {"model": "m", "input": ["the cat sat", "a dog", "the  cat sat"]}
    response = await client.post("/v1/embeddings", json=payload)
    assert response.status_code == 200
    body = strip_identity(response.json(), "embd-")
    assert body["object"] == "list" and body["model"] == "m"
    assert body["usage"] == {"prompt_tokens": 5 + 3, "total_tokens": 8, "completion_tokens": 0}
    vectors = [item["embedding"] for item in body["data"]]
    assert [(item["object"], item["index"]) for item in body["data"]] == [("embedding", i) for i in range(3)]
    assert all(len(vector) == 384 for vector in vectors)
    assert all(math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-9) for vector in vectors)
    assert vectors[0] == vectors[2]  # the same words give the same vector
    assert vectors[0] != vectors[1]
    again = (await client.post("/v1/embeddings", json={"model": "m", "input": "the cat sat"})).json()
    assert again["data"][0]["embedding"] == vectors[0]


async def test_embeddings_base64_and_token_inputs() -> None:
    async with client_for(create_sim_app(sim_config(embedding_dim=8))) as client:
        as_float = (await client.post("/v1/embeddings", json={"input": [1, 2, 3]})).json()
        payload = {"input": [[1, 2, 3]], "encoding_format": "base64"}
        as_base64 = (await client.post("/v1/embeddings", json=payload)).json()
    assert as_float["usage"]["prompt_tokens"] == 3
    decoded = struct.unpack("<8f", base64.b64decode(as_base64["data"][0]["embedding"]))
    assert decoded == pytest.approx(as_float["data"][0]["embedding"], rel=1e-6)


# -- metrics and the prefix cache -----------------------------------------------------------------


async def test_metric_counters_equal_the_usage_served(client: httpx.AsyncClient) -> None:
    served: dict[str, list[int]] = {"m": [0, 0], "m2": [0, 0]}
    requests = [
        ("m", CHAT_URL, {"messages": TWO_MESSAGES, "max_tokens": 3}),
        (
            "m",
            CHAT_URL,
            {"messages": TWO_MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
        ),
        ("m2", COMPLETIONS_URL, {"prompt": "one two three", "max_tokens": 30}),
        (
            "m2",
            COMPLETIONS_URL,
            {"prompt": [1, 2], "stream": True, "stream_options": {"include_usage": True}},
        ),
    ]
    for model, url, payload in requests:
        response = await client.post(url, json={"model": model, **payload})
        body = sse_events(response.text)[-2] if payload.get("stream") else response.json()
        served[model][0] += body["usage"]["prompt_tokens"]
        served[model][1] += body["usage"]["completion_tokens"]
    values = await metric_values(client)
    for model, (prompt, completion) in served.items():
        assert values[("vllm:prompt_tokens_total", model)] == prompt
        assert values[("vllm:generation_tokens_total", model)] == completion
        assert values[("vllm:prefix_cache_queries_total", model)] == prompt
        assert values[("vllm:num_requests_running", model)] == 0
        assert values[("vllm:num_requests_waiting", model)] == 0
    assert values[("vllm:request_success_total", "m/length")] == 1
    assert values[("vllm:request_success_total", "m/stop")] == 1
    assert values[("vllm:request_success_total", "m2/stop")] == 2
    assert values[("vllm:kv_cache_usage_perc", "m")] == 0


async def test_prefix_cache_hits_count_leading_blocks(client: httpx.AsyncClient) -> None:
    prompt = " ".join(f"w{i}" for i in range(40))  # 40 tokens: 2 full blocks of 16
    for _ in range(2):
        await client.post(COMPLETIONS_URL, json={"model": "m", "prompt": prompt, "max_tokens": 1})
    other = " ".join(f"w{i}" for i in range(16)) + " different tail words"  # shares the first block
    await client.post(COMPLETIONS_URL, json={"model": "m", "prompt": other, "max_tokens": 1})
    values = await metric_values(client)
    assert values[("vllm:prefix_cache_queries_total", "m")] == 40 + 40 + 19
    assert values[("vllm:prefix_cache_hits_total", "m")] == 0 + 32 + 16


def test_prefix_cache_never_hits_the_last_token_and_evicts_lru() -> None:
    cache = PrefixCache(block_size=4, capacity=2)
    assert cache.query(list(range(8))) == 0
    assert cache.query(list(range(8))) == 4  # the second block holds the last token
    assert cache.query(list(range(9))) == 8
    assert cache.query([9, 9, 9, 9, 9]) == 0  # evicts the least recently used block
    assert len(cache) == 2
    assert cache.query(list(range(5))) == 0


async def test_cached_tokens_are_reported_in_whole_blocks_when_details_are_on() -> None:
    """As vLLM with ``--enable-prompt-tokens-details``: the body's usage and a stream's final usage
    chunk say how many prompt tokens came from the prefix cache (whole blocks, never the last)."""
    prompt = " ".join(f"w{i}" for i in range(300))  # 300 tokens: 2 whole blocks of 128
    config = sim_config(prefix_block_size=128, enable_prompt_tokens_details=True)
    async with client_for(create_sim_app(config)) as client:
        once = {"model": "m", "prompt": prompt, "max_tokens": 1}
        bodies = [(await client.post(COMPLETIONS_URL, json=once)).json() for _ in range(2)]
        stream = {"model": "m", "prompt": prompt, "max_tokens": 2, "stream": True}
        stream["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        events = sse_events((await client.post(COMPLETIONS_URL, json=stream)).text)
    details = [b["usage"]["prompt_tokens_details"] for b in bodies]
    assert details == [{"cached_tokens": 0}, {"cached_tokens": 256}]
    *running, final, done = events
    assert done == "[DONE]" and final["choices"] == []
    assert final["usage"] == {
        "prompt_tokens": 300,
        "total_tokens": 302,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 256},
    }
    assert all("prompt_tokens_details" not in e["usage"] for e in running)  # running usage: never


def test_cli_flags_turn_on_prompt_token_details_and_set_the_block_size() -> None:
    config = config_from_args(parse_args(["--enable-prompt-tokens-details", "--block-size", "128"]))
    assert (config.enable_prompt_tokens_details, config.prefix_block_size) == (True, 128)
    assert (sim_config().enable_prompt_tokens_details, sim_config().prefix_block_size) == (False, 16)


async def test_reset_zeroes_counters_and_forgets_the_prefix_cache(client: httpx.AsyncClient) -> None:
    prompt = " ".join(f"w{i}" for i in range(20))
    await client.post(COMPLETIONS_URL, json={"model": "m", "prompt": prompt})
    response = await client.post("/sim/reset")
    assert response.status_code == 200
    assert all(value == 0 for value in (await metric_values(client)).values())
    await client.post(COMPLETIONS_URL, json={"model": "m", "prompt": prompt})
    assert (await metric_values(client))[("vllm:prefix_cache_hits_total", "m")] == 0


# -- errors and failure injection -----------------------------------------------------------------


def error(message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


async def test_error_bodies(client: httpx.AsyncClient) -> None:
    bad_json = await client.post(
        CHAT_URL, content=b'{"model": "m",', headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["message"].startswith("Invalid JSON body: ")
    assert bad_json.json()["error"]["type"] == "invalid_request_error"

    unknown = await client.post(CHAT_URL, json={"model": "nope", "messages": TWO_MESSAGES})
    assert unknown.status_code == 404
    assert unknown.json() == error("The model `nope` does not exist.", "model", "model_not_found")

    no_messages = await client.post(CHAT_URL, json={"model": "m"})
    assert no_messages.status_code == 400
    assert no_messages.json() == error("messages: a non-empty list of messages is required", "messages")

    no_prompt = await client.post(COMPLETIONS_URL, json={"model": "m"})
    assert no_prompt.status_code == 400
    assert no_prompt.json() == error("prompt: a non-empty string or list of token ids is required", "prompt")

    zero = await client.post(COMPLETIONS_URL, json={"model": "m", "prompt": "x", "max_tokens": 0})
    assert zero.json() == error("max_tokens: must be an integer >= 1", "max_tokens")

    not_object = await client.post(COMPLETIONS_URL, json=["x"])
    assert not_object.json() == error("The request body must be a JSON object.")

    route = await client.get("/v1/nothing")
    assert route.status_code == 404
    assert route.json() == error("GET /v1/nothing is not served")
    assert (await client.get(CHAT_URL)).status_code == 405


async def test_context_length_is_enforced() -> None:
    async with client_for(create_sim_app(sim_config(max_model_len=10))) as client:
        long_prompt = await client.post(COMPLETIONS_URL, json={"model": "m", "prompt": "w " * 11})
        too_many = await client.post(COMPLETIONS_URL, json={"model": "m", "prompt": "a", "max_tokens": 11})
        payload = {"model": "m", "messages": TWO_MESSAGES, "max_completion_tokens": 12}
        chat_too_many = await client.post(CHAT_URL, json=payload)
    assert long_prompt.status_code == 400
    assert long_prompt.json() == error(
        "This model's maximum context length is 10 tokens. However, your prompt contains 11 input tokens, "
        "which exceeds this limit even without any output tokens. "
        "Please reduce the length of the input prompt.",
        "input_tokens",
        "context_length_exceeded",
    )
    assert too_many.status_code == 400
    assert too_many.json() == error(
        "max_tokens=11 cannot be greater than max_model_len=10. Please request fewer output tokens.",
        "max_tokens",
    )
    assert chat_too_many.json() == error(
        "max_completion_tokens=12 cannot be greater than max_model_len=10. "
        "Please request fewer output tokens.",
        "max_completion_tokens",
    )


async def test_failure_rate_one_fails_every_inference_request() -> None:
    async with client_for(create_sim_app(sim_config(failure_rate=1.0, failure_status=503))) as client:
        for url, payload in [
            (CHAT_URL, {"messages": TWO_MESSAGES}),
            (COMPLETIONS_URL, {"prompt": "x", "stream": True}),
            ("/v1/embeddings", {"input": "x"}),
        ]:
            response = await client.post(url, json=payload)
            assert response.status_code == 503
            assert response.json() == {
                "error": {
                    "message": "Simulated failure (status 503).",
                    "type": "server_error",
                    "param": None,
                    "code": "simulated_failure",
                }
            }
        assert (await client.get("/health")).status_code == 200
        values = await metric_values(client)
    assert values[("vllm:prompt_tokens_total", "m")] == 0


async def test_failure_rate_is_seeded_and_roughly_right() -> None:
    outcomes = []
    for _ in range(2):
        async with client_for(create_sim_app(sim_config(failure_rate=0.3, seed=11))) as client:
            statuses = [
                (await client.post(COMPLETIONS_URL, json={"prompt": "x"})).status_code for _ in range(200)
            ]
        outcomes.append(statuses)
    assert outcomes[0] == outcomes[1]
    assert 35 <= outcomes[0].count(500) <= 85


async def test_runtime_config_patch(client: httpx.AsyncClient) -> None:
    current = (await client.get("/sim/config")).json()
    assert current["output_tokens"] == 8 and current["fail_after_tokens"] is None

    patched = await client.post(
        "/sim/config", json={"output_tokens": 2, "failure_rate": 1, "failure_status": 429}
    )
    assert patched.status_code == 200
    assert patched.json() == {**current, "output_tokens": 2, "failure_rate": 1.0, "failure_status": 429}
    assert (await client.post(COMPLETIONS_URL, json={"prompt": "x"})).status_code == 429

    await client.post("/sim/config", json={"failure_rate": 0})
    body = (await client.post(COMPLETIONS_URL, json={"prompt": "x"})).json()
    assert body["usage"]["completion_tokens"] == 2

    rejected = await client.post("/sim/config", json={"models": ["other"]})
    assert rejected.status_code == 400
    assert rejected.json() == error("models: Extra inputs are not permitted")
    negative = await client.post("/sim/config", json={"itl_ms": -1})
    assert negative.json() == error("itl_ms: Input should be greater than or equal to 0")
    assert (await client.get("/sim/config")).json()["itl_ms"] == 0


async def test_fail_after_tokens_cuts_the_stream_without_done(app: SimApp) -> None:
    async with client_for(app, raise_app_exceptions=False) as client:
        await client.post("/sim/config", json={"fail_after_tokens": 3})
        payload = {"model": "m", "messages": TWO_MESSAGES, "stream": True}
        response = await client.post(CHAT_URL, json=payload)
        events = sse_events(response.text)
        assert "[DONE]" not in events
        assert [e["choices"][0]["delta"].get("content") for e in events] == ["", " lorem", " ipsum", " dolor"]
        values = await metric_values(client)
        assert values[("vllm:generation_tokens_total", "m")] == 3
        assert values[("vllm:request_success_total", "m/stop")] == 0
        assert values[("vllm:num_requests_running", "m")] == 0
        assert values[("vllm:kv_cache_usage_perc", "m")] == 0

        await client.post("/sim/config", json={"fail_after_tokens": None})
        assert sse_events((await client.post(CHAT_URL, json=payload)).text)[-1] == "[DONE]"
    async with client_for(app) as client:
        await client.post("/sim/config", json={"fail_after_tokens": 0})
        with pytest.raises(SimulatedCrash):
            await client.post(CHAT_URL, json=payload)


# -- pacing, disconnects and admission ------------------------------------------------------------


class RawClient:
    """Drives the ASGI app directly so a test can disconnect at an exact point."""

    def __init__(self, app: SimApp, path: str, payload: dict[str, Any], disconnect_after_events: int) -> None:
        self.app, self.path, self.payload = app, path, payload
        self.disconnect_after_events = disconnect_after_events
        self.events: list[bytes] = []
        self.gone = asyncio.Event()
        self._body_sent = False

    async def run(self) -> None:
        scope = {"type": "http", "method": "POST", "path": self.path, "headers": []}
        if self.disconnect_after_events == 0:
            self.gone.set()
        await self.app(scope, self._receive, self._send)

    async def _receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": orjson.dumps(self.payload), "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            self.events.append(message["body"])
            if len(self.events) >= self.disconnect_after_events:
                self.gone.set()


@pytest.mark.parametrize("itl_ms", [0.0, 2.0])
async def test_disconnect_mid_stream_stops_generation(itl_ms: float) -> None:
    app = create_sim_app(sim_config(output_tokens=50, itl_ms=itl_ms))
    raw = RawClient(app, CHAT_URL, {"messages": TWO_MESSAGES, "stream": True}, disconnect_after_events=4)
    await asyncio.wait_for(raw.run(), timeout=5)
    assert len(raw.events) == 4  # role chunk + 3 tokens, then nothing: no finish, no [DONE]
    stats = app.engine.metrics.stats("m")
    assert stats.generation_tokens == 3
    assert stats.prompt_tokens == TWO_MESSAGES_PROMPT_TOKENS
    assert (stats.running, stats.kv_tokens, stats.success) == (0, 0, {"stop": 0, "length": 0})


async def test_disconnect_while_waiting_for_the_first_token() -> None:
    app = create_sim_app(sim_config(ttft_ms=10_000))
    for stream in (False, True):
        raw = RawClient(
            app, CHAT_URL, {"messages": TWO_MESSAGES, "stream": stream}, disconnect_after_events=0
        )
        await asyncio.wait_for(raw.run(), timeout=2)  # the 10 s wait is cut short
        assert all(b"lorem" not in event for event in raw.events)
    stats = app.engine.metrics.stats("m")
    assert (stats.prompt_tokens, stats.generation_tokens, stats.running) == (0, 0, 0)


def test_tokens_due_by_elapsed_time() -> None:
    assert tokens_due(0.009, ttft=0.01, itl=0.005, total=10) == 0
    assert tokens_due(0.01, ttft=0.01, itl=0.005, total=10) == 1
    assert tokens_due(0.0249, ttft=0.01, itl=0.005, total=10) == 3
    assert tokens_due(9.0, ttft=0.01, itl=0.005, total=10) == 10
    assert tokens_due(0.02, ttft=0.01, itl=0.0, total=10) == 10


async def test_pacing_waits_ttft_and_itl() -> None:
    app = create_sim_app(sim_config(ttft_ms=40, itl_ms=10, output_tokens=5))
    loop = asyncio.get_running_loop()
    async with client_for(app) as client:
        for stream in (False, True):
            started = loop.time()
            response = await client.post(CHAT_URL, json={"messages": TWO_MESSAGES, "stream": stream})
            assert response.status_code == 200
            assert loop.time() - started >= 0.04 + 4 * 0.01 - 0.005


async def test_requests_beyond_max_num_seqs_wait(client: httpx.AsyncClient) -> None:
    await client.post("/sim/config", json={"max_num_seqs": 1, "ttft_ms": 100})
    payload = {"model": "m", "messages": TWO_MESSAGES}
    first = asyncio.create_task(client.post(CHAT_URL, json=payload))
    second = asyncio.create_task(client.post(CHAT_URL, json={**payload, "model": "m2"}))
    await asyncio.sleep(0.03)
    values = await metric_values(client)
    assert values[("vllm:num_requests_running", "m")] == 1
    assert values[("vllm:num_requests_waiting", "m2")] == 1
    assert values[("vllm:kv_cache_usage_perc", "m")] == pytest.approx(11 / 262_144)
    assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]
    await client.post("/sim/config", json={"ttft_ms": 10_000})
    waiting = [asyncio.create_task(client.post(CHAT_URL, json=payload)) for _ in range(3)]
    await asyncio.sleep(0.03)
    assert (await metric_values(client))[("vllm:num_requests_waiting", "m")] == 2
    await client.post("/sim/config", json={"max_num_seqs": 3})  # raising the limit admits them at once
    values = await metric_values(client)
    assert (values[("vllm:num_requests_running", "m")], values[("vllm:num_requests_waiting", "m")]) == (3, 0)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    values = await metric_values(client)  # cancelled requests give their slots back
    assert (values[("vllm:num_requests_running", "m")], values[("vllm:kv_cache_usage_perc", "m")]) == (0, 0)
    values = await metric_values(client)
    assert values[("vllm:num_requests_running", "m2")] == 0
    assert values[("vllm:num_requests_waiting", "m2")] == 0


# -- process plumbing -----------------------------------------------------------------------------


def test_cli_flags_build_the_config() -> None:
    args = parse_args(
        ["--port", "9", "--model", "a", "--model", "b", "--ttft-ms", "5", "--itl-ms", "1.5"]
        + ["--output-tokens", "64", "--failure-rate", "0.1", "--failure-status", "503"]
        + ["--embedding-dim", "16", "--seed", "3"]
    )
    assert args.port == 9
    config = config_from_args(args)
    assert config.models == ["a", "b"]
    assert (config.ttft_ms, config.itl_ms, config.output_tokens) == (5, 1.5, 64)
    assert (config.failure_rate, config.failure_status) == (0.1, 503)
    assert (config.embedding_dim, config.seed) == (16, 3)


async def test_lifespan_is_acknowledged(app: SimApp) -> None:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
