"""The gateway in-process (ASGITransport) in front of a real simulated engine process."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from gateway.app import create_app
from gateway.config.pools import PoolSpec
from gateway.records import Outcome, UsageRecord
from gateway.settings import Settings
from tests.conftest import SIM_MODEL, Gateway, pool_spec
from tests.support.metrics import sample

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "say four words please"}]}
# The sim counts 3 template tokens per message plus the words: 3 + 4.
CHAT_PROMPT_TOKENS = 7


def sse_events(body: bytes) -> list[Any]:
    events = [line[len(b"data: ") :] for line in body.split(b"\n\n") if line]
    assert events[-1] == b"[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


async def ledger(gw: Gateway) -> list[UsageRecord]:
    await gw.state.ledger.flush()
    return await gw.state.store.list_usage()


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_chat_completion_is_relayed_and_metered(gateway: Gateway) -> None:
    secret, key = await gateway.new_key()
    resp = await gateway.client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 5}, headers=auth(secret)
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "chat.completion"
    usage = {k: body["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert usage == {"prompt_tokens": CHAT_PROMPT_TOKENS, "completion_tokens": 5, "total_tokens": 12}
    [row] = await ledger(gateway)
    assert row.request_id == resp.headers["x-request-id"]
    assert (row.tenant_id, row.key_id, row.model, row.api) == (
        key.tenant_id,
        key.id,
        SIM_MODEL,
        "chat.completions",
    )
    assert (row.prompt_tokens, row.completion_tokens, row.outcome, row.http_status) == (7, 5, Outcome.ok, 200)
    assert row.endpoint == gateway.sim_url
    assert row.ended_at >= row.started_at and row.ttft_s is not None


async def test_stream_without_include_usage_hides_usage_but_meters_it(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key()
    payload = {**CHAT, "stream": True, "max_tokens": 6}
    resp = await gateway.client.post("/v1/chat/completions", json=payload, headers=auth(secret))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.content)
    assert all("usage" not in e or e["usage"] is None for e in events)
    assert all(e["choices"] for e in events)  # no usage-only chunk
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events).count(" ") == 6
    [row] = await ledger(gateway)
    assert (row.prompt_tokens, row.completion_tokens, row.outcome) == (CHAT_PROMPT_TOKENS, 6, Outcome.ok)
    assert row.ttft_s is not None and row.ttft_s >= 0


async def test_stream_with_include_usage_gets_only_the_final_usage_chunk(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key()
    payload = {**CHAT, "stream": True, "max_tokens": 4, "stream_options": {"include_usage": True}}
    resp = await gateway.client.post("/v1/chat/completions", json=payload, headers=auth(secret))
    events = sse_events(resp.content)
    *content, final = events
    assert final["choices"] == []
    assert (final["usage"]["prompt_tokens"], final["usage"]["completion_tokens"]) == (7, 4)
    assert all("usage" not in e for e in content)


async def test_stream_with_continuous_usage_passes_every_usage_through(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key()
    options = {"include_usage": True, "continuous_usage_stats": True}
    payload = {**CHAT, "stream": True, "max_tokens": 3, "stream_options": options}
    resp = await gateway.client.post("/v1/chat/completions", json=payload, headers=auth(secret))
    events = sse_events(resp.content)
    assert all(e["usage"]["prompt_tokens"] == 7 for e in events)
    assert events[-1]["usage"]["completion_tokens"] == 3


async def test_completions_and_embeddings(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key()
    resp = await gateway.client.post(
        "/v1/completions",
        json={"model": SIM_MODEL, "prompt": "one two three", "max_tokens": 2},
        headers=auth(secret),
    )
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 2
    resp = await gateway.client.post(
        "/v1/embeddings", json={"model": SIM_MODEL, "input": ["a b", "c d e"]}, headers=auth(secret)
    )
    assert resp.status_code == 200
    assert [len(d["embedding"]) for d in resp.json()["data"]] == [384, 384]
    rows = sorted(await ledger(gateway), key=lambda r: r.api)
    assert [(r.api, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        ("completions", 3, 2),
        ("embeddings", 5, 0),
    ]


async def test_models_lists_only_what_the_key_may_use(sim_engine: str, tmp_path: Any) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'g.db'}", data_dir=tmp_path)
    other = PoolSpec(served_name="other-model", endpoints=[sim_engine])
    app = create_app(settings, pool_spec(sim_engine, other))
    import httpx

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as client:
            gw = Gateway(app, client, app.state.gateway, sim_engine)
            everything, _ = await gw.new_key()
            only_other, _ = await gw.new_key(models=frozenset({"other-model"}))
            all_ids = [
                m["id"] for m in (await client.get("/v1/models", headers=auth(everything))).json()["data"]
            ]
            assert sorted(all_ids) == ["other-model", SIM_MODEL]
            listed = (await client.get("/v1/models", headers=auth(only_other))).json()
            assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["other-model"]
            denied = await client.post("/v1/chat/completions", json=CHAT, headers=auth(only_other))
            assert denied.status_code == 404 and denied.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Missing API key. Send it as 'Authorization: Bearer <key>'."),
        ({"Authorization": "Basic abc"}, "Malformed Authorization header. Expected 'Bearer <key>'."),
        ({"Authorization": "Bearer sk-gw-not-a-real-key"}, "Incorrect API key provided."),
    ],
)
async def test_bad_keys_get_401(gateway: Gateway, headers: dict[str, str], message: str) -> None:
    resp = await gateway.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status_code == 401
    assert resp.json() == {
        "error": {
            "message": message,
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert await ledger(gateway) == []


async def test_revoked_and_expired_keys_get_401(gateway: Gateway) -> None:
    secret, key = await gateway.new_key()
    assert (await gateway.client.get("/v1/models", headers=auth(secret))).status_code == 200
    await gateway.state.store.revoke_key(key.id)
    resp = await gateway.client.get("/v1/models", headers=auth(secret))
    assert resp.status_code == 401
    assert resp.json()["error"]["message"] == "This API key has been revoked, has expired or is suspended."
    expired, _ = await gateway.new_key(expires_at=time.time() - 1)
    assert (await gateway.client.get("/v1/models", headers=auth(expired))).status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b"{not json", 400, None, None),
        (b"[1, 2]", 400, None, None),
        (orjson.dumps({"model": SIM_MODEL}), 400, "messages", "missing_required_parameter"),
        (
            orjson.dumps({"model": SIM_MODEL, "messages": [], "max_tokens": 1}),
            400,
            "messages",
            "invalid_value",
        ),
        (orjson.dumps({**CHAT, "max_tokens": -1}), 400, "max_tokens", "invalid_value"),
        (orjson.dumps({**CHAT, "stream_options": {"include_usage": True}}), 400, "stream_options", None),
        (orjson.dumps({**CHAT, "model": "no-such-model"}), 404, "model", "model_not_found"),
        (orjson.dumps({**CHAT, "padding": "x" * 70_000}), 413, None, "request_too_large"),
    ],
)
async def test_bad_input_gets_an_openai_error_and_a_ledger_row(
    gateway: Gateway, body: bytes, status: int, param: str | None, code: str | None
) -> None:
    secret, _ = await gateway.new_key()
    headers = {**auth(secret), "Content-Type": "application/json"}
    resp = await gateway.client.post("/v1/chat/completions", content=body, headers=headers)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert error["message"]
    [row] = await ledger(gateway)
    assert (row.outcome, row.http_status, row.prompt_tokens, row.completion_tokens) == (
        Outcome.error,
        status,
        0,
        0,
    )
    assert row.request_id == resp.headers["x-request-id"]


async def test_unknown_route_and_method_are_openai_shaped(gateway: Gateway) -> None:
    resp = await gateway.client.get("/v1/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = await gateway.client.get("/v1/chat/completions")
    assert resp.status_code == 405 and resp.json()["error"]["type"] == "invalid_request_error"


async def test_engine_error_status_is_passed_through_and_metered(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key()
    await gateway.sim(failure_rate=1.0, failure_status=500)
    resp = await gateway.client.post("/v1/chat/completions", json=CHAT, headers=auth(secret))
    assert resp.status_code == 500
    assert set(resp.json()["error"]) >= {"message", "type"}
    [row] = await ledger(gateway)
    assert (row.outcome, row.http_status) == (Outcome.error, 500)


async def test_engine_dying_mid_stream_ends_with_error_event_and_meters_tokens(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key()
    await gateway.sim(fail_after_tokens=3)
    payload = {**CHAT, "stream": True, "max_tokens": 10}
    resp = await gateway.client.post("/v1/chat/completions", json=payload, headers=auth(secret))
    events = sse_events(resp.content)
    assert events[-1]["error"]["type"] == "upstream_error"
    [row] = await ledger(gateway)
    assert (row.outcome, row.http_status, row.completion_tokens) == (Outcome.error, 502, 3)


async def test_no_healthy_engine_gets_503(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key()
    gateway.state.router.pool(SIM_MODEL).no_engine_wait_s = 0  # no holding (tests/api/test_engine_faults.py)
    for endpoint in gateway.state.router.endpoints():
        endpoint.healthy = False
    resp = await gateway.client.post("/v1/chat/completions", json=CHAT, headers=auth(secret))
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    assert resp.json()["error"] == {
        "message": f"No healthy engine is serving model `{SIM_MODEL}` right now.",
        "type": "service_unavailable",
        "param": None,
        "code": "no_healthy_engine",
    }


async def test_unreachable_engine_is_skipped_and_marked_down(sim_engine: str, tmp_path: Any) -> None:
    import httpx

    from tests.support.processes import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    spec = pool_spec(sim_engine)
    spec.pools[0].endpoints.insert(0, dead)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'g.db'}", data_dir=tmp_path, health_interval_s=60
    )
    app = create_app(settings, spec)
    async with app.router.lifespan_context(app):
        state = app.state.gateway
        for endpoint in state.router.endpoints():
            endpoint.healthy = True  # as if the dead one had only just died
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as client:
            gw = Gateway(app, client, state, sim_engine)
            secret, _ = await gw.new_key()
            for _ in range(3):
                resp = await client.post("/v1/chat/completions", json=CHAT, headers=auth(secret))
                assert resp.status_code == 200
            assert [e.healthy for e in state.router.endpoints()] == [False, True]
            rows = await ledger(gw)
            assert {r.endpoint for r in rows} == {sim_engine}


async def test_metrics_match_the_ledger(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key("metrics-tenant")
    for max_tokens in (1, 2, 3):
        await gateway.client.post(  # the last one streamed
            "/v1/chat/completions",
            json={**CHAT, "max_tokens": max_tokens, "stream": max_tokens == 3},
            headers=auth(secret),
        )
    await gateway.client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=auth(secret))
    text = (await gateway.client.get("/metrics")).text
    rows = await ledger(gateway)
    completion = sum(r.completion_tokens for r in rows)
    prompt = sum(r.prompt_tokens for r in rows)
    tenant = {"tenant": "metrics-tenant", "model": SIM_MODEL}
    assert sample(text, "gateway_tokens_total", **tenant, kind="completion") == completion == 6
    assert sample(text, "gateway_tokens_total", **tenant, kind="prompt") == prompt == 21
    assert sample(text, "gateway_requests_total", **tenant, status="200") == 3
    assert sample(text, "gateway_requests_total", tenant="metrics-tenant", model="unknown", status="404") == 1
    assert sample(text, "gateway_engine_up", model=SIM_MODEL, endpoint=gateway.sim_url) == 1
    assert sample(text, "gateway_inflight_requests", model=SIM_MODEL) == 0
    assert sample(text, "gateway_request_duration_seconds_count", **tenant) == 3
    assert sample(text, "gateway_time_to_first_token_seconds_count", **tenant) == 1  # streams only
    assert sample(text, "gateway_time_per_output_token_seconds_count", **tenant) == 1
    assert "_created" not in text


async def test_health_reports_engine_state(gateway: Gateway) -> None:
    resp = await gateway.client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "models": {SIM_MODEL: {"healthy": 1, "total": 1}}}
