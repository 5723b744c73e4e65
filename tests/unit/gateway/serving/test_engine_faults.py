"""Engine faults a client must not see: a stale pooled connection, the last engine's one error,
every engine down for a restart (the request path over the fake upstream)."""

from __future__ import annotations

import asyncio

from gateway.records import Outcome
from gateway.routing.fairqueue import FairQueue
from tests.support.fake_upstream import Reply, completion, in_order, refused, reset
from tests.support.serving import ENGINES, MODEL, ServingStack

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
FIRST, SECOND = ENGINES[1], ENGINES[0]  # round robin starts with the second endpoint
PATH = "/v1/chat/completions"


def hold_for(stack: ServingStack, wait_s: float) -> None:
    """Give the stack's pool a queue that holds requests while no engine is up."""
    stack.pool.queue = FairQueue(MODEL, max_per_tenant=64, max_total=512, max_wait_s=30)
    stack.pool.no_engine_wait_s = wait_s


async def test_a_stale_pooled_connection_is_retried_on_the_same_engine_and_is_no_failure(
    stack: ServingStack,
) -> None:
    body = completion(7, 3)
    stack.upstream.handler = in_order(reset(), Reply(200, body))
    answer = await stack.post(CHAT)
    assert (answer.status, answer.body) == (200, body)
    assert [(r.url, r.fresh) for r in stack.upstream.requests] == [
        (FIRST + PATH, False),
        (FIRST + PATH, True),
    ]
    first = stack.endpoint(FIRST)
    assert first.healthy and first.failures == 0
    [row] = await stack.rows()
    assert (row.outcome, row.endpoint) == (Outcome.ok, FIRST)


async def test_the_last_engine_unreachable_once_stays_in_rotation(stack: ServingStack) -> None:
    stack.endpoint(SECOND).healthy = False
    stack.upstream.handler = in_order(refused(), Reply(200, completion(1, 1)))
    refused_answer = await stack.post(CHAT)
    assert refused_answer.status == 503 and refused_answer.headers["retry-after"] == "1"
    assert stack.endpoint(FIRST).healthy  # its /health answered: one request's error is not a verdict
    served = await stack.post(CHAT)
    assert served.status == 200
    assert [e.inflight for e in stack.pool.endpoints] == [0, 0]


async def test_the_last_engine_whose_probe_fails_too_is_down_and_the_request_held_until_it_is_back(
    stack: ServingStack,
) -> None:
    hold_for(stack, 30.0)
    stack.endpoint(SECOND).healthy = False
    stack.engine_up[FIRST] = False
    body = completion(7, 3)
    stack.upstream.handler = in_order(refused(), Reply(200, body))
    request = asyncio.create_task(stack.post(CHAT))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not request.done() and not stack.endpoint(FIRST).healthy
    assert stack.pool.queue is not None and stack.pool.queue.depth == 1
    stack.health.mark(stack.endpoint(FIRST), True)  # restarted: its health check passes
    answer = await request
    assert (answer.status, answer.body) == (200, body)
    assert [r.url for r in stack.upstream.requests] == [FIRST + PATH, FIRST + PATH]
    [row] = await stack.rows()
    assert (row.outcome, row.endpoint) == (Outcome.ok, FIRST)


async def test_a_request_held_in_vain_gets_503_with_retry_after_and_is_metered(stack: ServingStack) -> None:
    hold_for(stack, 0.01)
    for endpoint in stack.pool.endpoints:
        endpoint.healthy = False
    answer = await stack.post(CHAT)
    assert answer.status == 503
    assert (answer.headers["retry-after"], answer.headers["retry-after-ms"]) == ("5", "5000")
    assert answer.json()["error"] == {
        "message": f"No engine serving `{MODEL}` came back within 0.01s.",
        "type": "service_unavailable",
        "param": None,
        "code": "no_healthy_engine",
    }
    assert stack.upstream.requests == []
    [row] = await stack.rows()
    assert (row.outcome, row.http_status, row.error_code) == (Outcome.error, 503, "no_healthy_engine")


async def test_a_client_leaving_while_held_is_a_499_and_leaves_the_queue(stack: ServingStack) -> None:
    hold_for(stack, 30.0)
    for endpoint in stack.pool.endpoints:
        endpoint.healthy = False
    answer = await stack.post({**CHAT, "stream": True}, leave_after=0)
    assert answer.status == 499
    assert stack.pool.queue is not None and stack.pool.queue.depth == 0
