"""What each engine says about its own load, scraped from its ``/metrics`` in the background.

vLLM exports ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc`` before v0.10). The engine sees every
gateway replica's requests, the gateway only its own: routing combines both
(``Endpoint.load``). A scrape that fails leaves the last values to age out (zeroed after
``STALE_AFTER`` missed rounds) — health is the HealthChecker's business, not this module's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp

from gateway.routing.endpoint import Endpoint
from gateway.routing.router import Router

logger = logging.getLogger(__name__)

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
STALE_AFTER = 3


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # 0..1


def parse_engine_stats(text: str) -> EngineStats:
    """The three gauges from Prometheus text (summed over an engine's data-parallel ranks; the
    KV-cache usage is the fullest rank's). Line-based: vLLM's page is mostly histograms."""
    running = waiting = 0.0
    kv_new: float | None = None
    kv_old: float | None = None
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if name == RUNNING:
            running += value
        elif name == WAITING:
            waiting += value
        elif name == KV_USAGE[0]:
            kv_new = max(kv_new or 0.0, value)
        elif name == KV_USAGE[1]:
            kv_old = max(kv_old or 0.0, value)
    kv = kv_new if kv_new is not None else kv_old
    return EngineStats(int(running), int(waiting), float(kv or 0.0))


class EngineStatsScraper:
    """Keeps ``Endpoint.engine_*`` current for every endpoint of every pool."""

    def __init__(
        self, router: Router, session: aiohttp.ClientSession, interval_s: float, timeout_s: float
    ) -> None:
        self._router = router
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
