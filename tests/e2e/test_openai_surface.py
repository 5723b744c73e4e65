"""The surface an OpenAI SDK user touches, against the gateway process and a real vLLM CPU engine:
the Responses API (JSON and streamed, metered to the engine's own counters), tool calling with
``tool_choice: "auto"`` (the pool's tool-call parser), and an API the model does not serve."""

from __future__ import annotations

import openai
import pytest

from gateway.records import Outcome
from tests.e2e.conftest import TINY, Engine, GatewayProcess

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_responses_json_and_stream_are_metered_exactly(
    gateway_proc: GatewayProcess, vllm_engine: Engine
) -> None:
    sdk = client(gateway_proc, gateway_proc.new_key("responses"))
    vllm_engine.wait_idle()
    prompt_before, generated_before = vllm_engine.counters()

    response = sdk.responses.create(model=TINY, input="Tell me a story about a cat.", max_output_tokens=12)
    assert response.object == "response" and response.usage is not None
    assert 0 < response.usage.output_tokens <= 12 and response.usage.input_tokens > 0

    events = list(
        sdk.responses.create(
            model=TINY, instructions="Be brief.", input="Tell me a story.", max_output_tokens=8, stream=True
        )
    )
    assert events[0].type == "response.created"
    completed = events[-1]
    assert completed.type in ("response.completed", "response.incomplete")
    assert completed.response.usage is not None  # type: ignore[union-attr]
    streamed_usage = completed.response.usage  # type: ignore[union-attr]

    vllm_engine.wait_idle()
    prompt_after, generated_after = vllm_engine.counters()
    rows = gateway_proc.ledger("responses", expected_rows=2)
    assert [(r.api, r.outcome) for r in rows] == [("responses", Outcome.ok)] * 2
    assert (rows[0].prompt_tokens, rows[0].completion_tokens) == (
        response.usage.input_tokens,
        response.usage.output_tokens,
    )
    assert (rows[1].prompt_tokens, rows[1].completion_tokens) == (
        streamed_usage.input_tokens,
        streamed_usage.output_tokens,
    )
    assert rows[1].ttft_s is not None
    assert sum(r.prompt_tokens for r in rows) == prompt_after - prompt_before
    assert sum(r.completion_tokens for r in rows) == generated_after - generated_before


def test_responses_that_need_stored_state_are_refused(gateway_proc: GatewayProcess) -> None:
    sdk = client(gateway_proc, gateway_proc.new_key("responses-stateful"))
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.responses.create(model=TINY, input="and then?", previous_response_id="resp_123")
    assert (raised.value.code, raised.value.param) == ("unsupported_parameter", "previous_response_id")


def test_tool_calling_with_auto_choice_works_json_and_streamed(
    gateway_proc: GatewayProcess, vllm_engine: Engine
) -> None:
    sdk = client(gateway_proc, gateway_proc.new_key("tools"))
    chat = sdk.chat.completions.create(
        model=TINY,
        messages=MESSAGES,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="auto",
        max_tokens=16,
    )
    assert chat.choices[0].finish_reason in ("stop", "length", "tool_calls")
    chunks = list(
        sdk.chat.completions.create(
            model=TINY,
            messages=MESSAGES,  # type: ignore[arg-type]
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice="auto",
            max_tokens=16,
            stream=True,
        )
    )
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length", "tool_calls")
    # A named tool choice makes the engine call it (structured output): the deltas arrive as sent.
    named = list(
        sdk.chat.completions.create(
            model=TINY,
            messages=MESSAGES,  # type: ignore[arg-type]
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=32,
            stream=True,
        )
    )
    calls = [call for c in named if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert calls and calls[0].function is not None and calls[0].function.name == "get_weather"
    rows = gateway_proc.ledger("tools", expected_rows=3)
    assert [r.outcome for r in rows] == [Outcome.ok] * 3


def test_embeddings_on_a_chat_model_are_openais_404(gateway_proc: GatewayProcess) -> None:
    sdk = client(gateway_proc, gateway_proc.new_key("wrong-api"))
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.embeddings.create(model=TINY, input="hello")
    error = raised.value
    assert (error.type, error.code, error.param) == ("invalid_request_error", None, "model")
    assert error.body == {
        "message": f"The model `{TINY}` is not supported by the v1/embeddings endpoint.",
        "type": "invalid_request_error",
        "param": "model",
        "code": None,
    }
