"""Key generation, hashing and the cached check."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from gateway.errors import AuthenticationError, StoreUnavailableError
from gateway.records import ApiKey
from gateway.store import StoreError
from gateway.store.sqlite import SqliteStore
from gateway.tenancy.auth import KEY_PREFIX, Authenticator, generate_key, hash_key


def test_keys_are_long_random_prefixed_and_stored_only_as_hash() -> None:
    keys = {generate_key().secret for _ in range(100)}
    assert len(keys) == 100
    new = generate_key()
    assert new.secret.startswith(KEY_PREFIX)
    assert len(new.secret) - len(KEY_PREFIX) >= 43  # 32 random bytes, url-safe base64
    assert new.key_hash == hashlib.sha256(new.secret.encode()).hexdigest() == hash_key(new.secret)
    assert new.secret not in new.prefix + new.key_hash and new.secret.startswith(new.prefix)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "t.db")
    await s.open()
    await s.create_tenant("acme")
    return s


async def test_revocation_takes_effect_within_the_cache_ttl(store: SqliteStore) -> None:
    clock = Clock()
    auth = Authenticator(store, ttl_s=5, clock=clock)
    new = generate_key()
    key = await store.create_key("acme", new.key_hash, new.prefix, None, None)
    assert (await auth.authenticate(f"Bearer {new.secret}")).id == key.id
    await store.revoke_key(key.id)
    clock.now += 4.9
    assert (await auth.authenticate(f"Bearer {new.secret}")).id == key.id  # cached
    clock.now += 0.2
    with pytest.raises(AuthenticationError):
        await auth.authenticate(f"Bearer {new.secret}")
    await store.close()


async def test_expiry_is_checked_on_every_request_even_when_cached(store: SqliteStore) -> None:
    clock = Clock()
    auth = Authenticator(store, ttl_s=3600, clock=clock)
    new = generate_key()
    await store.create_key("acme", new.key_hash, new.prefix, None, clock.now + 10)
    await auth.authenticate(f"Bearer {new.secret}")
    clock.now += 11
    with pytest.raises(AuthenticationError, match="expired"):
        await auth.authenticate(f"Bearer {new.secret}")
    await store.close()


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Token abc", "bearer sk-gw-nope"])
async def test_missing_malformed_or_unknown_keys_are_refused(store: SqliteStore, header: str | None) -> None:
    with pytest.raises(AuthenticationError):
        await Authenticator(store, ttl_s=5).authenticate(header)
    await store.close()


class FlakyStore:
    """A store whose database can be switched off."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.down = False

    async def get_key_by_hash(self, key_hash: str) -> ApiKey | None:
        if self.down:
            raise StoreError("connection refused")
        return await self.inner.get_key_by_hash(key_hash)


async def test_database_outage_keeps_known_keys_working_and_refuses_unknown_with_503(
    store: SqliteStore,
) -> None:
    clock = Clock()
    flaky = FlakyStore(store)
    auth = Authenticator(flaky, ttl_s=1, clock=clock)  # type: ignore[arg-type]
    known = generate_key()
    await store.create_key("acme", known.key_hash, known.prefix, None, None)
    await auth.authenticate(f"Bearer {known.secret}")
    flaky.down = True
    clock.now += 60  # long past the cache lifetime
    assert (await auth.authenticate(f"Bearer {known.secret}")).tenant_name == "acme"
    with pytest.raises(StoreUnavailableError) as raised:
        await auth.authenticate(f"Bearer {generate_key().secret}")
    assert raised.value.status_code == 503
    assert raised.value.headers == {"retry-after": "2", "retry-after-ms": "2000"}  # a retry may succeed
    flaky.down = False
    with pytest.raises(AuthenticationError):
        await auth.authenticate(f"Bearer {generate_key().secret}")
    await store.close()
