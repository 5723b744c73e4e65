"""Splitting, metering and shaping SSE events."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.errors import EngineError
from gateway.records import Api
from gateway.serving.relay import (
    SseSplitter,
    UsageShaper,
    UsageTracker,
    event_data,
    meter_unread,
    relay_body,
    relay_events,
    split_fields,
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
        assert [e + b"\n\n" for e in events] == [chunk("a"), chunk("b"), b"data: [DONE]\n\n"]


def test_splitter_accepts_crlf() -> None:
    blocks = SseSplitter().feed(b'data: {"a":1}\r\n\r\ndata: [DONE]\r\n\r\n')
    assert blocks == [b'data: {"a":1}', b"data: [DONE]"]


@pytest.mark.parametrize(
    ("block", "fields", "data"),
    [
        (b'data: {"a":1}', b"", b'{"a":1}'),
        (b'data:{"a":1}', b"", b'{"a":1}'),  # the space after the colon is optional
        (b": ping", b": ping\n", None),
        (b"id: 7\nretry: 100", b"id: 7\nretry: 100\n", None),
        (b'event: message\ndata: {"a":1}', b"event: message\n", b'{"a":1}'),
        (b'data: {"a":\ndata: 1}', b"", b'{"a":\n1}'),  # several data lines join with newlines
    ],
)
def test_event_blocks_are_read_as_the_sse_spec_says(block: bytes, fields: bytes, data: bytes | None) -> None:
    assert split_fields(block) == (fields, data)
    assert event_data(block) == data


async def test_comments_and_lone_fields_pass_through_unchanged() -> None:
    upstream = [
        b": ping\n\n",
        chunk(" hi", usage(5, 1)),
        b"retry: 500\nid: 3\n\n: ping\n\n",
        b"data: [DONE]\n\n",
    ]
    tracker = UsageTracker()
    continuous = call({"include_usage": True, "continuous_usage_stats": True})
    out = [p async for p in relay_events(feed(upstream), tracker, continuous, SseSplitter())]
    assert out == upstream
    assert (tracker.completion_tokens, tracker.content_events) == (1, 1)


async def test_an_event_line_is_kept_while_its_data_is_metered_and_shaped() -> None:
    event = b"event: completion\n" + chunk(" hi", usage(5, 1))
    tracker = UsageTracker()
    out = [p async for p in relay_events(feed([event]), tracker, call(None), SseSplitter())]
    assert out == [b"event: completion\n" + chunk(" hi")]  # the usage the client did not ask for goes
    assert (tracker.prompt_tokens, tracker.completion_tokens, tracker.content_events) == (5, 1, 1)


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


async def test_an_error_event_ends_the_relay_after_what_came_before_it() -> None:
    tracker = UsageTracker()
    err = b'data: {"error": {"message": "boom", "type": "BadRequestError", "param": "n", "code": 400}}\n\n'
    out: list[bytes] = []
    with pytest.raises(EngineError) as raised:
        async for piece in relay_events(
            feed([chunk(" a", usage(5, 1)) + err]), tracker, call(None), SseSplitter()
        ):
            out.append(piece)
    assert out == [chunk(" a")] and tracker.completion_tokens == 1
    assert (raised.value.status_code, raised.value.to_dict()) == (
        400,
        {"error": {"message": "boom", "type": "invalid_request_error", "param": "n", "code": None}},
    )


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
    for block in splitter.feed(first):
        tracker.take_event(orjson.loads(block.removeprefix(b"data: ")))
    assert tracker.completion_tokens_known == 1
    # The client left; these bytes had arrived but were never relayed.
    tail = (
        b'oices":[{"delta":{"content":"b"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}'
        b"\n\ndata: [DONE]\n\n"
    )
    meter_unread(tail, splitter, tracker)
    assert (tracker.prompt_tokens, tracker.completion_tokens_known) == (3, 2)


def choice_event(index: int, completion: int) -> dict[str, object]:
    return {
        "choices": [{"index": index, "delta": {"content": "t"}, "finish_reason": None}],
        "usage": usage(7, completion),
    }


def test_running_usage_of_several_choices_is_summed_per_choice() -> None:
    """vLLM's continuous usage with n > 1 counts each choice apart: the stream cut here had made
    3 + 2 tokens, not the last event's 2."""
    tracker = UsageTracker()
    for index, completion in ((0, 1), (1, 1), (0, 2), (1, 2), (0, 3)):
        tracker.take_event(choice_event(index, completion))
    assert (tracker.prompt_tokens, tracker.completion_tokens_known) == (7, 5)
    # The final usage chunk (no choices) is the engine's whole count and wins.
    tracker.take_event({"choices": [], "usage": usage(7, 9)})
    assert tracker.completion_tokens_known == 9


def test_one_choice_keeps_the_latest_running_count() -> None:
    tracker = UsageTracker()
    for completion in (1, 2, 3):
        tracker.take_event(choice_event(0, completion))
    assert tracker.completion_tokens_known == 3


@pytest.mark.parametrize(
    "details, cached",
    [({"cached_tokens": 256}, 256), ({"cached_tokens": None}, 0), (None, 0), ("junk", 0)],
)
def test_cached_prompt_tokens_are_read_from_the_usage(details: object, cached: int) -> None:
    tracker = UsageTracker()
    body = {"usage": {"prompt_tokens": 303, "completion_tokens": 4, "prompt_tokens_details": details}}
    tracker.take_body(orjson.dumps(body))
    assert (tracker.prompt_tokens, tracker.cached_tokens) == (303, cached)
