"""Splitting, metering and shaping SSE events."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.records import Api
from gateway.serving.relay import (
    SseSplitter,
    UsageShaper,
    UsageTracker,
    meter_unread,
    relay_body,
    relay_events,
)
from tests.support.inference import typed_request


def chunk(content: str | None, usage: dict[str, int] | None = None, choices: bool = True) -> bytes:
    event: dict[str, object] = {"id": "c", "object": "chat.completion.chunk"}
    event["choices"] = [{"index": 0, "delta": {"content": content}, "finish_reason": None}] if choices else []
    if usage is not None:
        event["usage"] = usage
    return b"data: " + orjson.dumps(event) + b"\n\n"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def call(options: dict[str, bool] | None) -> UsageShaper:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    if options is not None:
        body["stream_options"] = options
    return UsageShaper(typed_request(Api.chat, body))


async def feed(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def test_splitter_reassembles_events_cut_anywhere() -> None:
    stream = chunk("a") + chunk("b") + b"data: [DONE]\n\n"
    for cut in range(1, len(stream)):
        splitter = SseSplitter()
        events = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
        assert len(events) == 3 and events[-1] == b"[DONE]"


def test_splitter_accepts_crlf() -> None:
    assert SseSplitter().feed(b'data: {"a":1}\r\n\r\ndata: [DONE]\r\n\r\n') == [b'{"a":1}', b"[DONE]"]


async def test_stream_forced_usage_is_stripped_when_client_did_not_ask() -> None:
    upstream = [chunk("", usage(5, 0)), chunk(" hi", usage(5, 1)), chunk(" yo", usage(5, 2))]
    upstream += [chunk(None, usage(5, 2), choices=False), b"data: [DONE]\n\n"]
    tracker = UsageTracker()
    out = b"".join([p async for p in relay_events(feed(upstream), tracker, call(None), SseSplitter())])
    events = out.split(b"\n\n")[:-1]
    assert events[-1] == b"data: [DONE]"
    assert len(events) == 4  # three content chunks + DONE; the usage-only chunk is dropped
    assert all(b"usage" not in e for e in events)
    assert (tracker.prompt_tokens, tracker.completion_tokens, tracker.content_events) == (5, 2, 2)
    assert tracker.ttft_s is not None


async def test_include_usage_keeps_only_final_usage_and_continuous_keeps_all() -> None:
    upstream = [chunk(" hi", usage(5, 1)), chunk(None, usage(5, 1), choices=False), b"data: [DONE]\n\n"]
    final_shaper = call({"include_usage": True})
    final_only = b"".join(
        [p async for p in relay_events(feed(upstream), UsageTracker(), final_shaper, SseSplitter())]
    )
    assert final_only.count(b'"usage"') == 1
    continuous = {"include_usage": True, "continuous_usage_stats": True}
    passthrough = b"".join(
        [p async for p in relay_events(feed(upstream), UsageTracker(), call(continuous), SseSplitter())]
    )
    assert passthrough == b"".join(upstream)  # byte for byte


async def test_no_usage_from_engine_falls_back_to_counting_content_events() -> None:
    tracker = UsageTracker()
    upstream = [chunk(""), chunk(" a"), chunk(" b"), chunk(" c")]
    _ = [p async for p in relay_events(feed(upstream), tracker, call(None), SseSplitter())]
    assert (tracker.usage_seen, tracker.completion_tokens_known) == (False, 3)


async def test_error_event_is_recorded_and_passed_on() -> None:
    tracker = UsageTracker()
    err = b'data: {"error": {"message": "boom", "type": "x"}}\n\n'
    out = [p async for p in relay_events(feed([err]), tracker, call(None), SseSplitter())]
    assert out == [err] and tracker.error == {"message": "boom", "type": "x"}


async def test_body_is_forwarded_piece_by_piece_and_usage_read_at_end() -> None:
    body = orjson.dumps({"choices": [], "usage": usage(3, 4)})
    tracker = UsageTracker()
    pieces = [p async for p in relay_body(feed([body[:10], body[10:]]), tracker)]
    assert pieces == [body[:10], body[10:]]
    assert (tracker.prompt_tokens, tracker.completion_tokens) == (3, 4)


@pytest.mark.parametrize("garbage", [b"not json", b"[1,2]"])
async def test_unparseable_body_meters_zero(garbage: bytes) -> None:
    tracker = UsageTracker()
    _ = [p async for p in relay_body(feed([garbage]), tracker)]
    assert (tracker.prompt_tokens, tracker.completion_tokens, tracker.usage_seen) == (0, 0, False)


def test_the_unrelayed_tail_of_a_cut_stream_is_metered() -> None:
    splitter, tracker = SseSplitter(), UsageTracker()
    first = (
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
        b'\n\ndata: {"ch'
    )
    for payload in splitter.feed(first):
        tracker.take_event(orjson.loads(payload))
    assert tracker.completion_tokens_known == 1
    # The client left; these bytes had arrived but were never relayed.
    tail = (
        b'oices":[{"delta":{"content":"b"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}'
        b"\n\ndata: [DONE]\n\n"
    )
    meter_unread(tail, splitter, tracker)
    assert (tracker.prompt_tokens, tracker.completion_tokens_known) == (3, 2)
