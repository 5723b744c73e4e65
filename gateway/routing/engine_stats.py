"""What each engine says about its own load, scraped from its ``/metrics`` in the background.

vLLM exports ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc`` before v0.10). The engine sees every
gateway replica's requests, the gateway only its own: routing combines both
(``Endpoint.load``). A scrape that fails leaves the last values to age out (zeroed after
``STALE_AFTER`` missed rounds) — health is the HealthChecker's business, not this module's.

The same page carries the engine's token counters; each reading is handed to a listener (the
reconciler's ``EngineSampler``), which decides what to persist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from gateway.records import EngineCounters
from gateway.routing.endpoint import Endpoint
from gateway.routing.router import Router

logger = logging.getLogger(__name__)

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
STALE_AFTER = 3
# The token counters reconciliation reads (``gateway/reconcile``), in ``EngineCounters`` order.
COUNTERS = (
    "vllm:prompt_tokens_total",  # every prompt token, cached ones too, once per choice
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_cached_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prefix_cache_queries_total",
)
# The engine process's start: a new value is a restart (its counters start again from zero).
START_TIME = "process_start_time_seconds"
_SLOTS = {RUNNING: 0, WAITING: 1, KV_USAGE[0]: 2, KV_USAGE[1]: 3} | {
    name: 4 + i for i, name in enumerate(COUNTERS)
}

StatsListener = Callable[[str, "EngineStats"], None]


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # 0..1
    # None when the page has no token counters (not a vLLM engine, or an old one).
    counters: EngineCounters | None = None
    incarnation: float = 0.0  # ``process_start_time_seconds``; 0 when not exported


def parse_engine_stats(text: str) -> EngineStats:
    """Gauges and token counters from Prometheus text, summed over an engine's data-parallel ranks
    and label sets (the KV-cache usage is the fullest rank's). Line-based: vLLM's page is mostly
    histograms, whose lines are passed over by their name alone."""
    sums = [0.0] * (4 + len(COUNTERS))
    seen = [False] * len(sums)
    incarnation = 0.0
    for line in text.splitlines():
        if not line.startswith(("vllm:", START_TIME)):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        slot = _SLOTS.get(name)
        if slot is None and name != START_TIME:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if slot is None:
            incarnation = value
        elif slot in (2, 3):
            sums[slot] = max(sums[slot], value)
        else:
            sums[slot] += value
        if slot is not None:
            seen[slot] = True
    kv = sums[2] if seen[2] else sums[3]
    counters = EngineCounters(*(int(v) for v in sums[4:])) if any(seen[4:6]) else None
    return EngineStats(int(sums[0]), int(sums[1]), kv, counters, incarnation)


class EngineStatsScraper:
    """Keeps ``Endpoint.engine_*`` current for every endpoint of every pool."""

    def __init__(
        self,
        router: Router,
        session: aiohttp.ClientSession,
        interval_s: float,
        timeout_s: float,
        listener: StatsListener | None = None,
    ) -> None:
        self._router = router
        self._listener = listener  # told every reading (the reconciler's sampler)
        self._session = session
        self.interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._misses: dict[str, int] = {}

    async def scrape_all(self) -> None:
        """One round (``gateway.supervisor`` runs it every ``interval_s``)."""
        await asyncio.gather(*(self._scrape(e) for e in self._router.endpoints()))

    async def _scrape(self, endpoint: Endpoint) -> None:
        try:
            async with self._session.get(f"{endpoint.url}/metrics", timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                stats = parse_engine_stats(await resp.text())
        except (TimeoutError, aiohttp.ClientError, OSError):
            misses = self._misses[endpoint.url] = self._misses.get(endpoint.url, 0) + 1
            if misses >= STALE_AFTER:
                endpoint.engine_running = endpoint.engine_waiting = 0
                endpoint.kv_usage = 0.0
            return
        self._misses.pop(endpoint.url, None)
        endpoint.inflight_at_scrape = endpoint.inflight
        endpoint.engine_running, endpoint.engine_waiting = stats.running, stats.waiting
        endpoint.kv_usage = stats.kv_usage
        if self._listener is not None:
            self._listener(endpoint.url, stats)
