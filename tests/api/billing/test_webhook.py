"""The webhook outbox against a receiver on loopback that fails half the time (500s and dropped
connections): every event arrives, every signature verifies, and no event is sent again once a
batch holding it was acknowledged. On SQLite and PostgreSQL, with two replicas pushing at once, and
in the running app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from gateway.app import create_app
from gateway.billing.events import UsageEventFeed
from gateway.billing.outbox import RetryBackoff, WebhookOutbox
from gateway.billing.webhook import WebhookSender
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.postgres import PostgresStore
from gateway.tenancy.auth import generate_key
from tests.api.billing.receiver import FlakyReceiver, flaky_receiver
from tests.api.store.conftest import BACKENDS
from tests.api.store.test_contract import T0, row
from tests.conftest import SIM_MODEL, pool_spec
from tests.support.metrics import sample, total
from tests.support.postgres import require_postgres, temporary_schema

SECRET = b"whsec-test-0123456789abcdef"


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path) as backend:
        await backend.open()
        try:
            yield backend
        finally:
            await backend.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def outbox(store: Store, session: aiohttp.ClientSession, url: str, metrics: GatewayMetrics) -> WebhookOutbox:
    return WebhookOutbox(
        store.events,
        UsageEventFeed(store.events, "gw-test", "USD"),
        WebhookSender(session, url, SECRET, timeout_s=5),
        metrics,
        batch_size=7,
        interval_s=0.001,
        backoff=RetryBackoff(initial_s=0.001, max_s=0.004),
    )


async def write(store: Store, ids: list[str]) -> None:
    await store.insert_usage([row(i, "ten_1", "key_1", T0) for i in ids])


def assert_delivered_once(receiver: FlakyReceiver, written: list[str]) -> None:
    assert receiver.bad_requests == []
    assert receiver.resent_after_ack == []
    assert sorted(receiver.acknowledged) == sorted(written)
    assert len(receiver.acknowledged) == len(set(receiver.acknowledged))
    assert receiver.failures >= 5, "the receiver was meant to fail about half the time"


async def test_every_event_arrives_once_through_a_receiver_failing_half_the_time(
    store: Store, session: aiohttp.ClientSession
) -> None:
    metrics = GatewayMetrics()
    written: list[str] = []
    async with flaky_receiver(SECRET) as receiver:
        box = outbox(store, session, receiver.url, metrics)
        for burst in range(8):  # rows keep arriving while the outbox pushes
            ids = [f"r{burst}-{i}" for i in range(burst * 3 + 1)]
            await write(store, ids)
            written += ids
            for _ in range(3):
                await box.push_once()
        for _ in range(500):
            if len(receiver.acknowledged) >= len(written):
                break
            await box.push_once()
    assert_delivered_once(receiver, written)
    last = (await store.events.read(0, 1000))[-1].seq
    assert await store.events.cursor("webhook") == last
    text = metrics.render().decode()
    assert sample(text, "gateway_usage_events_sent_total") == len(written)
    assert total(text, "gateway_usage_webhook_failures_total") == receiver.failures


async def _push_until(box: WebhookOutbox, done: asyncio.Event) -> None:
    while not done.is_set():
        await box.push_round()


async def test_two_replicas_push_one_at_a_time_on_postgres(session: aiohttp.ClientSession) -> None:
    require_postgres()
    async with temporary_schema() as url, flaky_receiver(SECRET) as receiver:
        stores = [PostgresStore(url), PostgresStore(url)]
        for store in stores:
            await store.open()
        try:
            written = [f"r{i}" for i in range(60)]
            for start in range(0, 60, 9):
                await write(stores[0], written[start : start + 9])
            boxes = [outbox(s, session, receiver.url, GatewayMetrics()) for s in stores]
            done = asyncio.Event()
            pushers = [asyncio.create_task(_push_until(b, done)) for b in boxes]
            deadline = time.monotonic() + 60
            while len(receiver.acknowledged) < len(written) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            done.set()
            await asyncio.gather(*pushers)
        finally:
            for store in stores:
                await store.close()
    assert_delivered_once(receiver, written)


async def test_the_app_pushes_its_requests_usage_when_a_webhook_is_set(
    sim_engine: str, tmp_path: Path
) -> None:
    async with flaky_receiver(SECRET) as receiver:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'g.db'}",
            data_dir=tmp_path,
            usage_webhook_url=receiver.url,
            usage_webhook_secret=SECRET.decode(),
            usage_webhook_authorization="Bearer om_test",
            usage_webhook_batch_size=2,
            usage_webhook_interval_s=0.01,
            usage_webhook_max_backoff_s=0.02,
        )
        app = create_app(settings, pool_spec(sim_engine))
        async with app.router.lifespan_context(app):
            state = app.state.gateway
            await state.store.create_tenant("acme")
            new = generate_key()
            await state.store.create_key("acme", new.key_hash, new.prefix, None, None)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://g") as client:
                headers = {"Authorization": f"Bearer {new.secret}"}
                body = {"model": SIM_MODEL, "prompt": "hi", "max_tokens": 2}
                for _ in range(9):
                    assert (
                        await client.post("/v1/completions", json=body, headers=headers)
                    ).status_code == 200
                deadline = time.monotonic() + 30
                while len(receiver.acknowledged) < 9 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                metrics = (await client.get("/metrics")).text
            written = [r.request_id for r in await state.store.list_usage()]
    assert_delivered_once(receiver, written)
    assert sample(metrics, "gateway_usage_events_sent_total") == 9
    assert receiver.authorizations == {"Bearer om_test"}
    assert sample(metrics, "gateway_background_task_restarts_total", task="usage-webhook") == 0
