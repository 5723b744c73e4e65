"""The lifespan opens everything on one exit stack: a start that fails halfway closes exactly what
it had opened (the journal's lock too, so the next start on the same data directory works), and a
clean shutdown leaves no task behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

import gateway.app
from gateway.app import create_app
from gateway.config.pools import DeploymentSpec, PoolSpec
from gateway.routing.health import HealthChecker
from gateway.settings import Settings
from gateway.store.sqlite import SqliteStore

SPEC = DeploymentSpec(pools=[PoolSpec(served_name="m", endpoints=["http://127.0.0.1:9"])])


class RecordingStore(SqliteStore):
    """A SQLite store that says whether it was closed, and can fail its open after opening."""

    def __init__(self, path: Path, fail_open: bool = False) -> None:
        super().__init__(path)
        self.fail_open = fail_open
        self.closed = False

    async def open(self) -> None:
        await super().open()  # a connection and a thread taken: only ``close`` gives them back
        if self.fail_open:
            raise RuntimeError("migration failed")

    async def close(self) -> None:
        self.closed = True
        await super().close()


def settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'gateway.db'}", data_dir=tmp_path)


async def start_and_stop(tmp_path: Path) -> RecordingStore:
    """A normal start and shutdown on ``tmp_path``: only possible once its journal is unlocked."""
    store = RecordingStore(tmp_path / "gateway.db")
    app = create_app(settings(tmp_path), SPEC, store)
    async with app.router.lifespan_context(app):
        assert app.state.gateway.supervisor.critical_down() == []
    return store


def others(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()}


async def test_a_store_that_fails_to_open_is_closed_and_the_journal_unlocked(tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    broken = RecordingStore(tmp_path / "gateway.db", fail_open=True)
    app = create_app(settings(tmp_path), SPEC, broken)
    with pytest.raises(RuntimeError, match="migration failed"):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started on a store that failed to open")
    assert broken.closed
    assert (await start_and_stop(tmp_path)).closed
    assert others(before) == set()


async def test_a_failed_first_health_check_closes_everything_opened_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions: list[aiohttp.ClientSession] = []
    create_session = gateway.app.create_session

    def recorded_session(keepalive_timeout_s: float | None = 4.0) -> aiohttp.ClientSession:
        sessions.append(create_session(keepalive_timeout_s))
        return sessions[-1]

    async def check_all(self: HealthChecker) -> None:
        raise RuntimeError("health check broke")

    before = asyncio.all_tasks()
    monkeypatch.setattr(gateway.app, "create_session", recorded_session)
    with monkeypatch.context() as patch:
        patch.setattr(HealthChecker, "check_all", check_all)
        store = RecordingStore(tmp_path / "gateway.db")
        app = create_app(settings(tmp_path), SPEC, store)
        with pytest.raises(RuntimeError, match="health check broke"):
            async with app.router.lifespan_context(app):
                pytest.fail("the app started without its first health check")
    assert store.closed and sessions[0].closed
    assert app.state.gateway.supervisor.critical_down() == []  # never started
    assert (await start_and_stop(tmp_path)).closed and sessions[1].closed
    assert others(before) == set()


async def test_shutdown_stops_every_background_task(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path), SPEC, RecordingStore(tmp_path / "gateway.db"))
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0)
        runners = {t for t in asyncio.all_tasks() if t.get_name().startswith("supervised:")}
        names = sorted(t.get_name().removeprefix("supervised:") for t in runners)
        assert names == [
            "budgets",
            "drains",
            "engine-stats",
            "health",
            "ledger",
            "reconcile",
            "reconcile-samples",
        ]  # no discovery here
    assert all(t.done() for t in runners)
