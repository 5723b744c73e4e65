"""Model name → pool → the healthy endpoint with the fewest requests in flight.

A pool may reserve endpoints for one tenant each (dedicated capacity): only that tenant reaches
them; it uses them first and, when ``spill_over`` is on, the shared ones once its own are all
saturated or down. With ``max_inflight`` set, an endpoint holding that many requests is
saturated and on-demand requests wait in the pool's ``FairQueue``; every request in flight is
given back through ``EnginePool.release``, which hands the freed slot to the next waiter.

When no engine a request may use is up but the pool has some (down, ejected, draining: a restart
under way), the request is held in the same queue for up to ``no_engine_wait_s`` and gets the
first engine that comes back, instead of a 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.clock import Clock, monotonic
from gateway.config.pools import PoolSpec
from gateway.errors import EnginesBusyError, NoHealthyEngineError, TenantQueueFullError
from gateway.metrics import GatewayMetrics
from gateway.routing.endpoint import Endpoint
from gateway.routing.fairqueue import RETRY_AFTER_S, FairQueue, Waiter
from gateway.routing.policies import RoutingPolicy, create_policy

logger = logging.getLogger(__name__)

# What a request held for an engine that did not come back is told to wait before trying again.
NO_ENGINE_RETRY_AFTER_S = 5.0


@dataclass(eq=False)
class EnginePool:
    model: str
    endpoints: list[Endpoint]
    policy: RoutingPolicy
    spill_over: bool = True
    max_inflight: int | None = None
    queue: FairQueue | None = None
    metrics: GatewayMetrics | None = None
    fair_share: bool = False
    active_window_s: float = 2.0
    clock: Clock = field(default=monotonic, repr=False)  # ejection cool-downs and fair-share windows
    no_engine_wait_s: float = 0.0  # how long a request waits for an engine to come back (needs a queue)
    shared: list[Endpoint] = field(init=False)
    # Shared slots held per tenant, and when each tenant last asked for one (for ``fair_share``).
    _holding: dict[str, int] = field(init=False, default_factory=dict)
    _seen: dict[str, float] = field(init=False, default_factory=dict)
    dedicated: dict[str, list[Endpoint]] = field(init=False)

    def __post_init__(self) -> None:
        self.shared = [e for e in self.endpoints if e.dedicated_to is None]
        self.dedicated = {}
        for e in self.endpoints:
            if e.dedicated_to is not None:
                self.dedicated.setdefault(e.dedicated_to, []).append(e)

    def pick(
        self, tenant: str | None = None, exclude: Iterable[Endpoint] = (), key: str | None = None
    ) -> Endpoint:
        """The endpoint ``tenant`` would be sent to, saturation aside (takes no slot)."""
        skipped = set(exclude)
        now = self.clock()
        reserved = self.dedicated.get(tenant or "")
        own = [e for e in reserved or () if e.routable(now) and e not in skipped]
        if own and not (self.spill_over and all(self._saturated(e) for e in own)):
            return self.policy.choose(own, key)
        if reserved and not self.spill_over:
            candidates = own  # without spill-over a tenant with engines of its own uses only those
        else:
            candidates = [e for e in self.shared if e.routable(now) and e not in skipped] or own
        if not candidates:
            raise NoHealthyEngineError(f"No healthy engine is serving model `{self.model}` right now.")
        return self.policy.choose(candidates, key)

    async def acquire(
        self, tenant: str, exclude: Iterable[Endpoint] = (), key: str | None = None
    ) -> Endpoint:
        """Take a slot on an endpoint for ``tenant``, waiting in the fair queue when saturated, or
        while none of its engines is up but one is expected back (``expected_back``)."""
        try:
            endpoint = self.pick(tenant, exclude, key)
        except NoHealthyEngineError:
            if self.queue is None or self.no_engine_wait_s <= 0 or not self.expected_back(tenant):
                raise
            return await self._wait(tenant, self.no_engine_wait_s)
        if self.fair_share:
            self._seen[tenant] = self.clock()
        if not self._must_wait(endpoint, tenant):
            self._take_slot(endpoint, tenant)
            return endpoint
        assert self.queue is not None
        return await self._wait(tenant, self.queue.max_wait_s)

    def usable_by(self, tenant: str) -> list[Endpoint]:
        """Every endpoint ``tenant`` may be sent to, up or not."""
        reserved = self.dedicated.get(tenant, [])
        return reserved if reserved and not self.spill_over else reserved + self.shared

    def expected_back(self, tenant: str) -> bool:
        """None of the engines ``tenant`` may use is routable, yet it has some: they are down,
        ejected or draining, i.e. (re)starting. An engine that is up but was tried already, or
        a pool with no engine at all (discovery found none), is not waited for."""
        now = self.clock()
        usable = self.usable_by(tenant)
        return bool(usable) and not any(e.routable(now) for e in usable)

    def routable_besides(self, endpoint: Endpoint) -> bool:
        """Whether another engine of the pool would take traffic now."""
        now = self.clock()
        return any(e is not endpoint and e.routable(now) for e in self.endpoints)

    def _must_wait(self, endpoint: Endpoint, tenant: str) -> bool:
        """A shared engine when it is saturated, others wait or the tenant holds its share; never
        its own engines (nor when there is no queue)."""
        if self.queue is None or endpoint.dedicated_to is not None:
            return False
        return self.queue.depth > 0 or self._saturated(endpoint) or self._over_share(tenant)

    def _take_slot(self, endpoint: Endpoint, tenant: str) -> None:
        endpoint.inflight += 1
        if endpoint.ejected_until:
            endpoint.probing = True  # half-open: this request decides whether it comes back
        if endpoint.dedicated_to is None and self.queue is not None:
            self._holding[tenant] = self._holding.get(tenant, 0) + 1

    def _over_share(self, tenant: str) -> bool:
        """Whether ``tenant`` holds an equal share of the shared slots while others are active."""
        if not self.fair_share or self.max_inflight is None:
            return False
        now = self.clock()
        active = [t for t, at in self._seen.items() if now - at < self.active_window_s]
        if len(self._seen) > 4 * len(active) + 64:  # forget tenants long gone
            self._seen = {t: self._seen[t] for t in active}
        if len(active) <= 1:
            return False
        capacity = self.max_inflight * sum(1 for e in self.shared if e.healthy)
        return self._holding.get(tenant, 0) >= max(1, -(-capacity // len(active)))

    def release(self, endpoint: Endpoint, tenant: str) -> None:
        """Give back a slot taken by ``acquire``; the next waiter, if any, gets it."""
        endpoint.inflight -= 1
        endpoint.probing = False  # a probe that ended without a verdict lets the next one through
        if endpoint.dedicated_to is None and self.queue is not None:
            held = self._holding.get(tenant, 0) - 1
            if held > 0:
                self._holding[tenant] = held
            else:
                self._holding.pop(tenant, None)
        if self.queue is not None and self.queue.depth:
            self.grant_waiting()

    def grant_waiting(self) -> None:
        """Hand every free slot to a waiter: dedicated ones to their tenant, shared ones in turn."""
        queue = self.queue
        if queue is None:
            return
        for tenant, own in self.dedicated.items():
            while queue.waiting(tenant) and (endpoint := self._free(own)) is not None:
                if (waiter := queue.pop_tenant(tenant)) is not None:
                    self._grant(waiter, endpoint)
        while queue.depth and (endpoint := self._free(self.shared)) is not None:
            if (waiter := queue.pop_next(self._may_share)) is None:
                break  # everyone waiting holds its share already, or may not use shared engines
            self._grant(waiter, endpoint)
        self._report_depth()

    def update_endpoints(self, urls: Iterable[str]) -> tuple[list[Endpoint], list[Endpoint]]:
        """Serve ``urls`` from now on (engine discovery); returns the (added, removed) endpoints.

        An engine that stays keeps its ``Endpoint``, so its in-flight count and health carry on. A
        new one starts unhealthy: no traffic until the health checker has seen it answer. A
        removed one is only dropped from routing; requests on it finish and release it as usual.
        """
        wanted = list(dict.fromkeys(url.rstrip("/") for url in urls))
        current = {e.url: e for e in self.endpoints}
        added = [Endpoint(self.model, url, healthy=False) for url in wanted if url not in current]
        kept = {e.url: e for e in added} | current
        removed = [e for e in self.endpoints if e.url not in set(wanted)]
        if added or removed:
            self.endpoints = [kept[url] for url in wanted]
            self.__post_init__()
        return added, removed

    def _may_share(self, tenant: str) -> bool:
        """Whether a waiting ``tenant`` may take a shared slot now: not one kept on its own
        engines (no spill-over, held while they restart), nor one holding its fair share."""
        if not self.spill_over and tenant in self.dedicated:
            return False
        return not (self.fair_share and self._over_share(tenant))

    def _saturated(self, endpoint: Endpoint) -> bool:
        return self.max_inflight is not None and endpoint.inflight >= self.max_inflight

    def _free(self, endpoints: list[Endpoint]) -> Endpoint | None:
        now = self.clock()
        free = [e for e in endpoints if e.routable(now) and not self._saturated(e)]
        return self.policy.choose(free) if free else None

    def _grant(self, waiter: Waiter, endpoint: Endpoint) -> None:
        self._take_slot(endpoint, waiter.tenant)
        waiter.future.set_result(endpoint)
        if self.metrics is not None:
            self.metrics.queue_wait.labels(self.model).observe(time.perf_counter() - waiter.since)

    async def _wait(self, tenant: str, timeout_s: float) -> Endpoint:
        queue = self.queue
        assert queue is not None
        try:
            waiter = queue.push(tenant)
        except EnginesBusyError:
            self._count_rejected("full")
            raise
        except TenantQueueFullError:
            self._count_rejected("tenant_full")
            raise
        self.grant_waiting()  # a slot may be free already (an engine just came back)
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter.future
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result(), tenant)  # granted as it gave up: pass it on
            else:
                queue.remove(waiter)
                self._report_depth()
            if isinstance(exc, TimeoutError):
                raise self._gave_up(tenant, timeout_s) from None
            raise

    def _gave_up(self, tenant: str, waited_s: float) -> NoHealthyEngineError | EnginesBusyError:
        """Why a request waited in vain: its engines stayed down, or stayed busy."""
        if self.expected_back(tenant):
            self._count_rejected("no_engine")
            return NoHealthyEngineError(
                f"No engine serving `{self.model}` came back within {waited_s:g}s.", NO_ENGINE_RETRY_AFTER_S
            )
        self._count_rejected("timeout")
        return EnginesBusyError(
            f"The engines serving `{self.model}` stayed busy for {waited_s:g}s.", RETRY_AFTER_S
        )

    def _report_depth(self) -> None:
        if self.metrics is not None and self.queue is not None:
            self.metrics.queue_depth.labels(self.model).set(self.queue.depth)

    def _count_rejected(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.queue_rejected.labels(self.model, reason).inc()

    @classmethod
    def from_spec(
        cls,
        spec: PoolSpec,
        metrics: GatewayMetrics | None = None,
        clock: Clock = monotonic,
        no_engine_wait_s: float = 0.0,
    ) -> EnginePool:
        """The pool ``spec`` describes. Its queue holds requests waiting for a saturated engine
        (with ``max_inflight_per_engine``) and those waiting for an engine to come back."""
        endpoints = [
            Endpoint(spec.served_name, url, dedicated_to=spec.dedicated_owner(i))
            for i, url in enumerate(spec.endpoint_urls())
        ]
        q = spec.queue
        queue = FairQueue(spec.served_name, q.max_per_tenant, q.max_total, q.max_wait_s)
        return cls(
            model=spec.served_name,
            endpoints=endpoints,
            policy=create_policy(spec.routing),
            spill_over=spec.dedicated_spill_over,
            max_inflight=spec.max_inflight_per_engine,
            queue=queue,
            metrics=metrics,
            fair_share=spec.queue.fair_share,
            active_window_s=spec.queue.active_window_s,
            clock=clock,
            no_engine_wait_s=no_engine_wait_s,
        )
