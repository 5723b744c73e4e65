"""Stores, chosen by the database URL's scheme."""

from __future__ import annotations

from collections.abc import Callable

from gateway.store.base import ConflictError, NotFoundError, Store, StoreError
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore

STORE_FACTORIES: dict[str, Callable[[str], Store]] = {
    "sqlite": SqliteStore.from_url,
    "postgresql": PostgresStore.from_url,
    "postgres": PostgresStore.from_url,
}


def create_store(database_url: str) -> Store:
    """Build (not open) the store the URL names."""
    scheme = database_url.split(":", 1)[0].split("+", 1)[0]
    factory = STORE_FACTORIES.get(scheme)
    if factory is None:
        known = ", ".join(sorted(STORE_FACTORIES))
        raise ValueError(f"unsupported database URL scheme {scheme!r} (known: {known})")
    return factory(database_url)


__all__ = ["ConflictError", "NotFoundError", "Store", "StoreError", "create_store"]
