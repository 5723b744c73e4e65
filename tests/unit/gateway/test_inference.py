"""Converting OpenAI request bodies into engine calls."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import InvalidRequestError
from gateway.inference import parse_call
from gateway.records import Api

MESSAGES = [{"role": "user", "content": "hi"}]


def test_streams_always_ask_the_engine_for_usage_and_remember_what_the_client_asked() -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "temperature": 0.3}
    body["stream_options"] = {"x": 1}
    call = parse_call(Api.chat, orjson.dumps(body))
    sent = orjson.loads(call.body)
    assert sent["stream_options"] == {"x": 1, "include_usage": True, "continuous_usage_stats": True}
    assert sent["temperature"] == 0.3  # unknown-to-us parameters pass through
    assert (call.stream, call.client_usage, call.client_continuous_usage) == (True, False, False)


def test_non_streaming_body_is_left_as_sent() -> None:
    call = parse_call(Api.completions, orjson.dumps({"model": "m", "prompt": [1, 2, 3], "user": "u1"}))
    assert orjson.loads(call.body) == {"model": "m", "prompt": [1, 2, 3], "user": "u1"}
    assert (call.model, call.stream, call.user) == ("m", False, "u1")


@pytest.mark.parametrize(
    ("api", "body", "param"),
    [
        (Api.chat, {"messages": MESSAGES}, "model"),
        (Api.chat, {"model": "", "messages": MESSAGES}, "model"),
        (Api.chat, {"model": "m", "messages": "hi"}, "messages"),
        (Api.completions, {"model": "m"}, "prompt"),
        (Api.embeddings, {"model": "m", "input": {"a": 1}}, "input"),
        (Api.chat, {"model": "m", "messages": MESSAGES, "n": 0}, "n"),
    ],
)
def test_invalid_bodies_name_the_parameter(api: Api, body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_call(api, orjson.dumps(body))
    assert info.value.param == param
    assert info.value.status_code == 400
