"""The only place that maps a model name to its pool of engines."""

from __future__ import annotations

from gateway.clock import Clock, monotonic
from gateway.config.pools import DeploymentSpec
from gateway.errors import ModelNotFoundError
from gateway.metrics import GatewayMetrics
from gateway.routing.endpoint import Endpoint
from gateway.routing.pool import EnginePool


class Router:
    """Holds every pool; the only place that maps a model name to engines."""

    def __init__(self, pools: dict[str, EnginePool]) -> None:
        self.pools = pools

    @classmethod
    def from_spec(
        cls,
        spec: DeploymentSpec,
        metrics: GatewayMetrics | None = None,
        clock: Clock = monotonic,
        no_engine_wait_s: float = 0.0,
    ) -> Router:
        return cls(
            {p.served_name: EnginePool.from_spec(p, metrics, clock, no_engine_wait_s) for p in spec.pools}
        )

    def pool(self, model: str) -> EnginePool:
        pool = self.pools.get(model)
        if pool is None:
            raise ModelNotFoundError(model)
        return pool

    def endpoints(self) -> list[Endpoint]:
        return [e for pool in self.pools.values() for e in pool.endpoints]

    def set_draining(self, url: str, draining: bool) -> list[Endpoint]:
        """Take the endpoints at ``url`` out of service (or back); returns them."""
        matched = [e for e in self.endpoints() if e.url == url.rstrip("/")]
        for endpoint in matched:
            endpoint.draining = draining
            if not draining:
                self.pool(endpoint.model).grant_waiting()  # its free slots go to whoever waits
        return matched
