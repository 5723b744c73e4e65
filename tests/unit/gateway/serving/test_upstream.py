"""The upstream client maps what the transport raises onto gateway errors, before and after headers."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from gateway.routing.endpoint import Endpoint
from gateway.serving.upstream import (
    EngineConnectTimeoutError,
    EngineUnreachableError,
    UpstreamClient,
    UpstreamResponse,
)
from tests.support.fake_upstream import (
    EVENT_STREAM,
    STALL,
    FakeUpstream,
    Reply,
    Step,
    cut,
    in_order,
    refused,
    reset,
)

ENDPOINT = Endpoint("m", "http://engine")


async def post(*answers: Reply | BaseException) -> UpstreamResponse:
    client = UpstreamClient(FakeUpstream(in_order(*answers)), first_token_timeout_s=0.005)
    return await client.post(ENDPOINT, "/v1/chat/completions", b"{}", "req_1")


def stream(*steps: Step) -> Reply:
    return Reply(200, list(steps), EVENT_STREAM)


@pytest.mark.parametrize(
    ("raised", "expected", "message"),
    [
        (
            aiohttp.ConnectionTimeoutError(),
            EngineConnectTimeoutError,
            "Could not connect to the engine in time.",
        ),
        (refused(), EngineUnreachableError, "Could not reach the engine: ClientConnectorError"),
        (TimeoutError(), UpstreamTimeoutError, "The engine did not answer in time."),
        (aiohttp.InvalidURL("http://engine"), UpstreamError, "Engine request failed: InvalidURL"),
    ],
)
async def test_failures_before_the_headers(
    raised: BaseException, expected: type[GatewayError], message: str
) -> None:
    with pytest.raises(expected) as caught:
        await post(raised)
    assert type(caught.value) is expected and caught.value.message == message


async def test_the_request_is_sent_with_its_id() -> None:
    upstream = FakeUpstream(in_order(Reply(200, b"{}")))
    response = await UpstreamClient(upstream, 1.0).post(ENDPOINT, "/v1/completions", b'{"a":1}', "req_7")
    assert (response.status, response.content_type, response.endpoint) == (200, "application/json", ENDPOINT)
    [sent] = upstream.requests
    assert (sent.url, sent.body) == ("http://engine/v1/completions", b'{"a":1}')
    assert sent.headers == {"Content-Type": "application/json", "X-Request-Id": "req_7"}


async def test_the_head_is_relayed_first_then_the_rest_as_it_comes() -> None:
    response = await post(stream(b"a", b"b", b"c"))
    await response.read_head(1.0)
    assert [piece async for piece in response.chunks()] == [b"a", b"b", b"c"]


@pytest.mark.parametrize(
    ("steps", "expected", "message"),
    [
        ([STALL], UpstreamTimeoutError, "The engine sent no first token within 0.005s."),
        ([], UpstreamError, "The engine ended its response before the first byte."),
        ([cut()], UpstreamError, "The engine's response broke off: ClientPayloadError"),
    ],
)
async def test_no_first_byte(steps: list[Step], expected: type[GatewayError], message: str) -> None:
    response = await post(stream(*steps))
    with pytest.raises(expected) as caught:
        await response.read_head(0.005)
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("failure", "expected", "message"),
    [
        (cut(), UpstreamError, "The engine's response broke off."),
        (TimeoutError(), UpstreamTimeoutError, "The engine did not finish in time."),
    ],
)
async def test_a_body_that_breaks_off(
    failure: BaseException, expected: type[GatewayError], message: str
) -> None:
    response = await post(stream(b"a", failure))
    pieces: list[bytes] = []
    with pytest.raises(expected) as caught:
        async for piece in response.chunks():
            pieces.append(piece)
    assert pieces == [b"a"] and caught.value.message == message


async def test_unread_is_what_arrived_but_was_not_relayed() -> None:
    response = await post(stream(b"a", b"b", b"c", STALL, b"d"))
    await response.read_head(1.0)
    assert response.unread() == b"abc"  # the head, and what came after it before the stall


async def test_read_is_the_whole_body_and_close_and_release_reach_the_transport() -> None:
    upstream = FakeUpstream(in_order(Reply(400, [b'{"error":', b"{}}"]), Reply(200, b"{}")))
    client = UpstreamClient(upstream, 1.0)
    first = await client.post(ENDPOINT, "/v1/completions", b"{}", "req_1")
    assert await first.read() == b'{"error":{}}'
    first.release()
    second = await client.post(ENDPOINT, "/v1/completions", b"{}", "req_2")
    second.close()
    second.close()  # idempotent, as aiohttp's
    assert [(r.released, r.closed) for r in upstream.responses] == [(True, False), (False, True)]


async def test_the_engine_api_key_goes_with_every_request() -> None:
    """Engines take only the key the gateway was given, so their ports are no side door."""
    fake = FakeUpstream(in_order(Reply(200, b"{}")))
    client = UpstreamClient(fake, first_token_timeout_s=1.0, engine_api_key="engine-key-123")
    await client.post(ENDPOINT, "/v1/completions", b"{}", "req_8")
    (sent,) = fake.requests
    assert sent.headers["Authorization"] == "Bearer engine-key-123"


@pytest.mark.parametrize(
    "stale",
    [reset(), aiohttp.ClientOSError(104, "Connection reset by peer"), aiohttp.ClientConnectionResetError()],
)
async def test_a_pooled_connection_the_engine_closed_is_retried_once_on_a_new_one(
    stale: BaseException,
) -> None:
    upstream = FakeUpstream(in_order(stale, Reply(200, b"{}")))
    response = await UpstreamClient(upstream, 1.0).post(ENDPOINT, "/v1/completions", b"{}", "req_1")
    assert response.status == 200
    assert [(r.url, r.fresh) for r in upstream.requests] == [
        ("http://engine/v1/completions", False),
        ("http://engine/v1/completions", True),
    ]


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (reset(), "Could not reach the engine: ServerDisconnectedError"),
        (refused(), "Could not reach the engine: ClientConnectorError"),
    ],
)
async def test_a_new_connection_that_fails_too_is_the_engines_failure(
    second: BaseException, message: str
) -> None:
    upstream = FakeUpstream(in_order(reset(), second))
    with pytest.raises(EngineUnreachableError) as caught:
        await UpstreamClient(upstream, 1.0).post(ENDPOINT, "/v1/completions", b"{}", "req_1")
    assert caught.value.message == message and len(upstream.requests) == 2  # once more, not again


@pytest.mark.parametrize("failure", [refused(), aiohttp.ConnectionTimeoutError()])
async def test_a_connection_that_could_not_be_opened_is_not_retried(failure: BaseException) -> None:
    upstream = FakeUpstream(in_order(failure))
    with pytest.raises(EngineUnreachableError):
        await UpstreamClient(upstream, 1.0).post(ENDPOINT, "/v1/completions", b"{}", "req_1")
    assert len(upstream.requests) == 1  # the next engine is tried instead
