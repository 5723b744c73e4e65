"""An in-memory ``UsageEventLog`` for the billing unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.records import UsageRecord
from gateway.store.events import OutboxClaim, UsageEntry


class MemoryClaim:
    def __init__(self, log: MemoryEventLog, name: str) -> None:
        self._log = log
        self._name = name
        self.seq = log.cursors.get(name, 0)

    async def advance(self, seq: int) -> None:
        self.seq = max(self.seq, seq)
        self._log.staged[self._name] = self.seq


class MemoryEventLog:
    """Rows numbered 1, 2, … in the order given; a claim commits its cursor when it ends cleanly."""

    def __init__(self, records: list[UsageRecord] | None = None) -> None:
        self.entries = [UsageEntry(i + 1, r, "acme") for i, r in enumerate(records or [])]
        self.cursors: dict[str, int] = {}
        self.staged: dict[str, int] = {}
        self.held: set[str] = set()

    def append(self, record: UsageRecord) -> None:
        self.entries.append(UsageEntry(len(self.entries) + 1, record, "acme"))

    async def read(self, after: int, limit: int, tenant_id: str | None = None) -> list[UsageEntry]:
        rows = [e for e in self.entries if e.seq > after and tenant_id in (None, e.record.tenant_id)]
        return rows[:limit]

    async def cursor(self, name: str) -> int:
        return self.cursors.get(name, 0)

    async def advance(self, name: str, seq: int) -> int:
        self.cursors[name] = max(self.cursors.get(name, 0), seq)
        return self.cursors[name]

    @asynccontextmanager
    async def claim(self, name: str) -> AsyncIterator[OutboxClaim | None]:
        if name in self.held:
            yield None
            return
        self.held.add(name)
        self.staged.pop(name, None)
        try:
            yield MemoryClaim(self, name)
            if name in self.staged:
                await self.advance(name, self.staged[name])
        finally:
            self.held.discard(name)
