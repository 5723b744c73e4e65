"""The requests waiting for a saturated pool: one FIFO per tenant, tenants served in turn.

A tenant with 50 requests waiting gets one engine slot, then every other waiting tenant gets
one, and so on: a burst only lengthens its own tenant's line. A tenant that starts waiting while
others wait is served at the next free slot (like fq_codel's new flows), and joins the rotation
at its end after that, so a one-request tenant never waits behind another tenant's burst.

The queue only holds and orders waiters; ``gateway.routing.EnginePool`` grants them slots.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.errors import EnginesBusyError, TenantQueueFullError

if TYPE_CHECKING:
    from gateway.routing.endpoint import Endpoint

# What a refused client is told to wait before trying again.
RETRY_AFTER_S = 1.0


@dataclass(eq=False, slots=True)
class Waiter:
    """One request waiting for an engine; its future gets the endpoint it may use."""

    tenant: str
    future: asyncio.Future[Endpoint]
    since: float = field(default_factory=time.perf_counter)


class FairQueue:
    """Bounded per-tenant FIFOs served round-robin across tenants."""

    def __init__(self, model: str, max_per_tenant: int, max_total: int, max_wait_s: float) -> None:
        self.model = model
        self.max_per_tenant = max_per_tenant
        self.max_total = max_total
        self.max_wait_s = max_wait_s
        self.depth = 0
        self._lines: dict[str, deque[Waiter]] = {}
        self._new: deque[str] = deque()  # started waiting since their last turn: served first
        self._old: deque[str] = deque()  # the rotation

    def push(self, tenant: str) -> Waiter:
        """Queue a waiter for ``tenant``, or refuse: 429 past its share, 503 when the queue is full."""
        line = self._lines.get(tenant)
        if line is not None and len(line) >= self.max_per_tenant:
            raise TenantQueueFullError(self.model, len(line), RETRY_AFTER_S)
        if self.depth >= self.max_total:
            raise EnginesBusyError(
                f"The engines serving `{self.model}` are busy and their queue is full.", RETRY_AFTER_S
            )
        waiter = Waiter(tenant, asyncio.get_running_loop().create_future())
        if line is None:
            line = self._lines[tenant] = deque()
            self._new.append(tenant)
        line.append(waiter)
        self.depth += 1
        return waiter

    def waiting(self, tenant: str) -> int:
        line = self._lines.get(tenant)
        return len(line) if line is not None else 0

    def pop_next(self, eligible: Callable[[str], bool] | None = None) -> Waiter | None:
        """The next live waiter in turn (newly waiting tenants first), or None; tenants for which
        ``eligible`` says no keep their place and are passed over."""
        passed: list[tuple[deque[str], str]] = []
        found: Waiter | None = None
        while found is None and (self._new or self._old):
            turns = self._new or self._old
            tenant = turns.popleft()
            if eligible is not None and not eligible(tenant):
                passed.append((turns, tenant))
                continue
            found = self._take(tenant)
            if tenant in self._lines:
                self._old.append(tenant)
        for turns, tenant in reversed(passed):
            turns.appendleft(tenant)
        return found

    def pop_tenant(self, tenant: str) -> Waiter | None:
        """``tenant``'s oldest live waiter (for its dedicated engines), or None."""
        while tenant in self._lines:
            waiter = self._take(tenant)
            if tenant not in self._lines:
                self._forget(tenant)
            if waiter is not None:
                return waiter
        return None

    def remove(self, waiter: Waiter) -> None:
        """Take out a waiter that gave up; a waiter already popped is left alone."""
        line = self._lines.get(waiter.tenant)
        if line is None or waiter not in line:
            return
        line.remove(waiter)
        self.depth -= 1
        if not line:
            del self._lines[waiter.tenant]
            self._forget(waiter.tenant)

    def _take(self, tenant: str) -> Waiter | None:
        """Pop ``tenant``'s head; None when it gave up already (its future is cancelled)."""
        line = self._lines[tenant]
        waiter = line.popleft()
        self.depth -= 1
        if not line:
            del self._lines[tenant]
        return None if waiter.future.done() else waiter

    def _forget(self, tenant: str) -> None:
        for turns in (self._new, self._old):
            if tenant in turns:
                turns.remove(tenant)
