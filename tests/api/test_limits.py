"""Limits on the request path: 429s with OpenAI's headers, reservations settled, the SDK retrying."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.limit_spec import LimitSpec
from gateway.records import Outcome, UsageRecord
from gateway.settings import Settings
from gateway.store.sqlite import SqliteStore
from gateway.tenancy.auth import generate_key
from tests.api.test_gateway import CHAT, CHAT_PROMPT_TOKENS, auth, ledger
from tests.conftest import SIM_MODEL, Gateway, pool_spec
from tests.support.metrics import sample

HEADERS = ("limit", "remaining", "reset")


async def chat(gw: Gateway, secret: str, **extra: object) -> httpx.Response:
    return await gw.client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 5, **extra}, headers=auth(secret)
    )


async def test_requests_per_minute_gives_429_with_retry_after_and_headers(gateway: Gateway) -> None:
    secret, key = await gateway.new_key("rpm")
    await gateway.state.store.set_tenant_limits("rpm", LimitSpec(rpm=2))
    first, second, third = [await chat(gateway, secret) for _ in range(3)]
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert [first.headers[f"x-ratelimit-{h}-requests"] for h in HEADERS[:2]] == ["2", "1"]
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert all(f"x-ratelimit-{h}-{kind}" in first.headers for h in HEADERS for kind in ("requests",))
    error = third.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert 25 <= int(third.headers["retry-after"]) <= 31  # one request every 30 s refills
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    rows = await ledger(gateway)
    assert [(r.outcome, r.http_status) for r in rows] == [(Outcome.ok, 200)] * 2 + [(Outcome.error, 429)]
    assert rows[2].error_code == "rate_limit_exceeded" and rows[2].completion_tokens == 0
    text = (await gateway.client.get("/metrics")).text
    assert 'gateway_ratelimited_total{reason="requests",tenant="rpm"} 1.0' in text


async def test_tokens_are_reserved_then_settled_to_actual_usage(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key("tpm")
    await gateway.state.store.set_tenant_limits("tpm", LimitSpec(tpm=6000))
    first = await chat(gateway, secret, max_tokens=50)
    assert first.status_code == 200
    # Admission reserved the estimated prompt (the sim has no tokenizer: the heuristic, which
    # over-counts on purpose) plus max_tokens.
    reserved = 6000 - int(first.headers["x-ratelimit-remaining-tokens"])
    assert CHAT_PROMPT_TOKENS + 50 <= reserved <= 3 * CHAT_PROMPT_TOKENS + 50
    await gateway.state.admission.wait_settled()  # settled: 7 prompt + 16 generated actually used
    second = await chat(gateway, secret, max_tokens=50)
    used_by_first = CHAT_PROMPT_TOKENS + 16
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    # The refill (100 a second) can only add; the unused part of the first reservation came back.
    assert 6000 - used_by_first - reserved <= remaining <= 6000 - used_by_first - reserved + 100
    too_big = await chat(gateway, secret, max_tokens=7000)
    assert too_big.status_code == 429 and "retry-after" not in too_big.headers  # waiting cannot help


async def test_concurrency_limit_and_release(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key("conc")
    await gateway.state.store.set_tenant_limits("conc", LimitSpec(max_concurrent=1))
    await gateway.sim(ttft_ms=300)
    first, second = await asyncio.gather(chat(gateway, secret), chat(gateway, secret))
    assert sorted([first.status_code, second.status_code]) == [200, 429]
    refused = first if first.status_code == 429 else second
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    await gateway.state.admission.wait_settled()
    assert (await chat(gateway, secret)).status_code == 200  # the slot came back


async def test_a_key_limit_applies_on_top_of_its_tenant(gateway: Gateway) -> None:
    limited, key = await gateway.new_key("keys")
    free, _ = await gateway.new_key("keys")
    await gateway.state.store.update_key(key.id, limits=LimitSpec(rpm=1))
    assert [(await chat(gateway, limited)).status_code for _ in range(2)] == [200, 429]
    assert [(await chat(gateway, free)).status_code for _ in range(2)] == [200, 200]


async def test_the_openai_sdk_sees_rate_limit_error_and_its_retry_works(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key("sdk")
    await gateway.state.store.set_tenant_limits("sdk", LimitSpec(rpm=120))  # refills 2 a second
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway/v1") as http:
        strict = openai.AsyncOpenAI(
            api_key=secret, base_url="http://gateway/v1", http_client=http, max_retries=0
        )
        patient = openai.AsyncOpenAI(
            api_key=secret, base_url="http://gateway/v1", http_client=http, max_retries=3
        )
        messages = CHAT["messages"]
        started, admitted = time.monotonic(), 0
        while admitted <= 400:  # until refused; a slow machine earns refills meanwhile
            try:
                await strict.chat.completions.create(model=SIM_MODEL, messages=messages, max_tokens=1)  # type: ignore[arg-type]
            except openai.RateLimitError as exc:
                assert exc.code == "rate_limit_exceeded" and exc.response.headers["retry-after-ms"]
                break
            admitted += 1
        refilled = 2 * (time.monotonic() - started)
        assert 120 <= admitted <= 120 + refilled + 1, (admitted, refilled)
        # The SDK waits for Retry-After and tries again: the call succeeds without the caller noticing.
        reply = await patient.chat.completions.create(model=SIM_MODEL, messages=messages, max_tokens=1)  # type: ignore[arg-type]
        assert reply.choices[0].finish_reason == "length"


async def test_monthly_budget_starts_from_the_ledger_after_a_restart(sim_engine: str, tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'g.db'}", data_dir=tmp_path, limits_path=None)
    store = SqliteStore(tmp_path / "g.db")
    await store.open()
    tenant = await store.create_tenant("budget")
    await store.set_tenant_limits("budget", LimitSpec(monthly_tokens=1000))
    new = generate_key()
    key = await store.create_key("budget", new.key_hash, new.prefix, None, None)
    now = time.time()
    spent = [
        UsageRecord(
            f"req_old{i}",
            tenant.id,
            key.id,
            SIM_MODEL,
            "chat.completions",
            now - 60,
            prompt_tokens=200,
            completion_tokens=200,
            ended_at=now - 59,
        )
        for i in range(2)
    ]
    await store.insert_usage(spent)  # 800 of the 1000 tokens are gone already this month
    await store.close()

    app = create_app(settings, pool_spec(sim_engine))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
    ):
        body = {**CHAT, "max_tokens": 50}
        fits = await client.post("/v1/chat/completions", json=body, headers=auth(new.secret))
        assert fits.status_code == 200
        too_much = await client.post(
            "/v1/chat/completions", json={**CHAT, "max_tokens": 190}, headers=auth(new.secret)
        )
        assert too_much.status_code == 429, "the ledger's 800 tokens must count against the budget"
        assert "monthly" in too_much.json()["error"]["message"].lower()
        metrics = (await client.get("/metrics")).text
        left = sample(metrics, "gateway_budget_remaining", tenant="budget", kind="tokens")
        assert 0 < left <= 200


@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_down_fails_open_or_closed_as_configured_and_is_counted(
    sim_engine: str, tmp_path: Path, fail_open: bool
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'g.db'}",
        data_dir=tmp_path,
        limits_path=None,
        redis_url="redis://127.0.0.1:1/0",
        limiter_fail_open=fail_open,  # nothing listens there
    )
    app = create_app(settings, pool_spec(sim_engine))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
    ):
        gw = Gateway(app, client, app.state.gateway, sim_engine)
        secret, _ = await gw.new_key("redisless")
        await gw.state.store.set_tenant_limits("redisless", LimitSpec(rpm=100))
        response = await chat(gw, secret)
        if fail_open:
            assert response.status_code == 200
        else:
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "rate_limiter_unavailable"
        metrics = (await client.get("/metrics")).text
        assert (sample(metrics, "gateway_limiter_failures_total", operation="admit") or 0) >= 1


async def sdk_call(gw: Gateway, secret: str, max_tokens: int) -> openai.RateLimitError:
    """One call through the OpenAI SDK, allowed to retry twice; the error it ends with."""
    transport = httpx.ASGITransport(app=gw.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway/v1") as http:
        client = openai.AsyncOpenAI(
            api_key=secret, base_url="http://gateway/v1", http_client=http, max_retries=2
        )
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(
                model=SIM_MODEL,
                messages=CHAT["messages"],  # type: ignore[arg-type]
                max_tokens=max_tokens,
            )
    return refused.value


async def test_a_spent_budget_is_insufficient_quota_and_the_sdk_does_not_retry(gateway: Gateway) -> None:
    """It was 429 rate_limit_exceeded, "try again in 712h": the SDK retried it at once."""
    secret, _ = await gateway.new_key("budget")
    await gateway.state.store.set_tenant_limits("budget", LimitSpec(monthly_tokens=40))
    assert (await chat(gateway, secret)).status_code == 200  # 7 + 5 of the 40 used
    await gateway.state.admission.wait_settled()
    error = await sdk_call(gateway, secret, max_tokens=30)
    assert (error.code, error.type) == ("insufficient_quota", "insufficient_quota")
    assert error.response.headers["x-should-retry"] == "false"
    assert "Not enough monthly tokens left in this tenant's budget: limit 40" in error.message
    assert "renews at 00:00 UTC on the 1st" in error.message
    rows = await ledger(gateway)
    assert [(r.http_status, r.error_code) for r in rows] == [(200, None), (429, "insufficient_quota")]


async def test_a_request_larger_than_the_tpm_limit_is_not_retried(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key("huge")
    await gateway.state.store.set_tenant_limits("huge", LimitSpec(tpm=1000))
    error = await sdk_call(gateway, secret, max_tokens=5000)
    assert (error.code, error.type) == ("rate_limit_exceeded", "rate_limit_error")
    assert error.response.headers["x-should-retry"] == "false"
    assert "retrying cannot help" in error.message
    assert len(await ledger(gateway)) == 1  # one attempt, not three
    ordinary = await chat(gateway, secret)  # a request that fits is not told the same
    assert ordinary.status_code == 200 and "x-should-retry" not in ordinary.headers
