"""The relay for the Responses API (usage in its last event) and for tool calls (relayed as sent)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.errors import EndpointNotSupportedError, EngineError
from gateway.records import Api
from gateway.serving.relay import (
    SseSplitter,
    UsageShaper,
    UsageTracker,
    error_from_body,
    meter_unread,
    relay_body,
    relay_events,
)
from tests.support.inference import typed_request

RESPONSE_USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 8},
    "output_tokens": 3,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 15,
}


def event(kind: str, **fields: object) -> bytes:
    """One Responses API event as vLLM sends it: an ``event:`` line, then the data."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


def response(status: str, usage: dict[str, object] | None) -> dict[str, object]:
    return {"id": "resp_1", "object": "response", "status": status, "output": [], "usage": usage}


def deltas(*texts: str) -> list[bytes]:
    return [event("response.output_text.delta", output_index=0, delta=text) for text in texts]


def responses_shaper() -> UsageShaper:
    return UsageShaper(typed_request(Api.responses, {"input": "hi", "stream": True}))


async def feed(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def relayed(pieces: list[bytes], tracker: UsageTracker, shaper: UsageShaper) -> bytes:
    return b"".join([p async for p in relay_events(feed(pieces), tracker, shaper, SseSplitter())])


async def test_a_response_stream_is_relayed_as_sent_and_metered_from_its_completed_event() -> None:
    stream = [
        event("response.created", response=response("in_progress", None)),
        *deltas("a", " b", " c"),
        event("response.completed", response=response("completed", RESPONSE_USAGE)),
    ]
    tracker = UsageTracker()
    assert await relayed(stream, tracker, responses_shaper()) == b"".join(stream)
    assert (tracker.prompt_tokens, tracker.cached_tokens, tracker.completion_tokens_known) == (12, 8, 3)
    assert tracker.ttft_s is not None


async def test_an_incomplete_response_is_metered_too() -> None:
    usage = {**RESPONSE_USAGE, "output_tokens": 16}
    tracker = UsageTracker()
    await relayed(
        [event("response.incomplete", response=response("incomplete", usage))], tracker, responses_shaper()
    )
    assert (tracker.prompt_tokens, tracker.completion_tokens_known) == (12, 16)


def test_a_cut_response_stream_bills_the_deltas_it_saw() -> None:
    tracker = UsageTracker()
    meter_unread(b"".join(deltas("a", "b", "c", "d")), SseSplitter(), tracker)
    assert (tracker.usage_seen, tracker.completion_tokens_known) == (False, 4)


async def test_a_whole_response_body_is_metered_from_its_usage() -> None:
    tracker = UsageTracker()
    body = orjson.dumps(response("completed", RESPONSE_USAGE))
    assert b"".join([p async for p in relay_body(feed([body[:9], body[9:]]), tracker)]) == body
    assert (tracker.prompt_tokens, tracker.cached_tokens, tracker.completion_tokens) == (12, 8, 3)


async def test_a_response_error_event_ends_the_relay_in_openais_shape() -> None:
    failing = event("error", code="server_error", message="engine 10.0.0.5:8100 died", param=None)
    with pytest.raises(EngineError) as raised:
        await relayed([*deltas("a"), failing], UsageTracker(), responses_shaper())
    assert (raised.value.status_code, raised.value.error_type) == (500, "server_error")
    assert "10.0.0.5" not in raised.value.message


async def test_streamed_tool_call_deltas_are_relayed_unchanged_and_metered() -> None:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    pieces = [
        {"delta": {"role": "assistant", "tool_calls": [call]}},
        {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}},
        {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}},
        {"delta": {}, "finish_reason": "tool_calls"},
    ]
    stream = [
        b"data: "
        + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, **piece}]})
        + b"\n\n"
        for piece in pieces
    ] + [b"data: [DONE]\n\n"]
    body = {"model": "m", "messages": [{"role": "user", "content": "weather?"}], "stream": True}
    tracker = UsageTracker()
    out = await relayed(stream, tracker, UsageShaper(typed_request(Api.chat, {**body, "tools": []})))
    assert out == b"".join(stream)
    assert tracker.content_events == 3  # the engine's count is used when it reports one


def test_a_route_the_engine_does_not_serve_is_the_apis_404_for_that_model() -> None:
    unserved = EndpointNotSupportedError("tiny-llama", "/v1/embeddings")
    error = error_from_body(404, b'{"detail": "Not Found"}', unserved)
    assert error is unserved
    assert error.to_dict() == {
        "error": {
            "message": "The model `tiny-llama` is not supported by the v1/embeddings endpoint.",
            "type": "invalid_request_error",
            "param": "model",
            "code": None,
        }
    }
    # vLLM's own 404 for a model it does not serve stays a model_not_found.
    other = error_from_body(
        404, b'{"error": {"message": "The model `x` does not exist.", "code": 404}}', unserved
    )
    assert (other.status_code, other.code) == (404, "model_not_found")
