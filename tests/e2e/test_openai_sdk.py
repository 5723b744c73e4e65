"""The official `openai` SDK against the real gateway process in front of a real vLLM CPU engine."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import openai
import pytest

from gateway.records import Outcome
from tests.e2e.conftest import TINY, Engine, GatewayProcess
from tests.support.metrics import sample

MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_chat_streamed_chat_and_completions_are_metered_exactly(
    gateway_proc: GatewayProcess, vllm_engine: Engine
) -> None:
    key = gateway_proc.new_key("sdk-basic")
    sdk = client(gateway_proc, key)
    vllm_engine.wait_idle()
    prompt_before, generated_before = vllm_engine.counters()

    chat = sdk.chat.completions.create(model=TINY, messages=MESSAGES, max_tokens=12)  # type: ignore[arg-type]
    assert chat.object == "chat.completion" and chat.usage is not None
    assert chat.usage.completion_tokens <= 12 and chat.usage.prompt_tokens > 0

    stream = sdk.chat.completions.create(
        model=TINY,
        messages=MESSAGES,
        max_tokens=10,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
    streamed_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed_text

    plain_stream = list(sdk.chat.completions.create(model=TINY, messages=MESSAGES, max_tokens=5, stream=True))  # type: ignore[arg-type]
    assert all(c.usage is None for c in plain_stream)

    completion = sdk.completions.create(model=TINY, prompt="Once upon a time", max_tokens=8)
    assert completion.object == "text_completion" and completion.usage is not None

    vllm_engine.wait_idle()
    prompt_after, generated_after = vllm_engine.counters()
    rows = gateway_proc.ledger("sdk-basic", expected_rows=4)
    assert [r.outcome for r in rows] == [Outcome.ok] * 4
    assert sum(r.prompt_tokens for r in rows) == prompt_after - prompt_before
    assert sum(r.completion_tokens for r in rows) == generated_after - generated_before
    assert rows[0].completion_tokens == chat.usage.completion_tokens
    assert rows[1].completion_tokens == usage_chunks[0].usage.completion_tokens  # type: ignore[union-attr]
    assert all(r.ttft_s is not None and r.ttft_s > 0 for r in rows)

    # The billing report agrees with the engine, to the token and (at configs/prices.yaml's
    # tiny-llama prices, $0.10 and $0.40 per million) to the picodollar.
    today = dt.datetime.now(dt.UTC).date().isoformat()
    report = json.loads(
        gateway_proc.cli(
            "usage",
            "report",
            "--tenant",
            "sdk-basic",
            "--from",
            today,
            "--to",
            today,
            "--group-by",
            "model",
            "--format",
            "json",
        )
    )
    prompt, generated = prompt_after - prompt_before, generated_after - generated_before
    assert report["total"]["requests"] == 4
    assert (report["total"]["prompt_tokens"], report["total"]["completion_tokens"]) == (prompt, generated)
    expected_cost = (
        Decimal(int(prompt)) * Decimal("0.10") + Decimal(int(generated)) * Decimal("0.40")
    ) / 10**6
    assert Decimal(report["total"]["cost"]) == expected_cost > 0


def test_models_list_and_bad_key(gateway_proc: GatewayProcess) -> None:
    key = gateway_proc.new_key("sdk-models")
    assert [m.id for m in client(gateway_proc, key).models.list()] == [TINY]
    with pytest.raises(openai.AuthenticationError) as info:
        client(gateway_proc, "sk-gw-wrong").chat.completions.create(model=TINY, messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 401
    assert info.value.body == {  # type: ignore[comparison-overlap]
        "message": "Incorrect API key provided.",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }
    with pytest.raises(openai.NotFoundError):
        client(gateway_proc, key).chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]


def test_revoked_key_is_refused(gateway_proc: GatewayProcess) -> None:
    key = gateway_proc.new_key("sdk-revoke")
    sdk = client(gateway_proc, key)
    assert sdk.models.list().data
    key_id = gateway_proc.cli("keys", "list", "--tenant", "sdk-revoke").split()[0]
    gateway_proc.cli("keys", "revoke", key_id)
    import time

    time.sleep(0.6)  # GATEWAY_AUTH_CACHE_TTL_S=0.5 in these tests
    with pytest.raises(openai.AuthenticationError):
        sdk.models.list()


def test_client_abort_mid_stream_bills_what_the_engine_generated(
    gateway_proc: GatewayProcess, vllm_engine: Engine
) -> None:
    key = gateway_proc.new_key("sdk-abort")
    sdk = client(gateway_proc, key)
    vllm_engine.wait_idle()
    prompt_before, generated_before = vllm_engine.counters()
    max_tokens = 12000
    options = {"include_usage": True, "continuous_usage_stats": True}
    stream = sdk.chat.completions.create(
        # Far more than the engine can make before the gateway sees the client leave, even on a
        # loaded machine. The client counts tokens from the running usage, not chunks: a lagging
        # vLLM API server merges many tokens into one chunk.
        model=TINY,
        messages=MESSAGES,
        max_tokens=max_tokens,
        stream=True,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True, "stream_options": options},
    )
    for chunk in stream:
        if chunk.usage is not None and chunk.usage.completion_tokens >= 20:
            break
    stream.close()
    vllm_engine.wait_idle()
    prompt_after, generated_after = vllm_engine.counters()
    [row] = gateway_proc.ledger("sdk-abort", expected_rows=1)
    assert (row.outcome, row.http_status) == (Outcome.aborted, 499)
    generated = generated_after - generated_before
    assert 20 <= generated < max_tokens, "the engine must stop generating soon after the client left"
    # Every token the engine sent is billed. vLLM may make one more between the gateway cutting
    # the connection and noticing it; that token is never sent, so nobody can bill it (seen once
    # in CI on a loaded machine: 882 billed, 883 made).
    assert row.completion_tokens <= generated <= row.completion_tokens + 2
    assert row.prompt_tokens == prompt_after - prompt_before


def test_metrics_equal_the_ledger(gateway_proc: GatewayProcess) -> None:
    key = gateway_proc.new_key("sdk-metrics")
    sdk = client(gateway_proc, key)
    for max_tokens in (3, 5):
        sdk.chat.completions.create(model=TINY, messages=MESSAGES, max_tokens=max_tokens)  # type: ignore[arg-type]
    list(sdk.chat.completions.create(model=TINY, messages=MESSAGES, max_tokens=4, stream=True))  # type: ignore[arg-type]
    rows = gateway_proc.ledger("sdk-metrics", expected_rows=3)
    text = gateway_proc.metrics()
    labels = {"tenant": "sdk-metrics", "model": TINY}
    assert sample(text, "gateway_requests_total", **labels, status="200") == len(rows) == 3
    assert sample(text, "gateway_tokens_total", **labels, kind="prompt") == sum(r.prompt_tokens for r in rows)
    completion = sum(r.completion_tokens for r in rows)
    assert sample(text, "gateway_tokens_total", **labels, kind="completion") == completion
    assert sample(text, "gateway_time_to_first_token_seconds_count", **labels) == 1  # the stream only
    assert sample(text, "gateway_engine_up", model=TINY) == 1
