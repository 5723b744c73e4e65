"""The ledger read as an ordered log of usage events, and the outbox cursors that follow it.

Every ledger row has a ``seq`` numbering rows in the order they were written (committed, on
PostgreSQL: ledger batches commit one at a time, so no reader ever sees ``seq`` n + 1 before n).
A reader that remembers the last ``seq`` it took and asks for the rows after it therefore misses
nothing and takes nothing twice; the usage events API and the webhook outbox both read this way.

An outbox (the webhook push) keeps its position in ``outbox_cursors``, one row per name. A
*claim* holds one outbox for one round: on PostgreSQL a row lock (``FOR UPDATE SKIP LOCKED``) that
another replica's claim skips, so only one process pushes at a time and each reads the cursor the
last one committed; SQLite serves one process, where an in-process lock does the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.records import UsageRecord
from gateway.store.rows import USAGE_FIELDS, usage_from_row

# Ledger columns joined with the tenant's name (cheap: the tenants' primary key); ``entry_from_row``.
_ENTRY_COLUMNS = "u.seq, t.name, " + ", ".join(f"u.{field}" for field in USAGE_FIELDS)


def read_query(placeholder: str, tenant_id: str | None) -> str:
    """Rows after a ``seq`` (optionally one tenant's), in ``seq`` order, at most a limit: the
    arguments are ``(after, [tenant_id,] limit)``."""
    tenant = f" AND u.tenant_id = {placeholder}" if tenant_id is not None else ""
    return (
        f"SELECT {_ENTRY_COLUMNS} FROM usage_ledger u LEFT JOIN tenants t ON t.id = u.tenant_id "
        f"WHERE u.seq > {placeholder}{tenant} ORDER BY u.seq LIMIT {placeholder}"
    )


def read_args(after: int, limit: int, tenant_id: str | None) -> tuple[object, ...]:
    return (after, tenant_id, limit) if tenant_id is not None else (after, limit)


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """One ledger row in the log: its position, the row, and its tenant's name (None if the tenant
    row is gone)."""

    seq: int
    record: UsageRecord
    tenant_name: str | None


def entry_from_row(row: Sequence[Any]) -> UsageEntry:
    """A row of ``read_query``."""
    return UsageEntry(seq=int(row[0]), record=usage_from_row(row[2:]), tenant_name=row[1])


class OutboxClaim(Protocol):
    """One outbox held for one round: its cursor, and the way to move it on."""

    @property
    def seq(self) -> int:
        """The last ``seq`` the outbox delivered (0: none yet)."""
        ...

    async def advance(self, seq: int) -> None:
        """Move the cursor to ``seq`` (only forward: a lower one is ignored). Durable when the
        claim ends without an error."""
        ...


class UsageEventLog(Protocol):
    """The ledger in write order, and named cursors over it (``Store.events``)."""

    async def read(self, after: int, limit: int, tenant_id: str | None = None) -> list[UsageEntry]:
        """At most ``limit`` rows with ``seq > after`` (of one tenant, if named), in ``seq`` order."""
        ...

    async def cursor(self, name: str) -> int:
        """Where the outbox ``name`` stands (0 when it has never advanced)."""
        ...

    async def advance(self, name: str, seq: int) -> int:
        """Move the outbox ``name`` to ``seq`` unless it stands there or further already; returns
        where it stands now."""
        ...

    def claim(self, name: str) -> AbstractAsyncContextManager[OutboxClaim | None]:
        """Hold the outbox ``name`` for one round; None when another round (in this process or,
        on PostgreSQL, another replica) holds it now. The holder reads, delivers, advances."""
        ...
