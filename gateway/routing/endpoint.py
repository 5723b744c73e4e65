"""One engine as the gateway sees it: health, load, ejection and drain state."""

from __future__ import annotations

from dataclasses import dataclass

# A full KV cache weighs like this many queued requests in ``Endpoint.load``.
KV_WEIGHT = 4.0


@dataclass(eq=False, slots=True)
class Endpoint:
    """One engine (a vLLM OpenAI server) as the gateway sees it."""

    model: str
    url: str
    healthy: bool = True
    inflight: int = 0
    dedicated_to: str | None = None  # the only tenant that may use it; None: shared
    # The engine's own view (gateway.routing.engine_stats, scraped every second or so).
    engine_running: int = 0
    engine_waiting: int = 0
    kv_usage: float = 0.0
    inflight_at_scrape: int = 0  # ``inflight`` when those were read: our share of them
    # Passive ejection (gateway.routing.health.HealthChecker): failed requests in a row, when the cool-down
    # ends (monotonic; 0: not ejected), its length, and whether the half-open probe is out.
    failures: int = 0
    ejected_until: float = 0.0
    cooldown_s: float = 0.0
    probing: bool = False
    # Taken out of service on purpose (its engine is about to restart): requests in flight
    # finish, no new ones come.
    draining: bool = False

    def routable(self, now: float) -> bool:
        """Healthy, not draining and not ejected; an ejected endpoint past its cool-down takes
        one probe."""
        if not self.healthy or self.draining:
            return False
        return self.ejected_until == 0.0 or (now >= self.ejected_until and not self.probing)

    def load(self) -> float:
        """One load score: this gateway's requests in flight (live), plus what the engine had
        beyond ours at the last scrape (other replicas' requests), plus the KV cache's fill (a
        full cache makes vLLM queue or preempt). Taking the scraped total as it is would count
        our finished requests for up to a scrape interval and steer a burst onto one engine."""
        others = max(0, self.engine_running + self.engine_waiting - self.inflight_at_scrape)
        return self.inflight + others + KV_WEIGHT * self.kv_usage
