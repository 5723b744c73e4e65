"""Whoever routes to the engines, told about restarts; and what an engine says of itself
(``/health``, and ``/metrics``: is it busy)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

_BUSY_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting")


class DrainHook(Protocol):
    """Whoever routes to the engines: told before one is restarted on purpose and when it is back."""

    async def drain(self, url: str) -> None: ...

    async def resume(self, url: str) -> None: ...


class GatewayAdminDrain:
    """A drain hook for gateways in other processes, through their admin API
    (``POST /admin/engines/drain`` and ``/resume``). A gateway that cannot be told is logged and
    skipped: it still fails over when the engine stops."""

    def __init__(self, gateways: list[str], admin_token: str) -> None:
        self._gateways = [g.rstrip("/") for g in gateways]
        self._headers = {"Authorization": f"Bearer {admin_token}"}

    async def drain(self, url: str) -> None:
        await self._tell("drain", url)

    async def resume(self, url: str) -> None:
        await self._tell("resume", url)

    async def _tell(self, action: str, url: str) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for gateway in self._gateways:
                target = f"{gateway}/admin/engines/{action}"
                try:
                    async with session.post(target, json={"url": url}, headers=self._headers) as response:
                        if response.status != 200:
                            logger.warning(
                                "%s answered %s: %s", target, response.status, await response.text()
                            )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    logger.warning("could not reach %s: %s", target, exc)


async def wait_idle(url: str, timeout_s: float) -> bool:
    """Whether the engine reported no running or waiting request within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            try:
                async with session.get(f"{url}/metrics") as response:
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError):
                return True  # nothing to drain from an engine that does not answer
            busy = sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name in _BUSY_METRICS
            )
            if busy == 0:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)


async def healthy(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(f"{url}/health") as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
