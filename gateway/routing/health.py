"""Which engines get traffic: active ``/health`` probes and passive ejection of failing ones.

Active checks catch an engine that is down or not ready. Passive ejection catches one that
answers ``/health`` but fails requests (5xx, timeouts, streams that break off): after
``failures`` such requests in a row it is ejected for a cool-down; then one request is let
through as a probe (half-open). Success brings it back; failure ejects it again for twice as
long, up to ``max_cooldown_s``. Envoy's outlier detection and classic circuit breakers work this
way; a single probe keeps a broken engine from taking a burst of requests each time it returns.

One request's error never takes a model's last routable engine out of rotation: an engine that
could not be reached is marked down at once only while another engine can take over; the last
one is probed (``/health``) and the probe decides. Passive ejection spares it too (like Envoy's
panic threshold): ejecting it would turn its errors into 503s for everyone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import aiohttp

from gateway.clock import Clock, monotonic
from gateway.metrics import GatewayMetrics
from gateway.routing.endpoint import Endpoint
from gateway.routing.router import Router

logger = logging.getLogger(__name__)

Probe = Callable[[Endpoint], Awaitable[bool]]  # whether the engine's ``/health`` answers 200


@dataclass(frozen=True)
class EjectionPolicy:
    failures: int = 5  # failed requests in a row that eject an endpoint
    cooldown_s: float = 10.0  # first cool-down; doubled after each failed probe
    max_cooldown_s: float = 120.0


class HealthChecker:
    """Probes every endpoint's ``/health`` and keeps score of request outcomes (ejection)."""

    def __init__(
        self,
        router: Router,
        session: aiohttp.ClientSession,
        metrics: GatewayMetrics,
        interval_s: float,
        timeout_s: float,
        ejection: EjectionPolicy | None = None,
        clock: Clock = monotonic,
        probe: Probe | None = None,
    ) -> None:
        self._router = router
        self._session = session
        self._metrics = metrics
        self.interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ejection = ejection or EjectionPolicy()
        self._clock = clock  # the pools' clock: ejections end on the time they route by
        self._probe = probe or self._get_health
        self._probes: dict[Endpoint, asyncio.Future[None]] = {}  # one probe at a time per engine

    async def check_all(self) -> None:
        await self.check(self._router.endpoints())

    async def check(self, endpoints: Iterable[Endpoint]) -> None:
        await asyncio.gather(*(self._check(e) for e in endpoints))

    def forget(self, endpoint: Endpoint) -> None:
        """Drop a removed endpoint's ``gateway_engine_up`` series (pod addresses churn)."""
        self._metrics.forget_engine(endpoint.model, endpoint.url)

    async def check_round(self) -> None:
        """One background round (``gateway.supervisor`` runs it every ``interval_s``)."""
        await self.check_all()
        for pool in self._router.pools.values():
            if pool.queue is not None and pool.queue.depth:
                pool.grant_waiting()  # an endpoint whose cool-down ended may take a waiter

    async def _check(self, endpoint: Endpoint) -> None:
        self.mark(endpoint, await self._probe(endpoint))

    async def _get_health(self, endpoint: Endpoint) -> bool:
        try:
            async with self._session.get(f"{endpoint.url}/health", timeout=self._timeout) as resp:
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def unreachable(self, endpoint: Endpoint) -> None:
        """A request could not reach the engine, not even on a fresh connection. While another
        engine can take over it is marked down at once (the health checks bring it back); the
        last routable one is probed now and stays in rotation unless its ``/health`` fails."""
        if self._others_routable(endpoint):
            self.mark(endpoint, False)
            return
        probe = self._probes.get(endpoint)
        if probe is None:
            probe = self._probes[endpoint] = asyncio.ensure_future(self._check(endpoint))
            probe.add_done_callback(lambda _: self._probes.pop(endpoint, None))
        await asyncio.shield(probe)  # a caller that gives up leaves the probe to the others

    def _others_routable(self, endpoint: Endpoint) -> bool:
        pool = self._router.pools.get(endpoint.model)
        return pool is None or pool.routable_besides(endpoint)

    def mark(self, endpoint: Endpoint, healthy: bool) -> None:
        changed = healthy != endpoint.healthy
        if changed:
            logger.warning(
                "engine %s for %s is %s", endpoint.url, endpoint.model, "up" if healthy else "DOWN"
            )
        endpoint.healthy = healthy
        if changed and healthy:
            # Back from down (a restarted engine, usually): its old failures say nothing now.
            endpoint.failures = 0
            endpoint.ejected_until = endpoint.cooldown_s = 0.0
            self._router.pool(endpoint.model).grant_waiting()  # its free slots go to whoever waits
        self._metrics.engine_up.labels(endpoint.model, endpoint.url).set(1 if healthy else 0)

    def succeeded(self, endpoint: Endpoint) -> None:
        """The engine answered a request (any status below 500): its failure streak ends."""
        endpoint.failures = 0
        if endpoint.ejected_until:
            logger.warning(
                "engine %s for %s passed its probe: back in rotation", endpoint.url, endpoint.model
            )
            endpoint.ejected_until = endpoint.cooldown_s = 0.0
            endpoint.probing = False

    def failed(self, endpoint: Endpoint) -> None:
        """A request failed on the engine (5xx, timeout, broken stream); may eject it."""
        endpoint.failures += 1
        policy = self._ejection
        if endpoint.ejected_until:
            if not endpoint.probing:
                return  # a request from before the ejection: already counted in
            cooldown = min(max(endpoint.cooldown_s, policy.cooldown_s) * 2, policy.max_cooldown_s)
        elif endpoint.failures >= policy.failures and self._others_routable(endpoint):
            cooldown = policy.cooldown_s
        else:
            return  # below the streak, or the last engine: its errors reach the clients as they are
        endpoint.cooldown_s = cooldown
        endpoint.ejected_until = self._clock() + cooldown
        endpoint.probing = False
        self._metrics.engine_ejections.labels(endpoint.model).inc()
        logger.warning(
            "engine %s for %s ejected for %.0f s after %d failed requests in a row",
            endpoint.url,
            endpoint.model,
            cooldown,
            endpoint.failures,
        )
