"""An engine's own error answers reach the client in OpenAI's shape, with the engine's status."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.records import Outcome
from gateway.serving.relay import ENGINE_FAILED
from tests.support.fake_upstream import Reply, SentRequest, in_order
from tests.support.serving import ENGINES, MODEL, ServingStack, expected_row

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def vllm(message: str, vllm_type: str, status: int, param: str | None = None) -> bytes:
    """vLLM's error body: its own type names, and the HTTP status again as ``code``."""
    return orjson.dumps({"error": {"message": message, "type": vllm_type, "param": param, "code": status}})


def vllm_before_0_10(message: str, vllm_type: str, status: int) -> bytes:
    return orjson.dumps(
        {"object": "error", "message": message, "type": vllm_type, "param": None, "code": status}
    )


def openai_error(message: str, error_type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            vllm("max_tokens is too large", "BadRequestError", 400, "max_tokens"),
            openai_error("max_tokens is too large", "invalid_request_error", "max_tokens", None),
        ),
        (
            400,
            vllm_before_0_10("prompt is too long", "BadRequestError", 400),
            openai_error("prompt is too long", "invalid_request_error", None, None),
        ),
        (
            # The engine refused the gateway (its --api-key), not the client: a 502, said plainly.
            401,
            b'{"error": "Unauthorized"}',
            openai_error(ENGINE_FAILED, "server_error", None, "upstream_error"),
        ),
        (
            403,
            vllm("forbidden", "PermissionError", 403),
            openai_error(ENGINE_FAILED, "server_error", None, "upstream_error"),
        ),
        (
            404,
            vllm("The model `m` does not exist.", "NotFoundError", 404, "model"),
            openai_error(
                "The model `m` does not exist.", "invalid_request_error", "model", "model_not_found"
            ),
        ),
        (
            409,
            vllm("busy with that request id", "ConflictError", 409),
            openai_error("busy with that request id", "invalid_request_error", None, "conflict"),
        ),
        (
            413,
            b'{"detail": "Request Entity Too Large"}',
            openai_error("Request Entity Too Large", "invalid_request_error", None, "request_too_large"),
        ),
        (
            # A framework's validation answer: OpenAI's 400, the field named, a short sentence.
            422,
            b'{"detail": [{"loc": ["body", "n"], "msg": "bad"}]}',
            openai_error("Invalid value for 'n': bad.", "invalid_request_error", "n", None),
        ),
        (
            # vLLM's own: a Python repr of pydantic's error, the rejected value in it.
            400,
            vllm(
                "1 validation error:\n  {'type': 'float_parsing', 'loc': 'body.temperature', 'msg': "
                "'Input should be a valid number, unable to parse string as a number', 'input': 'hot'}",
                "Bad Request",
                400,
                "body.temperature",
            ),
            openai_error(
                "Invalid value for 'temperature': Input should be a valid number, unable to parse string "
                "as a number.",
                "invalid_request_error",
                "temperature",
                None,
            ),
        ),
        (
            # An engine address in a message is not the client's business.
            400,
            vllm("Error fetching http://10.0.0.5:8100/v1/x: refused", "BadRequestError", 400),
            openai_error("Error fetching [engine] refused", "invalid_request_error", None, None),
        ),
        (
            429,
            vllm("The engine is overloaded.", "TooManyRequests", 429),
            openai_error("The engine is overloaded.", "rate_limit_error", None, "engine_overloaded"),
        ),
        (
            # A string code (the simulated engine's, OpenAI's) is the engine's word: kept.
            429,
            b'{"error": {"message": "Simulated failure (status 429).", "type": "invalid_request_error",'
            b' "param": null, "code": "simulated_failure"}}',
            openai_error("Simulated failure (status 429).", "rate_limit_error", None, "simulated_failure"),
        ),
        (
            500,
            vllm("CUDA error at 127.0.0.1:8100, Traceback ...", "InternalServerError", 500),
            openai_error(ENGINE_FAILED, "server_error", None, "upstream_error"),
        ),
        (
            503,
            b"<html>Service Unavailable</html>",
            openai_error(ENGINE_FAILED, "server_error", None, "upstream_error"),
        ),
    ],
    ids=[
        "400-vllm",
        "400-vllm-before-0.10",
        "401-api-key",
        "403",
        "404-model",
        "409",
        "413-fastapi",
        "422-fastapi",
        "400-vllm-validation-repr",
        "400-engine-address",
        "429-vllm",
        "429-string-code",
        "500-vllm",
        "503-html",
    ],
)
async def test_engine_errors_get_openais_type_and_keep_their_status(
    stack: ServingStack, status: int, body: bytes, expected: dict[str, Any]
) -> None:
    def every_engine(request: SentRequest) -> Reply:
        return Reply(status, body, "text/html" if body.startswith(b"<") else "application/json")

    stack.upstream.handler = every_engine  # a 5xx is tried on both engines
    answer = await stack.post({**CHAT, "stream": True})
    answered = {401: 502, 403: 502, 422: 400}.get(status, status)
    assert (answer.status, answer.json()) == (answered, expected)
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-ratelimit-limit-requests"] == "1000"
    assert stack.upstream.responses[-1].released  # read whole: the connection is reused
    assert await stack.rows() == [
        expected_row(
            answer.headers["x-request-id"],
            endpoint=ENGINES[0] if status >= 500 else ENGINES[1],  # a 5xx was tried on both
            outcome=Outcome.error,
            http_status=answered,
            error_code=expected["error"]["code"],
        )
    ]
    assert [e.inflight for e in stack.pool.endpoints] == [0, 0]


@pytest.mark.parametrize(
    ("status", "vllm_type", "exception"),
    [
        (400, "BadRequestError", openai.BadRequestError),
        (404, "NotFoundError", openai.NotFoundError),
        (422, "BadRequestError", openai.BadRequestError),  # OpenAI answers a bad body with 400
        (429, "TooManyRequests", openai.RateLimitError),
    ],
)
async def test_the_openai_sdk_raises_its_matching_error_with_openais_type(
    stack: ServingStack, status: int, vllm_type: str, exception: type[openai.APIStatusError]
) -> None:
    stack.upstream.handler = in_order(Reply(status, vllm_before_0_10("no", vllm_type, status)))

    async def through_the_gateway(request: httpx.Request) -> httpx.Response:
        answer = await stack.post(request.content)
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)

    http_client = httpx.AsyncClient(transport=httpx.MockTransport(through_the_gateway))
    client = openai.AsyncOpenAI(
        api_key="sk-test", base_url="http://gateway/v1", http_client=http_client, max_retries=0
    )
    async with http_client:
        with pytest.raises(exception) as raised:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    expected = openai_error("no", "invalid_request_error", None, None)["error"]
    if status == 404:
        expected |= {"code": "model_not_found"}
    if status == 429:
        expected |= {"type": "rate_limit_error", "code": "engine_overloaded"}
    assert (raised.value.status_code, raised.value.body) == ({422: 400}.get(status, status), expected)
    assert (raised.value.type, raised.value.code) == (expected["type"], expected["code"])
