"""An engine's own error answers reach the client in OpenAI's shape, with the engine's status."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.records import Outcome
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
            401,
            b'{"error": "Unauthorized"}',
            openai_error("Unauthorized", "authentication_error", None, "invalid_api_key"),
        ),
        (
            403,
            vllm("forbidden", "PermissionError", 403),
            openai_error("forbidden", "permission_error", None, "permission_denied"),
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
            422,
            b'{"detail": [{"loc": ["body", "n"], "msg": "bad"}]}',
            openai_error("The engine answered with HTTP status 422.", "invalid_request_error", None, None),
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
            vllm("CUDA error", "InternalServerError", 500),
            openai_error("CUDA error", "server_error", None, "upstream_error"),
        ),
        (
            503,
            b"<html>Service Unavailable</html>",
            openai_error("The engine answered with HTTP status 503.", "server_error", None, "upstream_error"),
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
    assert (answer.status, answer.json()) == (status, expected)
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-ratelimit-limit-requests"] == "1000"
    assert stack.upstream.responses[-1].released  # read whole: the connection is reused
    assert await stack.rows() == [
        expected_row(
            answer.headers["x-request-id"],
            endpoint=ENGINES[0] if status >= 500 else ENGINES[1],  # a 5xx was tried on both
            outcome=Outcome.error,
            http_status=status,
            error_code=expected["error"]["code"],
        )
    ]
    assert [e.inflight for e in stack.pool.endpoints] == [0, 0]


@pytest.mark.parametrize(
    ("status", "vllm_type", "exception"),
    [
        (400, "BadRequestError", openai.BadRequestError),
        (404, "NotFoundError", openai.NotFoundError),
        (422, "BadRequestError", openai.UnprocessableEntityError),
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
    assert (raised.value.status_code, raised.value.body) == (status, expected)
    assert (raised.value.type, raised.value.code) == (expected["type"], expected["code"])
