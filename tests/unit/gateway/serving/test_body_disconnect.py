"""A client that hangs up while sending its body is an ordinary event: info, metered, no traceback."""

from __future__ import annotations

import logging

import pytest
from starlette.requests import Request
from starlette.types import Message

from gateway.records import Api, Outcome
from tests.support.inference import KEY
from tests.support.serving import ServingStack


async def test_a_client_leaving_mid_body_is_logged_at_info_and_metered_as_aborted(
    stack: ServingStack, caplog: pytest.LogCaptureFixture
) -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"model": "m", "mess', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    headers = [(b"content-type", b"application/json"), (b"content-length", b"4000")]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": headers,
        "query_string": b"",
    }
    caplog.set_level(logging.INFO)
    response = await stack.proxy.handle(Api.chat, KEY, Request(scope, receive))
    assert response.status_code == 499
    [row] = await stack.rows()
    assert (row.outcome, row.http_status, row.model) == (Outcome.aborted, 499, "")
    assert stack.upstream.requests == []  # the engine never heard of it
    [record] = [r for r in caplog.records if "request body" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
