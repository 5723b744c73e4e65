"""The request path end to end, in process: ProxyService over the fake upstream."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import orjson

from gateway.metering.journal import recovered_rows
from gateway.records import Api, Outcome
from tests.support.fake_upstream import (
    DONE,
    EVENT_STREAM,
    STALL,
    Reply,
    SentRequest,
    Step,
    chunk,
    completion,
    cut,
    forever,
    in_order,
    refused,
)
from tests.support.serving import ENGINES, MODEL, ServingStack, expected_row

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
FIRST, SECOND = ENGINES[1], ENGINES[0]  # round robin starts with the second endpoint
PATH = "/v1/chat/completions"


def stream_reply(*steps: Step) -> Reply:
    return Reply(200, list(steps), EVENT_STREAM)


def error_event(message: str, code: str | None) -> bytes:
    error = {"message": message, "type": "upstream_error", "param": None, "code": code}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n" + DONE


async def test_json_response_is_relayed_and_metered_with_the_engines_usage(stack: ServingStack) -> None:
    body = completion(7, 3)
    stack.upstream.handler = in_order(Reply(200, body))
    answer = await stack.post(CHAT)
    assert (answer.status, answer.body) == (200, body)
    request_id = answer.headers["x-request-id"]
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-ratelimit-limit-requests"] == "1000"
    [sent] = stack.upstream.requests
    assert sent.url == FIRST + PATH
    assert sent.headers == {"Content-Type": "application/json", "X-Request-Id": request_id}
    assert sent.json() == CHAT
    [response] = stack.upstream.responses
    assert (response.released, response.closed) == (True, False)  # back to the pool for reuse
    assert await stack.rows() == [
        expected_row(request_id, endpoint=FIRST, prompt_tokens=7, completion_tokens=3, ttft_s=1.0)
    ]
    assert [e.inflight for e in stack.pool.endpoints] == [0, 0]


async def test_stream_is_relayed_event_by_event_and_metered_from_continuous_usage(
    stack: ServingStack,
) -> None:
    events = [chunk("", 5, 0), chunk("Hel", 5, 1), chunk("lo", 5, 2), chunk(None, 5, 2, choices=False), DONE]
    stack.upstream.handler = in_order(stream_reply(*events))
    answer = await stack.post(STREAM)
    assert answer.status == 200 and answer.headers["content-type"].startswith(EVENT_STREAM)
    assert answer.pieces == events  # one write per engine read, byte for byte (usage asked for)
    [sent] = stack.upstream.requests
    assert sent.json() == STREAM
    assert stack.upstream.responses[0].released
    request_id = answer.headers["x-request-id"]
    assert await stack.rows() == [
        expected_row(request_id, endpoint=FIRST, prompt_tokens=5, completion_tokens=2, ttft_s=1.0)
    ]


async def test_usage_the_client_did_not_ask_for_is_asked_for_and_metered_but_not_relayed(
    stack: ServingStack,
) -> None:
    events = [chunk("Hel", 5, 1), chunk("lo", 5, 2), chunk(None, 5, 2, choices=False), DONE]
    stack.upstream.handler = in_order(stream_reply(*events))
    answer = await stack.post({**CHAT, "stream": True})
    stripped = [orjson.loads(e[len(b"data: ") :]) for e in events[:2]]
    for event in stripped:
        del event["usage"]
    assert answer.pieces == [b"data: " + orjson.dumps(e) + b"\n\n" for e in stripped] + [DONE]
    options = stack.upstream.requests[0].json()["stream_options"]
    assert options == {"include_usage": True, "continuous_usage_stats": True}
    [row] = await stack.rows()
    assert (row.outcome, row.prompt_tokens, row.completion_tokens) == (Outcome.ok, 5, 2)


async def test_client_leaving_mid_stream_cuts_the_engine_off_and_bills_what_was_relayed(
    stack: ServingStack,
) -> None:
    events = [chunk("a", 5, 1), chunk("b", 5, 2)]
    stack.upstream.handler = in_order(stream_reply(*events, STALL))
    answer = await stack.post(STREAM, leave_after=2)
    assert answer.pieces == events
    [response] = stack.upstream.responses
    assert (response.closed, response.released) == (True, False)  # the engine sees the disconnect
    assert await stack.rows() == [
        expected_row(
            answer.headers["x-request-id"],
            endpoint=FIRST,
            outcome=Outcome.aborted,
            http_status=499,
            prompt_tokens=5,
            completion_tokens=2,
            ttft_s=1.0,
        )
    ]
    assert [e.inflight for e in stack.pool.endpoints] == [0, 0]


async def test_client_leaving_bills_what_had_arrived_from_the_engine_but_was_not_relayed(
    stack: ServingStack,
) -> None:
    events = [chunk("a", 5, 1), chunk("b", 5, 2), chunk("c", 5, 3)]
    stack.upstream.handler = in_order(stream_reply(*events, STALL))
    answer = await stack.post(STREAM, leave_after=1)
    assert answer.pieces == events[:1]
    assert stack.upstream.responses[0].closed
    [row] = await stack.rows()
    assert (row.outcome, row.http_status, row.prompt_tokens, row.completion_tokens) == (
        Outcome.aborted,
        499,
        5,
        3,
    )


async def test_client_leaving_while_the_engine_is_silent_is_a_499(stack: ServingStack) -> None:
    async def silent(request: SentRequest) -> Reply:
        await forever()

    stack.upstream.handler = silent
    answer = await stack.post(STREAM, leave_after=0)
    assert (answer.status, answer.body) == (499, b"")
    assert stack.upstream.responses == []  # no headers ever came
    [row] = await stack.rows()
    # The row names the engine that had the request: reconciliation gives it what that engine
    # counted for it (the gateway never heard).
    assert (row.outcome, row.http_status, row.endpoint, row.completion_tokens) == (
        Outcome.aborted,
        499,
        stack.upstream.requests[0].url.removesuffix(Api.chat.path),
        0,
    )
    assert [e.inflight for e in stack.pool.endpoints] == [0, 0]


async def test_a_cut_stream_is_billed_the_tokens_the_engine_sent_after_the_client_left(
    stack: ServingStack,
) -> None:
    """The client leaves after one event; told so (half-closed), the engine sends the tokens it had
    made meanwhile and closes: the engine counted them, so the ledger does too."""
    made_meanwhile = [chunk("b", 5, 2), chunk("c", 5, 3)]
    stack.upstream.handler = in_order(stream_reply(chunk("a", 5, 1), STALL, *made_meanwhile, STALL))
    answer = await stack.post(STREAM, leave_after=1)
    assert answer.pieces == [chunk("a", 5, 1)]
    [response] = stack.upstream.responses
    assert response.content.half_closed and response.closed
    [row] = await stack.rows()
    assert (row.outcome, row.prompt_tokens, row.completion_tokens) == (Outcome.aborted, 5, 3)
    assert [e.inflight for e in stack.pool.endpoints] == [0, 0]


async def test_a_client_leaving_before_the_first_event_cuts_the_engine_and_bills_what_it_made(
    stack: ServingStack,
) -> None:
    """The stream's headers came but no token yet (queued or in prefill) when the client left: the
    engine is told at once, and its first tokens, made meanwhile, are billed."""
    stack.upstream.handler = in_order(stream_reply(STALL, chunk("a", 7, 1), chunk("b", 7, 2), STALL))
    answer = await stack.post(STREAM, leave_after=0)
    assert answer.status == 499
    [response] = stack.upstream.responses
    assert response.content.half_closed and response.closed
    [row] = await stack.rows()
    assert (row.outcome, row.prompt_tokens, row.completion_tokens) == (Outcome.aborted, 7, 2)
    assert [e.inflight for e in stack.pool.endpoints] == [0, 0]


async def test_engine_5xx_before_the_first_byte_is_retried_on_another_engine(stack: ServingStack) -> None:
    body = completion(7, 3)
    stack.upstream.handler = in_order(Reply(503, b"overloaded"), Reply(200, body))
    answer = await stack.post(CHAT)
    assert (answer.status, answer.body) == (200, body)
    assert [r.url for r in stack.upstream.requests] == [FIRST + PATH, SECOND + PATH]
    failed, served = stack.upstream.responses
    assert (failed.closed, served.released) == (True, True)
    assert (stack.endpoint(FIRST).failures, stack.endpoint(SECOND).failures) == (1, 0)
    assert await stack.rows() == [
        expected_row(
            answer.headers["x-request-id"], endpoint=SECOND, prompt_tokens=7, completion_tokens=3, ttft_s=1.0
        )
    ]


async def test_engine_error_event_mid_stream_ends_the_stream_in_openais_shape(stack: ServingStack) -> None:
    # vLLM's error event: its own type, and the HTTP status it would have answered with as code.
    vllm = (
        b'data: {"error": {"message": "boom", "type": "InternalServerError", "param": null, "code": 500}}\n\n'
    )
    stack.upstream.handler = in_order(stream_reply(chunk("a", 5, 1), vllm + DONE))
    answer = await stack.post(STREAM)
    # The engine's own words for a server fault stay in its log, not the client's answer.
    expected = (
        b'data: {"error":{"message":"The engine serving this model failed while processing your request.",'
        b'"type":"server_error","param":null,"code":"upstream_error"}}'
    )
    assert answer.pieces == [chunk("a", 5, 1), expected + b"\n\n" + DONE]
    assert stack.upstream.responses[0].closed
    assert await stack.rows() == [
        expected_row(
            answer.headers["x-request-id"],
            endpoint=FIRST,
            outcome=Outcome.error,
            http_status=500,
            error_code="upstream_error",
            prompt_tokens=5,
            completion_tokens=1,
            ttft_s=1.0,
        )
    ]


async def test_engine_dying_mid_stream_ends_with_an_error_event_and_bills_the_tokens(
    stack: ServingStack,
) -> None:
    events = [chunk("a", 5, 1), chunk("b", 5, 2)]
    stack.upstream.handler = in_order(stream_reply(*events, cut()))
    answer = await stack.post(STREAM)
    assert answer.pieces == [*events, error_event("The engine's response broke off.", "upstream_error")]
    assert stack.upstream.responses[0].closed
    assert stack.endpoint(FIRST).failures == 1
    assert await stack.rows() == [
        expected_row(
            answer.headers["x-request-id"],
            endpoint=FIRST,
            outcome=Outcome.error,
            http_status=502,
            error_code="upstream_error",
            prompt_tokens=5,
            completion_tokens=2,
            ttft_s=1.0,
        )
    ]


async def test_unreachable_engine_is_marked_down_and_another_takes_the_request(stack: ServingStack) -> None:
    body = completion(7, 3)
    stack.upstream.handler = in_order(refused(), Reply(200, body))
    answer = await stack.post(CHAT)
    assert (answer.status, answer.body) == (200, body)
    assert [r.url for r in stack.upstream.requests] == [FIRST + PATH, SECOND + PATH]
    assert (stack.endpoint(FIRST).healthy, stack.endpoint(SECOND).healthy) == (False, True)
    [row] = await stack.rows()
    assert (row.outcome, row.endpoint) == (Outcome.ok, SECOND)


async def test_engine_dying_before_its_first_byte_is_retried_on_another_engine(stack: ServingStack) -> None:
    events = [chunk("a", 5, 1), DONE]
    stack.upstream.handler = in_order(stream_reply(cut()), stream_reply(*events))
    answer = await stack.post(STREAM)
    assert answer.pieces == events
    assert stack.upstream.responses[0].closed and stack.upstream.responses[1].released
    [row] = await stack.rows()
    assert (row.outcome, row.endpoint, row.completion_tokens) == (Outcome.ok, SECOND, 1)


async def test_no_engine_accepting_the_connection_in_time_is_a_504(stack: ServingStack) -> None:
    timeout = aiohttp.ConnectionTimeoutError
    stack.upstream.handler = in_order(timeout(), timeout())
    answer = await stack.post(CHAT)
    assert answer.status == 504
    assert answer.json() == {
        "error": {
            "message": "No engine accepted the connection in time.",
            "type": "timeout",
            "param": None,
            "code": "upstream_timeout",
        }
    }
    assert len(stack.upstream.requests) == 2
    assert await stack.rows() == [
        expected_row(
            answer.headers["x-request-id"],
            outcome=Outcome.error,
            http_status=504,
            error_code="upstream_timeout",
        )
    ]


async def test_no_first_token_in_time_is_a_504_and_the_engine_is_cut_off(stack: ServingStack) -> None:
    stack.client.first_token_timeout_s = 0.005
    stack.upstream.handler = in_order(stream_reply(STALL))
    answer = await stack.post(STREAM)
    assert answer.status == 504
    assert answer.json()["error"] == {
        "message": "The engine sent no first token within 0.005s.",
        "type": "timeout",
        "param": None,
        "code": "upstream_timeout",
    }
    assert len(stack.upstream.requests) == 1  # a slow engine is not a reason to load another
    assert stack.upstream.responses[0].closed
    assert stack.endpoint(FIRST).failures == 1
    assert await stack.rows() == [
        expected_row(
            answer.headers["x-request-id"],
            endpoint=FIRST,  # it had the request (reconciliation may find tokens it made)
            outcome=Outcome.error,
            http_status=504,
            error_code="upstream_timeout",
        )
    ]


async def test_a_streams_progress_is_journaled_from_its_first_event(
    stack: ServingStack, tmp_path: Path
) -> None:
    """What a gateway killed with -9 bills: the journal holds the first event's usage as soon as
    it is relayed (it was written once a second, so a short stream cut by a crash billed 0/0)."""
    stack.upstream.handler = in_order(stream_reply(chunk("a", 9, 1), STALL))
    posting = asyncio.create_task(stack.post(STREAM))
    for _ in range(100):
        if stack.upstream.responses and stack.upstream.responses[0].content.read_nowait() == b"":
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the relay has sent the first event and journaled its progress
    entries = [
        orjson.loads(line)
        for path in (tmp_path / "journal").glob("*.jsonl")
        for line in path.read_bytes().splitlines()
    ]
    [interrupted] = recovered_rows(entries, now=2.0)
    assert (interrupted.outcome, interrupted.prompt_tokens, interrupted.completion_tokens) == (
        Outcome.interrupted,
        9,
        1,
    )
    posting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await posting
