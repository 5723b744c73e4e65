"""Tenants, keys and their limits: the one implementation behind the admin API and the ``gateway`` CLI.

Both front ends call ``TenancyService`` so that creating, rotating or revoking a key does exactly
the same thing wherever it is done. Store errors become ``GatewayError``s here (404, 409), which
the API renders through its one handler and the CLI prints.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from gateway.errors import InvalidRequestError, ResourceConflictError, ResourceNotFoundError
from gateway.limit_spec import LimitSpec
from gateway.protocol import TENANT_NAME_PATTERN
from gateway.records import ApiKey, Tenant, TenantStatus
from gateway.store import ConflictError, NotFoundError, Store
from gateway.store.base import UNSET, _Unset
from gateway.tenancy.auth import generate_key

# Tenant names show up in metrics labels, CLI arguments and URLs: keep them plain.
_TENANT_NAME = re.compile(TENANT_NAME_PATTERN)
# The longest a rotated key may keep working beside its replacement.
MAX_GRACE_S = 366 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just created: ``secret`` is returned to the caller once and never stored."""

    secret: str
    key: ApiKey


@dataclass(frozen=True, slots=True)
class Rotation:
    """The replacement (with its secret) and the old key, now expiring at the end of its grace."""

    new: IssuedKey
    old: ApiKey


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn the store's not-found and conflict errors into the API's 404 and 409."""
    try:
        yield
    except NotFoundError as exc:
        raise ResourceNotFoundError(str(exc)) from exc
    except ConflictError as exc:
        raise ResourceConflictError(str(exc)) from exc


def check_models(models: Iterable[str] | None) -> frozenset[str] | None:
    """An allow-list (None: every model); an empty one would make a key that can do nothing."""
    if models is None:
        return None
    names = frozenset(m.strip() for m in models)
    if not names or "" in names:
        raise InvalidRequestError(
            "models must name at least one model (or be null for every model).", param="models"
        )
    return names


def _keep_cache(key_hash: str) -> None:
    """For a process with no key cache (the CLI): the gateway's cache expires on its own."""


class TenancyService:
    """Tenant lifecycle and key management over a ``Store``.

    ``forget`` drops a key from this process's authentication cache, so that a revocation,
    rotation or suspension takes effect here at once (other processes within the cache's TTL).
    """

    def __init__(
        self,
        store: Store,
        forget: Callable[[str], None] = _keep_cache,
        rotation_grace_s: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._forget = forget
        self._grace_s = rotation_grace_s
        self._clock = clock

    # Tenants
    async def create_tenant(self, name: str) -> Tenant:
        if not _TENANT_NAME.fullmatch(name):
            raise InvalidRequestError(
                "A tenant name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
                param="name",
            )
        with store_errors():
            return await self._store.create_tenant(name)

    async def get_tenant(self, name: str) -> Tenant:
        with store_errors():
            return await self._store.get_tenant(name)

    async def list_tenants(self, include_deleted: bool = False) -> list[Tenant]:
        return await self._store.list_tenants(include_deleted)

    async def set_tenant_status(self, name: str, status: TenantStatus) -> Tenant:
        """Suspend, reactivate or delete (deleting revokes every key of the tenant)."""
        with store_errors():
            tenant = await self._store.set_tenant_status(name, status)
            keys = await self._store.list_keys(name)
        for key in keys:
            self._forget(key.key_hash)
        return tenant

    async def set_tenant_limits(self, name: str, limits: LimitSpec | None) -> Tenant:
        """Replace the tenant's limits; ``LimitSpec()``: unlimited, None: back to the configured
        defaults.

        The limits hold for the tenant's total over all its keys, so every key is dropped from the
        cache (the limits travel with the cached key).
        """
        tenant = await self.get_tenant(name)
        if tenant.status == TenantStatus.deleted:
            raise ResourceConflictError(f"tenant {name!r} is deleted")
        with store_errors():
            tenant = await self._store.set_tenant_limits(name, limits)
            keys = await self._store.list_keys(name)
        for key in keys:
            self._forget(key.key_hash)
        return tenant

    # Keys
    async def create_key(
        self, tenant: str, models: Iterable[str] | None = None, expires_at: float | None = None
    ) -> IssuedKey:
        if expires_at is not None and expires_at <= self._clock():
            raise InvalidRequestError("expires_at is in the past.", param="expires_at")
        return await self._issue(tenant, check_models(models), expires_at)

    async def _issue(self, tenant: str, models: frozenset[str] | None, expires_at: float | None) -> IssuedKey:
        new = generate_key()
        with store_errors():
            key = await self._store.create_key(tenant, new.key_hash, new.prefix, models, expires_at)
        return IssuedKey(new.secret, key)

    async def get_key(self, key_id: str) -> ApiKey:
        with store_errors():
            return await self._store.get_key(key_id)

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        if tenant is not None:
            await self.get_tenant(tenant)  # an unknown tenant is a 404, not an empty list
        return await self._store.list_keys(tenant)

    async def revoke_key(self, key_id: str) -> ApiKey:
        with store_errors():
            key = await self._store.revoke_key(key_id)
        self._forget(key.key_hash)
        return key

    async def update_key(
        self,
        key_id: str,
        models: Iterable[str] | None | _Unset = UNSET,
        expires_at: float | None | _Unset = UNSET,
    ) -> ApiKey:
        """Replace the allow-list and/or the expiry (None: every model / never); UNSET: keep."""
        allowed = models if isinstance(models, _Unset) else check_models(models)
        with store_errors():
            key = await self._store.update_key(key_id, models=allowed, expires_at=expires_at)
        self._forget(key.key_hash)
        return key

    async def set_key_limits(self, key_id: str, limits: LimitSpec | None) -> ApiKey:
        """Replace the key's own limits, which apply on top of its tenant's; None or
        ``LimitSpec()``: none of its own."""
        own = limits if limits is not None and not limits.unlimited else None
        key = await self.get_key(key_id)
        if key.revoked_at is not None:
            raise ResourceConflictError(f"key {key_id!r} is revoked")
        with store_errors():
            key = await self._store.update_key(key_id, limits=own)
        self._forget(key.key_hash)
        return key

    async def rotate_key(self, key_id: str, grace_s: float | None = None) -> Rotation:
        """A new key with the same tenant, models, expiry and own limits; the old one expires after
        the grace.

        The old key never lives longer than it would have: its expiry becomes the earlier of its
        own and now + grace.
        """
        grace = self._grace_s if grace_s is None else grace_s
        if not 0 <= grace <= MAX_GRACE_S:  # NaN fails too; 1e308 or inf made an unreadable expiry
            raise InvalidRequestError(
                f"grace_s must be from 0 to {MAX_GRACE_S:.0f} seconds (a year).", param="grace_s"
            )
        old = await self.get_key(key_id)
        now = self._clock()
        if old.revoked_at is not None:
            raise ResourceConflictError(f"key {key_id!r} is revoked; create a new key instead")
        if old.expires_at is not None and old.expires_at <= now:
            raise ResourceConflictError(f"key {key_id!r} has expired; create a new key instead")
        new = await self._issue(old.tenant_name, old.models, old.expires_at)
        if old.limits is not None:  # a rotation must not shed the key's limits
            with store_errors():
                new = IssuedKey(new.secret, await self._store.update_key(new.key.id, limits=old.limits))
        retire_at = now + grace if old.expires_at is None else min(old.expires_at, now + grace)
        with store_errors():
            old = await self._store.update_key(key_id, expires_at=retire_at)
        self._forget(old.key_hash)
        return Rotation(new, old)
