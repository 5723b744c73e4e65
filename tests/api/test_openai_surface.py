"""What an honest client sees through the real ``openai`` SDK: the exception class, status, type,
code and param of every error; ``models.retrieve``; the Responses API, JSON and streamed, metered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from gateway.limit_spec import LimitSpec
from gateway.records import Outcome, UsageRecord
from tests.conftest import SIM_MODEL, Gateway

USER = [{"role": "user", "content": "say four words please"}]
# The sim renders a response's input as chat messages: 3 template tokens plus the words.
RESPONSE_PROMPT_TOKENS = 3 + 4


@pytest.fixture
async def sdk(gateway: Gateway) -> AsyncIterator[tuple[openai.AsyncOpenAI, str]]:
    secret, _ = await gateway.new_key(models=frozenset({SIM_MODEL}))
    client = openai.AsyncOpenAI(
        api_key=secret, base_url="http://gateway/v1", http_client=gateway.client, max_retries=0
    )
    yield client, secret


async def ledger(gw: Gateway) -> list[UsageRecord]:
    await gw.state.ledger.flush()
    return await gw.state.store.list_usage()


def message_of(raised: pytest.ExceptionInfo[openai.APIStatusError]) -> str:
    body = raised.value.body
    assert isinstance(body, dict)
    return str(body["message"])


def error_of(raised: pytest.ExceptionInfo[openai.APIStatusError]) -> tuple[int, Any, Any, Any]:
    error = raised.value
    return error.status_code, error.type, error.code, error.param


async def test_bad_requests_are_400_with_the_field_named(sdk: tuple[openai.AsyncOpenAI, str]) -> None:
    client, _ = sdk
    cases: list[tuple[dict[str, Any], tuple[int, str, str, str]]] = [
        ({"max_tokens": -1}, (400, "invalid_request_error", "invalid_value", "max_tokens")),
        ({"n": "two"}, (400, "invalid_request_error", "invalid_value", "n")),
        (
            {"messages": [{"role": "wizard", "content": "x"}]},
            (400, "invalid_request_error", "invalid_value", "messages.[0].role"),
        ),
        (
            {"extra_body": {"priority": -10}},
            (400, "invalid_request_error", "unsupported_parameter", "priority"),
        ),
        (
            {"stream_options": {"include_usage": True}},
            (400, "invalid_request_error", None, "stream_options"),  # type: ignore[list-item]
        ),
    ]
    for extra, expected in cases:
        arguments: dict[str, Any] = {"model": SIM_MODEL, "messages": USER, **extra}
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(**arguments)
        assert error_of(raised) == expected, extra
        assert "Input should" not in raised.value.message or "'" + expected[3] + "'" in raised.value.message
        assert "input_value" not in raised.value.message  # never a Python repr


async def test_keys_and_models(gateway: Gateway, sdk: tuple[openai.AsyncOpenAI, str]) -> None:
    client, _ = sdk
    wrong = client.with_options(api_key="sk-gw-wrong")
    with pytest.raises(openai.AuthenticationError) as auth:
        await wrong.chat.completions.create(model=SIM_MODEL, messages=USER)  # type: ignore[arg-type]
    assert error_of(auth) == (401, "authentication_error", "invalid_api_key", None)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="no-such-model", messages=USER)  # type: ignore[arg-type]
    assert error_of(missing) == (404, "invalid_request_error", "model_not_found", "model")


async def test_models_retrieve_applies_the_allow_list(
    gateway: Gateway, sdk: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, _ = sdk
    model = await client.models.retrieve(SIM_MODEL)
    assert (model.id, model.object, model.owned_by) == (SIM_MODEL, "model", "gateway")
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.models.retrieve("no-such-model")
    assert error_of(unknown) == (404, "invalid_request_error", "model_not_found", "model")
    other_secret, _ = await gateway.new_key("other", models=frozenset({"another-model"}))
    with pytest.raises(openai.NotFoundError) as hidden:
        await client.with_options(api_key=other_secret).models.retrieve(SIM_MODEL)
    assert error_of(hidden) == (404, "invalid_request_error", "model_not_found", "model")
    assert "does not exist or you do not have access to it" in hidden.value.message


async def test_rate_limits_are_429_with_their_code(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key("capped")
    await gateway.state.store.set_tenant_limits("capped", LimitSpec(rpm=1))
    client = openai.AsyncOpenAI(
        api_key=secret, base_url="http://gateway/v1", http_client=gateway.client, max_retries=0
    )
    await client.chat.completions.create(model=SIM_MODEL, messages=USER, max_tokens=1)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model=SIM_MODEL, messages=USER, max_tokens=1)  # type: ignore[arg-type]
    assert error_of(limited) == (429, "rate_limit_error", "rate_limit_exceeded", None)


async def test_unknown_routes_wrong_methods_and_large_bodies(
    gateway: Gateway, sdk: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, secret = sdk
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.post("/nothing-here", cast_to=httpx.Response, body={})
    assert error_of(unknown) == (404, "invalid_request_error", "not_found", None)
    assert message_of(unknown) == "Invalid URL (POST /v1/nothing-here)."
    with pytest.raises(openai.APIStatusError) as method:
        await client.get("/chat/completions", cast_to=httpx.Response)
    assert error_of(method) == (405, "invalid_request_error", "method_not_allowed", None)
    assert method.value.response.headers["allow"] == "POST"
    with pytest.raises(openai.APIStatusError) as large:
        await client.chat.completions.create(
            model=SIM_MODEL,
            messages=[{"role": "user", "content": "x" * 70_000}],
        )
    assert error_of(large) == (413, "invalid_request_error", "request_too_large", None)
    plain = await gateway.client.get("/v1/nothing", headers={"Authorization": f"Bearer {secret}"})
    assert plain.json() == {
        "error": {
            "message": "Invalid URL (GET /v1/nothing).",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    }


async def test_engine_faults_are_5xx_without_the_engines_words(
    gateway: Gateway, sdk: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, _ = sdk
    await gateway.sim(failure_rate=1.0, failure_status=500)
    with pytest.raises(openai.InternalServerError) as failed:
        await client.chat.completions.create(model=SIM_MODEL, messages=USER)  # type: ignore[arg-type]
    assert error_of(failed) == (500, "server_error", "upstream_error", None)
    assert message_of(failed) == "The engine serving this model failed while processing your request."
    assert gateway.sim_url.removeprefix("http://") not in str(failed.value.body)


async def test_responses_json_is_relayed_and_metered(
    gateway: Gateway, sdk: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, _ = sdk
    response = await client.responses.create(
        model=SIM_MODEL, input="say four words please", max_output_tokens=5
    )
    assert (response.status, response.output_text.count(" ")) == ("incomplete", 5)
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (RESPONSE_PROMPT_TOKENS, 5)
    [row] = await ledger(gateway)
    assert (row.api, row.model, row.outcome, row.http_status) == ("responses", SIM_MODEL, Outcome.ok, 200)
    assert (row.prompt_tokens, row.completion_tokens) == (RESPONSE_PROMPT_TOKENS, 5)


async def test_responses_stream_is_relayed_and_metered(
    gateway: Gateway, sdk: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, _ = sdk
    stream = await client.responses.create(model=SIM_MODEL, input="say four words please", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == 16
    assert kinds[-1] == "response.completed"
    [row] = await ledger(gateway)
    assert (row.api, row.outcome, row.prompt_tokens, row.completion_tokens) == (
        "responses",
        Outcome.ok,
        RESPONSE_PROMPT_TOKENS,
        16,
    )
    assert row.ttft_s is not None


async def test_responses_that_need_storage_are_refused(sdk: tuple[openai.AsyncOpenAI, str]) -> None:
    client, _ = sdk
    with pytest.raises(openai.BadRequestError) as raised:
        await client.responses.create(model=SIM_MODEL, input="and then?", previous_response_id="resp_1")
    assert error_of(raised) == (400, "invalid_request_error", "unsupported_parameter", "previous_response_id")


async def test_responses_count_against_the_limits(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key("capped-responses")
    await gateway.state.store.set_tenant_limits("capped-responses", LimitSpec(tpm=20))
    client = openai.AsyncOpenAI(
        api_key=secret, base_url="http://gateway/v1", http_client=gateway.client, max_retries=0
    )
    with pytest.raises(openai.RateLimitError) as limited:  # 7 prompt + 64 reserved output > 20
        await client.responses.create(model=SIM_MODEL, input="say four words please", max_output_tokens=64)
    assert error_of(limited)[:3] == (429, "rate_limit_error", "rate_limit_exceeded")


def test_openapi_documents_the_bodies_and_the_real_error_statuses(gateway: Gateway) -> None:
    schema = gateway.app.openapi()
    for path, model in [
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/completions", "CompletionRequest"),
        ("/v1/embeddings", "EmbeddingRequest"),
        ("/v1/responses", "ResponsesRequest"),
    ]:
        operation = schema["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
        assert model in schema["components"]["schemas"]
        assert {"400", "401", "404", "429", "503"} <= set(operation["responses"])
    assert "/v1/models/{model}" in schema["paths"]
    every = [
        answers for item in schema["paths"].values() for op in item.values() for answers in [op["responses"]]
    ]
    assert all("422" not in answers for answers in every)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
