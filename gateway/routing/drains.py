"""Operator drains that every gateway replica obeys.

An operator drains an engine through one replica's admin API (``POST /admin/engines/drain``), but a
load balancer spreads requests over every replica: a drain that only one of N replicas knows about
keeps (N-1)/N of the traffic flowing. So where Redis is configured (``GATEWAY_REDIS_URL``, which
``GATEWAY_REPLICATED`` requires) the drained engine URLs live in one Redis hash; every replica reads
it every ``interval_s`` and applies it to its router, so a drain or resume set through any replica
holds on all of them within that bound. Without Redis, drains belong to this process alone.

Only what the board says is applied: drains made in-process (the launcher's ``RouterDrain`` in
``gateway up``) are left alone unless the board itself resumes that URL. Passive ejection stays per
replica on purpose: each replica judges the failures it sees itself, as Envoy's outlier detection does.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway.errors import SharedStateUnavailableError
from gateway.routing.endpoint import Endpoint
from gateway.routing.router import Router

logger = logging.getLogger(__name__)


class DrainBoard(Protocol):
    """Where the drained engine URLs are kept."""

    async def put(self, url: str, draining: bool) -> None: ...

    async def read(self) -> set[str]: ...

    async def close(self) -> None: ...


class LocalDrainBoard:
    """This process's drains only (no Redis)."""

    def __init__(self) -> None:
        self._drained: set[str] = set()

    async def put(self, url: str, draining: bool) -> None:
        (self._drained.add if draining else self._drained.discard)(url)

    async def read(self) -> set[str]:
        return set(self._drained)

    async def close(self) -> None:
        return None


class RedisDrainBoard:
    """One Redis hash, engine URL → when it was drained, shared by every replica."""

    def __init__(self, client: Redis, key: str) -> None:
        self._client = client
        self._key = key

    @classmethod
    def from_url(cls, url: str, key: str, timeout_s: float = 0.5) -> RedisDrainBoard:
        client = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
        )
        return cls(client, key)

    async def put(self, url: str, draining: bool) -> None:
        if draining:
            await self._client.hset(self._key, url, str(time.time()))
        else:
            await self._client.hdel(self._key, url)

    async def read(self) -> set[str]:
        urls = await self._client.hkeys(self._key)
        return {url.decode() if isinstance(url, bytes) else url for url in urls}

    async def close(self) -> None:
        await self._client.aclose()


def create_drain_board(redis_url: str | None, prefix: str = "gw:") -> DrainBoard:
    return RedisDrainBoard.from_url(redis_url, prefix + "engines:drained") if redis_url else LocalDrainBoard()


class Drains:
    """Applies the board to this replica's router, now for its own admin calls and every
    ``interval_s`` for everyone else's."""

    def __init__(self, board: DrainBoard, router: Router, interval_s: float) -> None:
        self._board = board
        self._router = router
        self.interval_s = interval_s
        self._applied: set[str] = set()  # what the board said at the last read
        self._failing = False

    async def set(self, url: str, draining: bool) -> list[Endpoint]:
        """Drain (or resume) ``url`` on every replica; [] when this replica routes to no such engine."""
        url = url.rstrip("/")
        if not any(e.url == url for e in self._router.endpoints()):
            return []
        try:
            await self._board.put(url, draining)
        except (RedisError, OSError) as exc:
            raise SharedStateUnavailableError(
                f"The shared engine state is unreachable, so `{url}` was not changed on any replica."
            ) from exc
        (self._applied.add if draining else self._applied.discard)(url)
        return self._router.set_draining(url, draining)

    async def sync(self) -> None:
        """Read the board and apply what changed; an unreachable board changes nothing. The
        background round (``gateway.supervisor`` runs it every ``interval_s``)."""
        try:
            drained = await self._board.read()
        except (RedisError, OSError) as exc:
            if not self._failing:
                logger.warning("cannot read the shared engine drains (%s); keeping the last ones", exc)
            self._failing = True
            return
        if self._failing:
            logger.info("shared engine drains readable again")
        self._failing = False
        for url in drained:
            # Level-triggered: an engine discovered after its drain is drained too.
            if any(not e.draining for e in self._router.endpoints() if e.url == url):
                logger.info("engine %s drained (shared)", url)
                self._router.set_draining(url, True)
        for url in self._applied - drained:
            logger.info("engine %s resumed (shared)", url)
            self._router.set_draining(url, False)
        self._applied = drained

    async def close(self) -> None:
        await self._board.close()
