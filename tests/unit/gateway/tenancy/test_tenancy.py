"""TenancyService: validation, rotation arithmetic and dropping keys from the auth cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.errors import InvalidRequestError, ResourceConflictError, ResourceNotFoundError
from gateway.limit_spec import LimitSpec
from gateway.records import TenantStatus
from gateway.store.sqlite import SqliteStore
from gateway.tenancy.service import TenancyService
from gateway.utc import format_timestamp, parse_timestamp

NOW = 1_800_000_000.0
HOUR = 3600.0


class Forgotten(list[str]):
    def __call__(self, key_hash: str) -> None:
        self.append(key_hash)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "t.db")
    await s.open()
    await s.create_tenant("acme")
    try:
        yield s
    finally:
        await s.close()


def service(store: SqliteStore, forgotten: Forgotten | None = None) -> TenancyService:
    return TenancyService(
        store, Forgotten() if forgotten is None else forgotten, rotation_grace_s=2 * HOUR, clock=lambda: NOW
    )


def test_timestamps_parse_as_utc_and_print_with_z() -> None:
    assert parse_timestamp("2027-01-31") == parse_timestamp("2027-01-31T00:00:00+00:00") == 1801353600.0
    assert parse_timestamp("2027-01-31T01:00:00+01:00") == 1801353600.0
    assert format_timestamp(1801353600.0) == "2027-01-31T00:00:00Z"
    with pytest.raises(InvalidRequestError) as bad:
        parse_timestamp("31/01/2027", "--expires")
    assert bad.value.param == "--expires"


async def test_rotation_copies_the_key_and_shortens_the_old_ones_life(store: SqliteStore) -> None:
    forgotten = Forgotten()
    tenancy = service(store, forgotten)
    old = (await tenancy.create_key("acme", ["m1", "m2"], NOW + 10 * HOUR)).key
    rotation = await tenancy.rotate_key(old.id)
    assert rotation.old.expires_at == NOW + 2 * HOUR  # the default grace
    new = rotation.new.key
    assert (new.tenant_name, new.models, new.expires_at) == ("acme", frozenset({"m1", "m2"}), NOW + 10 * HOUR)
    assert new.key_hash != old.key_hash and rotation.new.secret.startswith(new.prefix)
    assert forgotten == [old.key_hash]
    # A grace longer than the key's remaining life never extends it.
    soon = (await tenancy.create_key("acme", None, NOW + HOUR)).key
    assert (await tenancy.rotate_key(soon.id, grace_s=5 * HOUR)).old.expires_at == NOW + HOUR
    forever = (await tenancy.create_key("acme")).key
    assert (await tenancy.rotate_key(forever.id, grace_s=60)).old.expires_at == NOW + 60


async def test_rotation_refuses_revoked_expired_and_unknown_keys(store: SqliteStore) -> None:
    tenancy = service(store)
    revoked = (await tenancy.create_key("acme")).key
    await tenancy.revoke_key(revoked.id)
    with pytest.raises(ResourceConflictError):
        await tenancy.rotate_key(revoked.id)
    expired = await store.create_key("acme", "e" * 64, "sk-gw-e", None, NOW - 1)
    with pytest.raises(ResourceConflictError):
        await tenancy.rotate_key(expired.id)
    with pytest.raises(ResourceNotFoundError):
        await tenancy.rotate_key("key_missing")
    with pytest.raises(InvalidRequestError):
        await tenancy.rotate_key(revoked.id, grace_s=-1)
    assert len(await store.list_keys("acme")) == 2  # nothing was issued by the refusals


async def test_every_change_drops_the_tenants_keys_from_the_cache(store: SqliteStore) -> None:
    forgotten = Forgotten()
    tenancy = service(store, forgotten)
    a = (await tenancy.create_key("acme")).key
    b = (await tenancy.create_key("acme")).key
    await tenancy.set_tenant_status("acme", TenantStatus.suspended)
    assert sorted(forgotten) == sorted([a.key_hash, b.key_hash])
    forgotten.clear()
    await tenancy.update_key(a.id, models=["m1"])
    await tenancy.revoke_key(b.id)
    assert forgotten == [a.key_hash, b.key_hash]


async def test_validation(store: SqliteStore) -> None:
    tenancy = service(store)
    for name in ("", "has space", "-leading", "x" * 65, "ünïcode"):
        with pytest.raises(InvalidRequestError):
            await tenancy.create_tenant(name)
    with pytest.raises(InvalidRequestError):
        await tenancy.create_key("acme", [], None)
    with pytest.raises(InvalidRequestError):
        await tenancy.create_key("acme", None, NOW - 1)
    with pytest.raises(ResourceNotFoundError):
        await tenancy.create_key("nobody")
    with pytest.raises(ResourceNotFoundError):
        await tenancy.list_keys("nobody")
    key = (await tenancy.create_key("acme", ["m1"])).key
    kept = await tenancy.update_key(key.id, expires_at=NOW + HOUR)
    assert (kept.models, kept.expires_at) == (frozenset({"m1"}), NOW + HOUR)
    cleared = await tenancy.update_key(key.id, models=None, expires_at=None)
    assert (cleared.models, cleared.expires_at) == (None, None)


async def test_limit_changes_drop_the_affected_keys_from_the_cache(store: SqliteStore) -> None:
    forgotten = Forgotten()
    tenancy = service(store, forgotten)
    a = (await tenancy.create_key("acme")).key
    b = (await tenancy.create_key("acme")).key
    await store.create_tenant("other")
    other = (await tenancy.create_key("other")).key
    tenant = await tenancy.set_tenant_limits("acme", LimitSpec(rpm=60, monthly_cost_pico=10**12))
    assert tenant.limits == LimitSpec(rpm=60, monthly_cost_pico=10**12)
    assert sorted(forgotten) == sorted([a.key_hash, b.key_hash])  # every key of the tenant, no other
    forgotten.clear()
    assert (await tenancy.set_key_limits(other.id, LimitSpec(tpm=5))).limits == LimitSpec(tpm=5)
    assert forgotten == [other.key_hash]
    assert (await store.get_key(other.id)).limits == LimitSpec(tpm=5)
    assert (await tenancy.set_tenant_limits("acme", None)).limits is None
    assert (await tenancy.set_key_limits(other.id, LimitSpec())).limits is None  # nothing of its own


@pytest.mark.parametrize(
    ("values", "param"),
    [
        ({"rpm": -1}, "rpm"),
        ({"tpm": True}, "tpm"),
        ({"monthly_cost_pico": -5}, "monthly_cost"),
        ({"burst": 1}, "burst"),
        ({"max_concurrent": 2**63}, "max_concurrent"),
    ],
)
async def test_bad_limits_are_refused_naming_the_field(
    store: SqliteStore, values: dict[str, int], param: str
) -> None:
    """A malformed limit never becomes a ``LimitSpec``: a 400 naming the field, and nothing changes."""
    forgotten = Forgotten()
    tenancy = service(store, forgotten)
    key = (await tenancy.create_key("acme")).key
    with pytest.raises(InvalidRequestError) as refused:
        await tenancy.set_tenant_limits("acme", LimitSpec.from_stored(values))
    assert refused.value.param == param
    with pytest.raises(InvalidRequestError):
        await tenancy.set_key_limits(key.id, LimitSpec.from_stored(values))
    assert (await store.get_tenant("acme")).limits is None and (await store.get_key(key.id)).limits is None
    assert forgotten == []


async def test_rotation_keeps_the_keys_own_limits(store: SqliteStore) -> None:
    tenancy = service(store)
    old = (await tenancy.create_key("acme")).key
    await tenancy.set_key_limits(old.id, LimitSpec(rpm=3))
    new = (await tenancy.rotate_key(old.id)).new.key
    assert new.limits == LimitSpec(rpm=3) and (await store.get_key(new.id)).limits == LimitSpec(rpm=3)
    bare = (await tenancy.create_key("acme")).key
    assert (await tenancy.rotate_key(bare.id)).new.key.limits is None


async def test_limits_of_deleted_tenants_and_revoked_keys_cannot_change(store: SqliteStore) -> None:
    tenancy = service(store)
    key = (await tenancy.create_key("acme")).key
    await tenancy.revoke_key(key.id)
    with pytest.raises(ResourceConflictError):
        await tenancy.set_key_limits(key.id, LimitSpec(rpm=1))
    await tenancy.set_tenant_status("acme", TenantStatus.deleted)
    with pytest.raises(ResourceConflictError):
        await tenancy.set_tenant_limits("acme", LimitSpec(rpm=1))
    with pytest.raises(ResourceNotFoundError):
        await tenancy.set_tenant_limits("nobody", LimitSpec(rpm=1))
    with pytest.raises(ResourceNotFoundError):
        await tenancy.set_key_limits("key_missing", None)
