"""The admin API in-process: who may call it, tenants, keys, rotation and the key cache."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.limit_spec import LimitSpec
from gateway.settings import Settings
from tests.conftest import ADMIN_TOKEN, SIM_MODEL, Gateway, pool_spec

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
KEY_FIELDS = {
    "object",
    "id",
    "tenant",
    "prefix",
    "models",
    "expires_at",
    "revoked_at",
    "created_at",
    "limits",
}
NO_LIMITS = {"rpm": None, "tpm": None, "max_concurrent": None, "monthly_tokens": None, "monthly_cost": None}


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@contextlib.asynccontextmanager
async def running(sim_engine: str, tmp_path: Path, **settings: Any) -> AsyncIterator[Gateway]:
    """A gateway with settings of the test's own (the shared fixture's are fixed)."""
    app = create_app(
        Settings(database_url=f"sqlite:///{tmp_path / 'g.db'}", data_dir=tmp_path, **settings),
        pool_spec(sim_engine),
    )
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as client:
            yield Gateway(app, client, app.state.gateway, sim_engine)


async def status_of(gw: Gateway, secret: str) -> int:
    return (await gw.client.get("/v1/models", headers=auth(secret))).status_code


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Missing API key. Send it as 'Authorization: Bearer <key>'."),
        ({"Authorization": "Bearer wrong-admin-token"}, "Incorrect admin token provided."),
        ({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, "Incorrect admin token provided."),
    ],
)
async def test_no_or_wrong_admin_token_gets_401(
    gateway: Gateway, headers: dict[str, str], message: str
) -> None:
    resp = await gateway.client.get("/admin/tenants", headers=headers)
    assert resp.status_code == 401
    assert resp.json() == {
        "error": {
            "message": message,
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


async def test_a_tenant_key_gets_403_on_every_admin_route(gateway: Gateway) -> None:
    secret, key = await gateway.new_key("tenant-a")
    await gateway.new_key("tenant-b")
    calls = [
        ("GET", "/admin/tenants"),
        ("GET", "/admin/keys"),
        ("GET", "/admin/keys?tenant=tenant-b"),
        ("GET", f"/admin/keys/{key.id}"),
        ("POST", f"/admin/keys/{key.id}/rotate"),
        ("GET", "/admin/usage?tenant=tenant-b&from=2026-01-01&to=2026-12-31"),
        ("GET", "/admin/usage/chart?tenant=tenant-b&from=2026-01-01&to=2026-12-31"),
        ("GET", "/admin/usage/events?tenant=tenant-b"),
        ("DELETE", "/admin/tenants/tenant-b"),
        ("PUT", "/admin/tenants/tenant-b/limits"),
        ("DELETE", "/admin/tenants/tenant-b/limits"),
        ("PUT", f"/admin/keys/{key.id}/limits"),
        ("DELETE", f"/admin/keys/{key.id}/limits"),
    ]
    for method, path in calls:
        body = {"rpm": 1000000} if method == "PUT" else None
        resp = await gateway.client.request(method, path, json=body, headers=auth(secret))
        assert resp.status_code == 403, path
        assert resp.json() == {
            "error": {
                "message": "A tenant API key cannot call the admin API.",
                "type": "permission_error",
                "param": None,
                "code": "permission_denied",
            }
        }
    assert (await gateway.state.store.get_tenant("tenant-b")).status == "active"
    assert (await gateway.state.store.get_tenant("tenant-b")).limits is None
    assert (await gateway.state.store.get_key(key.id)).limits is None


async def test_without_an_admin_token_development_switches_the_admin_api_off(
    sim_engine: str, tmp_path: Path
) -> None:
    async with running(sim_engine, tmp_path) as gw:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            resp = await gw.client.get("/admin/tenants", headers=headers)
            assert resp.status_code == 403
            assert resp.json()["error"]["code"] == "admin_api_disabled"


async def test_tenant_lifecycle(gateway: Gateway) -> None:
    client = gateway.client
    resp = await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    assert resp.status_code == 201
    created = resp.json()
    assert (created["object"], created["name"], created["status"]) == ("tenant", "acme", "active")
    assert abs(epoch(created["created_at"]) - time.time()) < 60
    dup = await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "conflict"
    bad = await client.post("/admin/tenants", json={"name": "no spaces"}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
    typo = await client.post("/admin/tenants", json={"name": "x", "nmae": "y"}, headers=ADMIN)
    assert typo.status_code == 400

    secret, _ = await gateway.new_key("acme")
    assert await status_of(gateway, secret) == 200
    suspended = await client.post("/admin/tenants/acme/suspend", headers=ADMIN)
    assert suspended.json()["status"] == "suspended"
    assert await status_of(gateway, secret) == 401
    assert (await client.post("/admin/tenants/acme/activate", headers=ADMIN)).json()["status"] == "active"
    assert await status_of(gateway, secret) == 200

    deleted = await client.delete("/admin/tenants/acme", headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    assert await status_of(gateway, secret) == 401
    [key] = (await client.get("/admin/keys?tenant=acme", headers=ADMIN)).json()["data"]
    assert key["revoked_at"] is not None
    assert (await client.get("/admin/tenants", headers=ADMIN)).json() == {"object": "list", "data": []}
    listed = (await client.get("/admin/tenants?include_deleted=true", headers=ADMIN)).json()["data"]
    assert [(t["name"], t["status"]) for t in listed] == [("acme", "deleted")]
    again = await client.post("/admin/tenants/acme/activate", headers=ADMIN)
    assert again.status_code == 409
    missing = await client.post("/admin/tenants/nobody/suspend", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "message": "no tenant named 'nobody'",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


async def test_key_create_returns_the_secret_once_and_lists_never_show_it(gateway: Gateway) -> None:
    client = gateway.client
    await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    body = {"tenant": "acme", "models": [SIM_MODEL], "expires_at": "2099-01-31"}
    resp = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status_code == 201
    created = resp.json()
    assert set(created) == KEY_FIELDS | {"secret"}
    assert (created["tenant"], created["models"], created["revoked_at"]) == ("acme", [SIM_MODEL], None)
    assert created["expires_at"] == "2099-01-31T00:00:00Z"
    secret = created["secret"]
    assert secret.startswith(created["prefix"]) and len(secret) > len(created["prefix"]) + 30
    models = (await client.get("/v1/models", headers=auth(secret))).json()["data"]
    assert [m["id"] for m in models] == [SIM_MODEL]

    key_hash = (await gateway.state.store.get_key(created["id"])).key_hash
    for path in ("/admin/keys", "/admin/keys?tenant=acme", f"/admin/keys/{created['id']}"):
        resp = await client.get(path, headers=ADMIN)
        assert resp.status_code == 200
        assert secret not in resp.text and key_hash not in resp.text
        items = resp.json()["data"] if "data" in resp.json() else [resp.json()]
        assert [set(item) for item in items] == [KEY_FIELDS]
    unknown = await client.get("/admin/keys?tenant=nobody", headers=ADMIN)
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tenant": "acme", "expires_at": "next tuesday"}, "expires_at"),
        ({"tenant": "acme", "expires_at": "2001-01-01"}, "expires_at"),
        ({"tenant": "acme", "models": []}, "models"),
        ({"tenant": "acme", "secret": "mine"}, "secret"),
    ],
)
async def test_key_create_rejects_bad_input(gateway: Gateway, body: dict[str, Any], param: str) -> None:
    await gateway.state.store.create_tenant("acme")
    resp = await gateway.client.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status_code == 400
    assert (resp.json()["error"]["type"], resp.json()["error"]["param"]) == ("invalid_request_error", param)
    assert await gateway.state.store.list_keys() == []


async def test_key_update_revoke_and_missing_keys(gateway: Gateway) -> None:
    client = gateway.client
    secret, key = await gateway.new_key("acme", models=frozenset({"other"}))
    assert (await client.get("/v1/models", headers=auth(secret))).json()["data"] == []
    resp = await client.patch(f"/admin/keys/{key.id}", json={"models": None}, headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["models"] is None
    assert [m["id"] for m in (await client.get("/v1/models", headers=auth(secret))).json()["data"]] == [
        SIM_MODEL
    ]
    resp = await client.patch(
        f"/admin/keys/{key.id}", json={"expires_at": "2099-06-01T12:00:00"}, headers=ADMIN
    )
    assert resp.json()["expires_at"] == "2099-06-01T12:00:00Z" and resp.json()["models"] is None
    resp = await client.patch(f"/admin/keys/{key.id}", json={"expires_at": None}, headers=ADMIN)
    assert resp.json()["expires_at"] is None
    assert (await client.patch(f"/admin/keys/{key.id}", json={}, headers=ADMIN)).status_code == 400

    revoked = await client.post(f"/admin/keys/{key.id}/revoke", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert await status_of(gateway, secret) == 401
    for method, path in (("GET", "/admin/keys/key_nope"), ("POST", "/admin/keys/key_nope/revoke")):
        resp = await client.request(method, path, headers=ADMIN)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


async def test_rotation_keeps_the_old_key_for_the_grace_period(gateway: Gateway) -> None:
    client = gateway.client
    old_secret, old = await gateway.new_key("acme", models=frozenset({SIM_MODEL}), expires_at=4102444800.0)
    before = time.time()
    resp = await client.post(f"/admin/keys/{old.id}/rotate", json={"grace_s": 3600}, headers=ADMIN)
    assert resp.status_code == 201
    rotation = resp.json()
    new, previous = rotation["key"], rotation["previous"]
    assert rotation["object"] == "api_key.rotation" and set(previous) == KEY_FIELDS
    assert (new["tenant"], new["models"], new["expires_at"]) == ("acme", [SIM_MODEL], "2100-01-01T00:00:00Z")
    assert new["id"] != old.id and previous["id"] == old.id
    assert before + 3600 - 2 <= epoch(previous["expires_at"]) <= time.time() + 3600
    assert await status_of(gateway, new["secret"]) == 200
    assert await status_of(gateway, old_secret) == 200  # still inside its grace period

    default = (await client.post(f"/admin/keys/{new['id']}/rotate", headers=ADMIN)).json()
    day = gateway.state.settings.key_rotation_grace_s
    assert day == 86400 and abs(epoch(default["previous"]["expires_at"]) - (time.time() + day)) < 5
    now = await client.post(f"/admin/keys/{default['key']['id']}/rotate", json={"grace_s": 0}, headers=ADMIN)
    assert await status_of(gateway, default["key"]["secret"]) == 401
    assert await status_of(gateway, now.json()["key"]["secret"]) == 200

    await client.post(f"/admin/keys/{old.id}/revoke", headers=ADMIN)
    refused = await client.post(f"/admin/keys/{old.id}/rotate", headers=ADMIN)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"


async def test_revoke_rotate_and_suspend_bypass_the_key_cache(sim_engine: str, tmp_path: Path) -> None:
    """With a long cache TTL only ``Authenticator.forget`` can make these take effect at once."""
    async with running(sim_engine, tmp_path, admin_token=ADMIN_TOKEN, auth_cache_ttl_s=3600) as gw:
        first, first_key = await gw.new_key("acme")
        second, _ = await gw.new_key("acme")
        assert await status_of(gw, first) == 200 and await status_of(gw, second) == 200  # now cached
        await gw.client.post(f"/admin/keys/{first_key.id}/revoke", headers=ADMIN)
        assert await status_of(gw, first) == 401
        await gw.client.post("/admin/tenants/acme/suspend", headers=ADMIN)
        assert await status_of(gw, second) == 401
        await gw.client.post("/admin/tenants/acme/activate", headers=ADMIN)
        assert await status_of(gw, second) == 200
        third, third_key = await gw.new_key("acme")
        assert await status_of(gw, third) == 200
        await gw.client.post(f"/admin/keys/{third_key.id}/rotate", json={"grace_s": 0}, headers=ADMIN)
        assert await status_of(gw, third) == 401


async def test_tenant_limits_are_set_shown_replaced_and_cleared(gateway: Gateway) -> None:
    client, store = gateway.client, gateway.state.store
    await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    assert (await client.get("/admin/tenants/acme", headers=ADMIN)).json()["limits"] is None  # defaults
    full = {"rpm": 60, "tpm": 10000, "max_concurrent": 4, "monthly_tokens": 1000000, "monthly_cost": "25.00"}
    resp = await client.put("/admin/tenants/acme/limits", json=full, headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["limits"] == full
    assert (await store.get_tenant("acme")).limits == LimitSpec(
        rpm=60, tpm=10000, max_concurrent=4, monthly_tokens=1000000, monthly_cost_pico=25 * 10**12
    )
    assert (await client.get("/admin/tenants/acme", headers=ADMIN)).json()["limits"] == full
    [listed] = (await client.get("/admin/tenants", headers=ADMIN)).json()["data"]
    assert listed["limits"] == full

    # A PUT replaces: what it leaves out is unlimited. 0.29 is not exact as a float (289999999999.99997).
    resp = await client.put(
        "/admin/tenants/acme/limits", json={"rpm": 5, "monthly_cost": "0.29"}, headers=ADMIN
    )
    assert resp.json()["limits"] == {**NO_LIMITS, "rpm": 5, "monthly_cost": "0.29"}
    assert (await store.get_tenant("acme")).limits == LimitSpec(rpm=5, monthly_cost_pico=290_000_000_000)
    # Nothing at all: unlimited, also over the configured defaults (not the same as no limits).
    unlimited = await client.put("/admin/tenants/acme/limits", json={}, headers=ADMIN)
    assert unlimited.json()["limits"] == NO_LIMITS and (await store.get_tenant("acme")).limits == LimitSpec()
    cleared = await client.delete("/admin/tenants/acme/limits", headers=ADMIN)
    assert cleared.status_code == 200 and cleared.json()["limits"] is None
    assert (await store.get_tenant("acme")).limits is None

    missing = await client.put("/admin/tenants/nobody/limits", json={"rpm": 1}, headers=ADMIN)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    await client.delete("/admin/tenants/acme", headers=ADMIN)
    gone = await client.put("/admin/tenants/acme/limits", json={"rpm": 1}, headers=ADMIN)
    assert gone.status_code == 409 and gone.json()["error"]["message"] == "tenant 'acme' is deleted"


async def test_key_limits_are_set_shown_and_cleared(gateway: Gateway) -> None:
    client, store = gateway.client, gateway.state.store
    _, key = await gateway.new_key("acme")
    assert (await client.get(f"/admin/keys/{key.id}", headers=ADMIN)).json()["limits"] is None
    body = {"tpm": 100, "monthly_cost": "0.000001"}
    resp = await client.put(f"/admin/keys/{key.id}/limits", json=body, headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["limits"] == {**NO_LIMITS, **body}
    assert (await store.get_key(key.id)).limits == LimitSpec(tpm=100, monthly_cost_pico=1_000_000)
    assert (await client.get(f"/admin/keys/{key.id}", headers=ADMIN)).json()["limits"] == {
        **NO_LIMITS,
        **body,
    }
    [listed] = (await client.get("/admin/keys?tenant=acme", headers=ADMIN)).json()["data"]
    assert listed["limits"] == {**NO_LIMITS, **body}
    assert (await store.get_tenant("acme")).limits is None  # the tenant's are untouched

    # A key with no limits of its own is the same whether sent empty or cleared.
    assert (await client.put(f"/admin/keys/{key.id}/limits", json={}, headers=ADMIN)).json()["limits"] is None
    await client.put(f"/admin/keys/{key.id}/limits", json={"rpm": 1}, headers=ADMIN)
    cleared = await client.delete(f"/admin/keys/{key.id}/limits", headers=ADMIN)
    assert cleared.status_code == 200 and cleared.json()["limits"] is None
    assert (await store.get_key(key.id)).limits is None
    missing = await client.put("/admin/keys/key_nope/limits", json={"rpm": 1}, headers=ADMIN)
    assert missing.status_code == 404
    await client.post(f"/admin/keys/{key.id}/revoke", headers=ADMIN)
    revoked = await client.put(f"/admin/keys/{key.id}/limits", json={"rpm": 1}, headers=ADMIN)
    assert revoked.status_code == 409 and revoked.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm": -1}, "rpm"),
        ({"max_concurrent": 2**63}, "max_concurrent"),
        ({"tpm": 1.5}, "tpm"),
        ({"rpm": True}, "rpm"),
        ({"monthly_tokens": "100"}, "monthly_tokens"),
        ({"monthly_cost": "abc"}, "monthly_cost"),
        ({"monthly_cost": "-1"}, "monthly_cost"),
        ({"monthly_cost": "0.0000000000001"}, "monthly_cost"),
        ({"monthly_cost": 25}, "monthly_cost"),
        ({"monthly_cost": "NaN"}, "monthly_cost"),
        ({"burst": 10}, "burst"),
        ({"monthly_cost_pico": 5}, "monthly_cost_pico"),
    ],
)
async def test_bad_limits_are_400_naming_the_field(
    gateway: Gateway, body: dict[str, Any], param: str
) -> None:
    _, key = await gateway.new_key("acme")
    for path in ("/admin/tenants/acme/limits", f"/admin/keys/{key.id}/limits"):
        resp = await gateway.client.put(path, json=body, headers=ADMIN)
        assert resp.status_code == 400, path
        assert (resp.json()["error"]["type"], resp.json()["error"]["param"]) == (
            "invalid_request_error",
            param,
        )
    assert (await gateway.state.store.get_tenant("acme")).limits is None
    assert (await gateway.state.store.get_key(key.id)).limits is None


async def test_a_bad_limit_error_says_what_is_wrong(gateway: Gateway) -> None:
    await gateway.state.store.create_tenant("acme")
    resp = await gateway.client.put("/admin/tenants/acme/limits", json={"rpm": -1}, headers=ADMIN)
    assert resp.json() == {
        "error": {
            "message": "Invalid limit rpm: must be a whole number from 0 to 9223372036854775807, not -1",
            "type": "invalid_request_error",
            "param": "rpm",
            "code": None,
        }
    }
    resp = await gateway.client.put(
        "/admin/tenants/acme/limits", json={"monthly_cost": "1.0000000000001"}, headers=ADMIN
    )
    assert resp.json()["error"]["message"] == (
        "Invalid limit monthly_cost: must have at most 12 decimals, not '1.0000000000001'"
    )


async def test_limits_set_through_the_api_apply_at_once_despite_the_key_cache(
    sim_engine: str, tmp_path: Path
) -> None:
    """Every key of the tenant is dropped from the cache: the limits travel with the cached key."""
    async with running(sim_engine, tmp_path, admin_token=ADMIN_TOKEN, auth_cache_ttl_s=3600) as gw:
        first, first_key = await gw.new_key("acme")
        second, _ = await gw.new_key("acme")

        async def chat(secret: str) -> int:
            body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            return (await gw.client.post("/v1/chat/completions", json=body, headers=auth(secret))).status_code

        assert [await chat(first), await chat(second)] == [200, 200]  # both cached, default limits
        await gw.client.put("/admin/tenants/acme/limits", json={"rpm": 1}, headers=ADMIN)
        assert [await chat(first), await chat(second)] == [200, 429]  # one bucket for the tenant
        await gw.client.put("/admin/tenants/acme/limits", json={}, headers=ADMIN)
        await gw.client.put(f"/admin/keys/{first_key.id}/limits", json={"rpm": 1}, headers=ADMIN)
        assert [await chat(first), await chat(first), await chat(second)] == [200, 429, 200]
        await gw.client.delete(f"/admin/keys/{first_key.id}/limits", headers=ADMIN)
        assert await chat(first) == 200


async def test_engines_are_listed_and_can_be_drained_and_resumed(gateway: Gateway) -> None:
    listed = (await gateway.client.get("/admin/engines", headers=ADMIN)).json()
    assert listed["object"] == "list"
    [engine] = listed["data"]
    assert engine | {"inflight": 0} == {
        "object": "engine",
        "model": SIM_MODEL,
        "url": gateway.sim_url,
        "healthy": True,
        "draining": False,
        "ejected": False,
        "inflight": 0,
        "engine_running": engine["engine_running"],
        "engine_waiting": engine["engine_waiting"],
        "kv_cache_usage": engine["kv_cache_usage"],
    }
    drained = await gateway.client.post(
        "/admin/engines/drain", json={"url": gateway.sim_url + "/"}, headers=ADMIN
    )
    assert drained.status_code == 200 and drained.json()["data"][0]["draining"] is True
    secret, _ = await gateway.new_key("drained")
    gateway.state.router.pool(SIM_MODEL).no_engine_wait_s = 0  # refused at once, not held until resumed
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    refused = await gateway.client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
    )
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_healthy_engine"
    resumed = await gateway.client.post("/admin/engines/resume", json={"url": gateway.sim_url}, headers=ADMIN)
    assert resumed.json()["data"][0]["draining"] is False
    served = await gateway.client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
    )
    assert served.status_code == 200
    unknown = await gateway.client.post(
        "/admin/engines/drain", json={"url": "http://nowhere:1"}, headers=ADMIN
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "url"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/keys", {"tenant": "acme", "expires_at": "9999-12-31T23:59:59-12:00"}, "expires_at"),
        ("/admin/keys", {"tenant": "acme", "expires_at": "9999-12-31T23:59:59+00:00"}, None),
        ("rotate", {"grace_s": 1e308}, "grace_s"),
        ("rotate", {"grace_s": "inf"}, "grace_s"),
        ("rotate", {"grace_s": "nan"}, "grace_s"),
        ("rotate", {"grace_s": 400 * 86400}, "grace_s"),
        ("patch", {"expires_at": "9999-12-31T23:59:59-12:00"}, "expires_at"),
    ],
)
async def test_admin_inputs_that_would_poison_the_store_are_refused_before_writing(
    gateway: Gateway, path: str, body: dict[str, Any], param: str | None
) -> None:
    """These were 500s *after* the row was written (the new secret lost), and every later key
    listing of the tenant was a 500 until the row was repaired by hand."""
    _, key = await gateway.new_key("acme")
    before = await gateway.state.store.list_keys("acme")
    if path == "rotate":
        resp = await gateway.client.post(f"/admin/keys/{key.id}/rotate", json=body, headers=ADMIN)
    elif path == "patch":
        resp = await gateway.client.patch(f"/admin/keys/{key.id}", json=body, headers=ADMIN)
    else:
        resp = await gateway.client.post(path, json=body, headers=ADMIN)
    if param is None:  # the last second of the year 9999 in UTC can be written and read back
        assert resp.status_code == 201 and resp.json()["expires_at"] == "9999-12-31T23:59:59Z"
        return
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert await gateway.state.store.list_keys("acme") == before  # nothing written
    assert (await gateway.client.get("/admin/keys?tenant=acme", headers=ADMIN)).status_code == 200


async def test_a_key_row_with_an_unreadable_time_is_still_listed(gateway: Gateway) -> None:
    """A row written before the checks (or by hand) must not make every listing a 500."""
    _, key = await gateway.new_key("acme")
    await gateway.state.store.update_key(key.id, expires_at=float("inf"))
    listed = await gateway.client.get("/admin/keys?tenant=acme", headers=ADMIN)
    assert listed.status_code == 200
    assert [k["expires_at"] for k in listed.json()["data"]] == ["9999-12-31T23:59:59Z"]
    await gateway.state.store.update_key(key.id, expires_at=1e308)
    one = await gateway.client.get(f"/admin/keys/{key.id}", headers=ADMIN)
    assert one.status_code == 200 and one.json()["expires_at"] == "9999-12-31T23:59:59Z"
