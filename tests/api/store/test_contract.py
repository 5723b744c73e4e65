"""What every store backend must do: tenants, keys and an idempotent, queryable ledger."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.limit_spec import LimitSpec
from gateway.records import Outcome, TenantStatus, UsageGroup, UsageRecord
from gateway.store import ConflictError, NotFoundError, Store

DAY = 86_400.0
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()


def row(request_id: str, tenant_id: str, key_id: str, started_at: float, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "model": "m1",
        "api": "chat.completions",
        "endpoint": "http://e:1",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "ended_at": started_at + 1,
        "ttft_s": 0.25,
        "cost_pico": 7,
        "price_version": "m1@2026-01-01",
    }
    values.update(fields)
    return UsageRecord(request_id, tenant_id, key_id, started_at=started_at, **values)  # type: ignore[arg-type]


async def test_tenant_lifecycle(store: Store) -> None:
    acme = await store.create_tenant("acme")
    assert (await store.get_tenant("acme")) == acme and acme.status == TenantStatus.active
    with pytest.raises(ConflictError):
        await store.create_tenant("acme")
    with pytest.raises(NotFoundError):
        await store.get_tenant("nobody")
    assert (await store.set_tenant_status("acme", TenantStatus.suspended)).status == TenantStatus.suspended
    assert (await store.set_tenant_status("acme", TenantStatus.active)).status == TenantStatus.active
    await store.create_tenant("other")
    assert [t.name for t in await store.list_tenants()] == ["acme", "other"]


async def test_deleting_a_tenant_revokes_its_keys_and_keeps_its_name(store: Store) -> None:
    await store.create_tenant("gone")
    key = await store.create_key("gone", "h" * 64, "sk-gw-abc", None, None)
    deleted = await store.set_tenant_status("gone", TenantStatus.deleted)
    assert deleted.status == TenantStatus.deleted
    revoked = await store.get_key(key.id)
    assert revoked.revoked_at is not None and not revoked.usable_at(revoked.revoked_at + 1)
    assert [t.name for t in await store.list_tenants()] == []
    assert [t.name for t in await store.list_tenants(include_deleted=True)] == ["gone"]
    with pytest.raises(ConflictError):
        await store.create_key("gone", "i" * 64, "sk-gw-def", None, None)
    with pytest.raises(ConflictError):
        await store.create_tenant("gone")
    with pytest.raises(ConflictError):
        await store.set_tenant_status("gone", TenantStatus.active)


async def test_keys_create_find_update_revoke(store: Store) -> None:
    await store.create_tenant("acme")
    key = await store.create_key("acme", "a" * 64, "sk-gw-aaa", frozenset({"m1"}), T0 + DAY)
    assert (await store.get_key_by_hash("a" * 64)) == key
    assert await store.get_key_by_hash("b" * 64) is None
    assert key.allows("m1") and not key.allows("m2") and key.usable_at(T0)
    assert not key.usable_at(T0 + DAY)

    widened = await store.update_key(key.id, models=None)
    assert widened.models is None and widened.expires_at == T0 + DAY
    extended = await store.update_key(key.id, expires_at=None)
    assert extended.expires_at is None and extended.models is None
    narrowed = await store.update_key(key.id, models=frozenset({"m2", "m3"}))
    assert narrowed.models == {"m2", "m3"}

    revoked = await store.revoke_key(key.id)
    assert revoked.revoked_at is not None
    assert (await store.revoke_key(key.id)).revoked_at == revoked.revoked_at  # idempotent
    suspended = await store.get_key(key.id)
    assert suspended.revoked_at == revoked.revoked_at
    with pytest.raises(NotFoundError):
        await store.get_key("key_missing")
    with pytest.raises(NotFoundError):
        await store.revoke_key("key_missing")
    with pytest.raises(NotFoundError):
        await store.create_key("nobody", "c" * 64, "sk-gw-ccc", None, None)


async def test_suspension_shows_on_the_key(store: Store) -> None:
    await store.create_tenant("acme")
    key = await store.create_key("acme", "a" * 64, "sk-gw-aaa", None, None)
    await store.set_tenant_status("acme", TenantStatus.suspended)
    found = await store.get_key_by_hash(key.key_hash)
    assert found is not None and found.tenant_status == TenantStatus.suspended and not found.usable_at(T0)


async def test_keys_are_listed_per_tenant(store: Store) -> None:
    for name in ("a", "b"):
        await store.create_tenant(name)
    ka = await store.create_key("a", "a" * 64, "p", None, None)
    kb = await store.create_key("b", "b" * 64, "p", None, None)
    assert [k.id for k in await store.list_keys("a")] == [ka.id]
    assert {k.id for k in await store.list_keys()} == {ka.id, kb.id}


async def test_ledger_inserts_are_idempotent(store: Store) -> None:
    rows = [row(f"req_{i}", "ten_a", "key_a", T0 + i) for i in range(3)]
    assert await store.insert_usage(rows) == 3
    assert await store.insert_usage(rows) == 0
    changed = row("req_1", "ten_a", "key_a", T0 + 1, prompt_tokens=999)
    assert await store.insert_usage([changed, row("req_9", "ten_a", "key_a", T0 + 9)]) == 1
    stored = await store.list_usage("ten_a")
    assert [r.request_id for r in stored] == ["req_0", "req_1", "req_2", "req_9"]
    assert stored[1].prompt_tokens == 10  # the first write wins
    assert stored[0] == rows[0]


async def test_every_field_round_trips(store: Store) -> None:
    original = row(
        "req_x",
        "ten_a",
        "key_a",
        T0 + 0.123456,
        outcome=Outcome.aborted,
        http_status=499,
        ttft_s=None,
        error_code="engine_error",
        cost_pico=123_456_789_012,
        price_version=None,
    )
    await store.insert_usage([original])
    assert (await store.list_usage("ten_a")) == [original]


async def test_usage_is_filtered_by_tenant_and_time(store: Store) -> None:
    await store.insert_usage(
        [row("a1", "ten_a", "k", T0), row("a2", "ten_a", "k", T0 + DAY), row("b1", "ten_b", "k", T0)]
    )
    assert [r.request_id for r in await store.list_usage("ten_b")] == ["b1"]
    assert [r.request_id for r in await store.list_usage("ten_a", start=T0 + 1)] == ["a2"]
    assert [r.request_id for r in await store.list_usage("ten_a", end=T0 + DAY)] == ["a1"]
    assert len(await store.list_usage()) == 3


async def test_usage_report_groups_by_day_model_and_key(store: Store) -> None:
    await store.insert_usage(
        [
            row("r1", "ten_a", "k1", T0 + 10, model="m1", cost_pico=100),
            row("r2", "ten_a", "k2", T0 + 20, model="m2", prompt_tokens=1, completion_tokens=2, cost_pico=3),
            row("r3", "ten_a", "k1", T0 + DAY + 5, model="m1", cost_pico=10**15),
            row("r4", "ten_a", "k1", T0 + 2 * DAY, model="m1"),  # outside [T0, T0 + 2 days)
            row("r5", "ten_b", "k9", T0 + 10, model="m1"),  # another tenant
        ]
    )
    end = T0 + 2 * DAY
    assert await store.usage_report("ten_a", T0, end, "day") == [
        UsageGroup("2026-11-01", 2, 11, 7, 103),
        UsageGroup("2026-11-02", 1, 10, 5, 10**15),
    ]
    assert await store.usage_report("ten_a", T0, end, "model") == [
        UsageGroup("m1", 2, 20, 10, 10**15 + 100),
        UsageGroup("m2", 1, 1, 2, 3),
    ]
    assert await store.usage_report("ten_a", T0, end, "key") == [
        UsageGroup("k1", 2, 20, 10, 10**15 + 100),
        UsageGroup("k2", 1, 1, 2, 3),
    ]
    assert [g.requests for g in await store.usage_report(None, T0, end, "model")] == [3, 1]
    assert await store.usage_report("ten_c", T0, end, "day") == []


async def test_limits_are_stored_per_tenant_and_key_and_travel_with_the_key(store: Store) -> None:
    await store.create_tenant("acme")
    key = await store.create_key("acme", "a" * 64, "p", None, None)
    assert (key.limits, key.tenant_limits) == (None, None)
    tenant = await store.set_tenant_limits("acme", LimitSpec(rpm=60, monthly_cost_pico=5 * 10**12))
    assert tenant.limits == LimitSpec(rpm=60, monthly_cost_pico=5 * 10**12)
    assert (await store.get_tenant("acme")).limits == tenant.limits
    updated = await store.update_key(key.id, limits=LimitSpec(tpm=1000))
    assert (updated.limits, updated.models) == (LimitSpec(tpm=1000), None)
    found = await store.get_key_by_hash("a" * 64)
    assert found is not None and found.limits == LimitSpec(tpm=1000) and found.tenant_limits == tenant.limits
    assert (await store.update_key(key.id, expires_at=None)).limits == LimitSpec(tpm=1000)  # untouched
    assert (await store.update_key(key.id, limits=None)).limits is None
    assert (await store.set_tenant_limits("acme", None)).limits is None
    with pytest.raises(NotFoundError):
        await store.set_tenant_limits("nobody", LimitSpec(rpm=1))
