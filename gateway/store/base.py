"""The store interface: tenants, keys and the usage ledger. SQLite by default, or PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from gateway.limit_spec import LimitSpec
from gateway.records import ApiKey, EngineSample, Tenant, TenantStatus, UsageGroup, UsageRecord
from gateway.store.counters import CounterAdvance
from gateway.store.events import UsageEventLog
from gateway.store.settlement import ReconcileHour, SettledPeriod, SettlementPlan

GroupBy = Literal["day", "model", "key"]


class StoreError(Exception):
    """A store operation failed (unreachable database, constraint, ...)."""


class NotFoundError(StoreError):
    """The tenant or key named does not exist."""


class ConflictError(StoreError):
    """The thing being created exists already."""


class _Unset:
    """Marks an argument left out (``None`` is a meaningful value: "no limit", "every model")."""


UNSET = _Unset()


class Store(Protocol):
    """Durable state: ``SqliteStore`` (default) or ``PostgresStore``, selected by database URL.

    Times are epoch seconds (UTC). Every method is one transaction.
    """

    async def open(self) -> None:
        """Connect and bring the schema to the latest migration."""
        ...

    async def close(self) -> None: ...

    @property
    def events(self) -> UsageEventLog:
        """The ledger in write order and the outboxes' cursors (usage events for billing)."""
        ...

    # Tenants
    async def create_tenant(self, name: str) -> Tenant:
        """Raises ``ConflictError`` when the name is taken (also by a deleted tenant)."""
        ...

    async def get_tenant(self, name: str) -> Tenant: ...

    async def list_tenants(self, include_deleted: bool = False) -> list[Tenant]: ...

    async def set_tenant_status(self, name: str, status: TenantStatus) -> Tenant:
        """Suspend, reactivate or delete; deleting also revokes every key of the tenant."""
        ...

    async def set_tenant_limits(self, name: str, limits: LimitSpec | None) -> Tenant:
        """Replace the tenant's limits (None: back to the configured defaults)."""
        ...

    # Keys
    async def create_key(
        self,
        tenant_name: str,
        key_hash: str,
        prefix: str,
        models: frozenset[str] | None,
        expires_at: float | None,
    ) -> ApiKey:
        """Raises ``NotFoundError`` for an unknown tenant, ``ConflictError`` for a deleted one."""
        ...

    async def get_key(self, key_id: str) -> ApiKey: ...

    async def get_key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    async def list_keys(self, tenant_name: str | None = None) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke now (idempotent: a revoked key keeps its first revocation time)."""
        ...

    async def update_key(
        self,
        key_id: str,
        models: frozenset[str] | None | _Unset = UNSET,
        expires_at: float | None | _Unset = UNSET,
        limits: LimitSpec | None | _Unset = UNSET,
    ) -> ApiKey:
        """Change a key's allow-list, expiry and/or own limits; ``UNSET`` arguments stay as they are."""
        ...

    # Ledger
    async def insert_usage(self, records: Sequence[UsageRecord]) -> int:
        """Insert rows keyed by request id; a row already there is left as is. Returns rows added."""
        ...

    async def list_usage(
        self, tenant_id: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[UsageRecord]:
        """Rows with ``start <= started_at < end``, oldest first."""
        ...

    async def usage_report(
        self, tenant_id: str | None, start: float, end: float, group_by: GroupBy
    ) -> list[UsageGroup]:
        """Totals of rows with ``start <= started_at < end`` per UTC day (``YYYY-MM-DD``), model or
        key id, ordered by group."""
        ...

    # Reconciliation with the engines' own counters (gateway/store/counters.py, gateway/reconcile)
    async def record_engine_sample(self, sample: EngineSample) -> CounterAdvance | None:
        """Count a reading of an engine's counters against its cursor (``counters.advance``) under
        the cursor's lock; None when it was the first reading (the baseline) or a stale one."""
        ...

    async def settle_next_period(
        self, due_before: float, settled_at: float, plan: SettlementPlan
    ) -> SettledPeriod | None:
        """Settle the oldest unsettled period of some engine that ended by ``due_before``, one
        transaction: insert the adjustments ``plan`` returns and mark the period settled. None
        when no period is due (or every due one is being settled by another process)."""
        ...

    async def reconcile_hours(self, start: float, end: float) -> list[ReconcileHour]:
        """Engine counters and ledger sums per engine and UTC hour, for hours in ``[start, end)``."""
        ...

    async def metering_drift(self, since: float) -> dict[str, int]:
        """Per engine, the tokens left unexplained over settled periods ending at or after ``since``
        (engine minus ledger minus adjustments; periods with a restart left out)."""
        ...
