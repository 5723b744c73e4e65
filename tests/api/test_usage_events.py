"""``GET /admin/usage/events``: the ledger as CloudEvents, paged by a stable cursor."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.records import UsageRecord
from tests.api.store.test_contract import T0, row
from tests.conftest import ADMIN_TOKEN, SIM_MODEL, Gateway

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def events(gateway: Gateway, **params: object) -> dict[str, Any]:
    resp = await gateway.client.get("/admin/usage/events", params=params, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def seed(gateway: Gateway, tenant: str, count: int, prefix: str) -> list[UsageRecord]:
    _, key = await gateway.new_key(tenant)
    rows = [row(f"{prefix}{i}", key.tenant_id, key.id, T0 + i) for i in range(count)]
    await gateway.state.store.insert_usage(rows)
    return rows


async def test_a_request_becomes_an_event_keyed_by_its_request_id(gateway: Gateway) -> None:
    secret, key = await gateway.new_key("acme")
    resp = await gateway.client.post(
        "/v1/chat/completions",
        json={"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert resp.status_code == 200
    await gateway.state.ledger.flush()
    [ledger_row] = await gateway.state.store.list_usage()
    page = await events(gateway)
    assert page["has_more"] is False and page["next_cursor"] == "1"
    [event] = page["data"]
    assert event["id"] == ledger_row.request_id == resp.headers["x-request-id"]
    assert {k: event[k] for k in ("specversion", "source", "type", "subject", "datacontenttype")} == {
        "specversion": "1.0",
        "source": "model-gateway",
        "type": "gateway.usage.request",
        "subject": key.tenant_id,
        "datacontenttype": "application/json",
    }
    data = event["data"]
    assert (data["tenant"], data["key_id"], data["model"], data["api"], data["outcome"]) == (
        "acme",
        key.id,
        SIM_MODEL,
        "chat.completions",
        "ok",
    )
    assert (data["prompt_tokens"], data["completion_tokens"]) == (
        ledger_row.prompt_tokens,
        ledger_row.completion_tokens,
    )
    assert data["completion_tokens"] > 0 and data["currency"] == gateway.state.prices.currency


async def test_pages_resume_from_the_cursor_with_no_gap_or_duplicate(gateway: Gateway) -> None:
    written = await seed(gateway, "acme", 7, "a")
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        page = await events(gateway, after=cursor, limit=3)
        seen += [e["id"] for e in page["data"]]
        cursor, pages = page["next_cursor"], pages + 1
        if not page["has_more"]:
            break
    assert seen == [r.request_id for r in written] and pages == 3
    empty = await events(gateway, after=cursor, limit=3)
    assert empty == {"data": [], "next_cursor": cursor, "has_more": False}
    more = await seed(gateway, "acme", 2, "b")
    page = await events(gateway, after=cursor)
    assert [e["id"] for e in page["data"]] == [r.request_id for r in more]
    # The same cursor names the same place, whenever it is used again.
    resumed = await events(gateway, after="3", limit=2)
    assert resumed["data"] == (await events(gateway, limit=5))["data"][3:5]


async def test_one_tenants_events(gateway: Gateway) -> None:
    await seed(gateway, "acme", 2, "a")
    await seed(gateway, "other", 2, "o")
    page = await events(gateway, tenant="other")
    assert [e["id"] for e in page["data"]] == ["o0", "o1"] and page["next_cursor"] == "4"
    assert {e["data"]["tenant"] for e in page["data"]} == {"other"}
    resp = await gateway.client.get("/admin/usage/events?tenant=nobody", headers=ADMIN)
    assert resp.status_code == 404


@pytest.mark.parametrize(
    ("query", "param", "code"),
    [
        ("after=abc", "after", "invalid_cursor"),
        ("after=-1", "after", "invalid_cursor"),
        # FastAPI's query validation is OpenAI's 400 with a code (gateway/api/errors.py).
        ("limit=0", "limit", "invalid_value"),
        ("limit=1001", "limit", "invalid_value"),
        ("limit=many", "limit", "invalid_value"),
    ],
)
async def test_a_bad_cursor_or_limit_is_a_400(gateway: Gateway, query: str, param: str, code: str) -> None:
    resp = await gateway.client.get(f"/admin/usage/events?{query}", headers=ADMIN)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


async def test_a_bad_cursor_answer_in_full(gateway: Gateway) -> None:
    resp = await gateway.client.get("/admin/usage/events?after=abc", headers=ADMIN)
    assert resp.json() == {
        "error": {
            "message": "'abc' is not a cursor: pass the next_cursor of a previous page, or nothing to start.",
            "type": "invalid_request_error",
            "param": "after",
            "code": "invalid_cursor",
        }
    }
