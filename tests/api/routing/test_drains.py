"""Operator drains shared through the real Redis: every replica's router follows the board."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.config.pools import PoolSpec
from gateway.errors import SharedStateUnavailableError
from gateway.routing.drains import Drains, LocalDrainBoard, RedisDrainBoard
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from tests.support.processes import free_port
from tests.support.redis import redis_url, require_redis, temporary_prefix

URLS = ["http://e0", "http://e1"]


def router(urls: list[str] = URLS) -> Router:
    return Router({"m": EnginePool.from_spec(PoolSpec(served_name="m", endpoints=urls))})


def draining(router: Router) -> dict[str, bool]:
    return {e.url: e.draining for e in router.endpoints()}


@pytest.fixture
async def board_key() -> AsyncIterator[str]:
    require_redis()
    async with temporary_prefix("drains") as prefix:
        yield prefix + "engines:drained"


async def test_a_drain_through_one_replica_reaches_the_others_and_so_does_the_resume(board_key: str) -> None:
    routers = [router(), router(), router(["http://e1"])]  # the third was never told about e0
    replicas = [Drains(RedisDrainBoard.from_url(redis_url(), board_key), r, 1.0) for r in routers]
    try:
        assert [e.url for e in await replicas[0].set("http://e0/", True)] == ["http://e0"]
        assert draining(routers[0]) == {"http://e0": True, "http://e1": False}  # at once where asked
        assert draining(routers[1]) == {"http://e0": False, "http://e1": False}  # others: at their sync
        for replica in replicas:
            await replica.sync()
        assert draining(routers[1]) == {"http://e0": True, "http://e1": False}
        assert draining(routers[2]) == {"http://e1": False}

        # An engine that appears later (discovery) under a drained URL is drained at the next sync.
        routers[2].pools["m"].update_endpoints(["http://e0", "http://e1"])
        await replicas[2].sync()
        assert draining(routers[2]) == {"http://e0": True, "http://e1": False}

        # Resumed through another replica: everyone resumes.
        await replicas[1].set("http://e0", False)
        for replica in replicas:
            await replica.sync()
        assert all(not d for r in routers for d in draining(r).values())
    finally:
        for replica in replicas:
            await replica.close()


async def test_sync_leaves_drains_it_did_not_make_alone(board_key: str) -> None:
    mine, other = router(), router()
    a = Drains(RedisDrainBoard.from_url(redis_url(), board_key), mine, 1.0)
    b = Drains(RedisDrainBoard.from_url(redis_url(), board_key), other, 1.0)
    try:
        mine.set_draining("http://e1", True)  # the launcher drained it in-process before a restart
        await b.set("http://e0", True)
        await a.sync()
        assert draining(mine) == {"http://e0": True, "http://e1": True}
        await b.set("http://e0", False)
        await a.sync()
        assert draining(mine) == {"http://e0": False, "http://e1": True}  # the launcher's stays
    finally:
        await a.close()
        await b.close()


async def test_an_unknown_engine_is_not_put_on_the_board(board_key: str) -> None:
    board = RedisDrainBoard.from_url(redis_url(), board_key)
    try:
        assert await Drains(board, router(), 1.0).set("http://nowhere:1", True) == []
        assert await board.read() == set()
    finally:
        await board.close()


async def test_redis_down_refuses_the_change_everywhere_and_keeps_the_last_state() -> None:
    dead = RedisDrainBoard.from_url(f"redis://127.0.0.1:{free_port()}/0", "gw:engines:drained", timeout_s=0.2)
    routers = router()
    drains = Drains(dead, routers, 1.0)
    routers.set_draining("http://e0", True)
    try:
        with pytest.raises(SharedStateUnavailableError) as refused:
            await drains.set("http://e1", True)
        assert refused.value.status_code == 503
        await drains.sync()  # unreadable: nothing changes
        assert draining(routers) == {"http://e0": True, "http://e1": False}
    finally:
        await drains.close()


async def test_without_redis_drains_are_this_process_alone() -> None:
    routers = router()
    drains = Drains(LocalDrainBoard(), routers, 1.0)
    await drains.set("http://e0", True)
    await drains.sync()
    assert draining(routers) == {"http://e0": True, "http://e1": False}
    await drains.set("http://e0", False)
    await drains.sync()
    assert draining(routers) == {"http://e0": False, "http://e1": False}
