"""The ledger as an ordered log (``Store.events``), on every backend: stable order, resumable with
no gap or duplicate, outbox cursors that only move forward, one claim at a time."""

from __future__ import annotations

import asyncio
import random

from gateway.records import Outcome
from gateway.store import Store
from gateway.store.postgres import PostgresStore
from tests.api.store.test_contract import T0, row
from tests.support.postgres import require_postgres, temporary_schema


async def _ids_after(store: Store, after: int, page: int, tenant_id: str | None = None) -> list[str]:
    """Every request id after ``after``, read ``page`` rows at a time."""
    ids: list[str] = []
    while entries := await store.events.read(after, page, tenant_id):
        ids += [e.record.request_id for e in entries]
        after = entries[-1].seq
    return ids


async def test_rows_come_in_write_order_whatever_their_times(store: Store) -> None:
    tenant = await store.create_tenant("acme")
    key = await store.create_key("acme", "a" * 64, "sk-gw-a", None, None)
    # Written out of time order, and a batch out of request-id order: the log keeps write order.
    await store.insert_usage([row("r9", tenant.id, key.id, T0 + 50)])
    await store.insert_usage([row("r1", tenant.id, key.id, T0 + 10), row("r0", tenant.id, key.id, T0 + 90)])
    await store.insert_usage([row("r5", tenant.id, key.id, T0)])
    entries = await store.events.read(0, 10)
    ids = [e.record.request_id for e in entries]
    assert ids[0] == "r9" and ids[-1] == "r5" and sorted(ids[1:3]) == ["r0", "r1"]
    seqs = [e.seq for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert [e.tenant_name for e in entries] == ["acme"] * 4
    assert entries[0].record == row("r9", tenant.id, key.id, T0 + 50)
    assert await store.events.read(0, 10) == entries  # stable


async def test_reading_resumes_after_a_cursor_with_no_gap_or_duplicate(store: Store) -> None:
    tenant = await store.create_tenant("acme")
    key = await store.create_key("acme", "a" * 64, "sk-gw-a", None, None)
    written: list[str] = []
    taken: list[str] = []
    after = 0
    for batch in range(6):
        ids = [f"b{batch}-{i}" for i in range(batch + 1)]
        await store.insert_usage([row(i, tenant.id, key.id, T0 + batch) for i in ids])
        await store.insert_usage([row(ids[0], tenant.id, key.id, T0)])  # a duplicate adds nothing
        written += ids
        entries = await store.events.read(after, 4)  # a page may end mid-batch
        taken += [e.record.request_id for e in entries]
        after = entries[-1].seq
    taken += await _ids_after(store, after, 4)
    assert sorted(taken) == sorted(written) and len(taken) == len(set(taken))
    assert await store.events.read(after + 10_000, 5) == []


async def test_one_tenants_rows_carry_the_global_cursor(store: Store) -> None:
    a = await store.create_tenant("a")
    b = await store.create_tenant("b")
    ka = await store.create_key("a", "a" * 64, "sk-gw-a", None, None)
    kb = await store.create_key("b", "b" * 64, "sk-gw-b", None, None)
    await store.insert_usage([row(f"a{i}", a.id, ka.id, T0 + i) for i in range(3)])
    await store.insert_usage([row(f"b{i}", b.id, kb.id, T0 + i) for i in range(3)])
    await store.insert_usage([row("adj", a.id, ka.id, T0, outcome=Outcome.adjustment, adjusts="a1")])
    assert sorted(await _ids_after(store, 0, 2, a.id)) == ["a0", "a1", "a2", "adj"]
    assert sorted(await _ids_after(store, 0, 2, b.id)) == ["b0", "b1", "b2"]
    adjustment = (await store.events.read(0, 10, a.id))[-1]
    assert adjustment.record.outcome == Outcome.adjustment and adjustment.record.adjusts == "a1"
    # A row whose tenant row is missing still reads, without a name.
    await store.insert_usage([row("orphan", "ten_gone", "key_gone", T0)])
    assert (await store.events.read(adjustment.seq, 10))[-1].tenant_name is None


async def test_outbox_cursors_start_at_zero_and_only_move_forward(store: Store) -> None:
    log = store.events
    assert await log.cursor("webhook") == 0
    assert await log.advance("webhook", 5) == 5
    assert await log.advance("webhook", 3) == 5
    assert await log.advance("webhook", 9) == 9
    assert await log.cursor("webhook") == 9 and await log.cursor("other") == 0


async def test_a_claim_is_held_by_one_round_at_a_time(store: Store) -> None:
    log = store.events
    async with log.claim("webhook") as claim:
        assert claim is not None and claim.seq == 0
        async with log.claim("webhook") as second:
            assert second is None
        async with log.claim("other") as other:
            assert other is not None
        await claim.advance(7)
        await claim.advance(4)  # never back
        assert claim.seq == 7
    assert await log.cursor("webhook") == 7
    async with log.claim("webhook") as again:
        assert again is not None and again.seq == 7


async def test_a_claim_that_fails_keeps_its_cursor_where_it_was_on_postgres() -> None:
    require_postgres()
    async with temporary_schema() as url:
        store = PostgresStore(url)
        await store.open()
        try:
            await store.events.advance("webhook", 3)
            try:
                async with store.events.claim("webhook") as claim:
                    assert claim is not None
                    await claim.advance(10)
                    raise RuntimeError("the round failed after advancing")
            except RuntimeError:
                pass
            assert await store.events.cursor("webhook") == 3
        finally:
            await store.close()


async def test_replicas_claim_one_at_a_time_on_postgres() -> None:
    require_postgres()
    async with temporary_schema() as url:
        stores = [PostgresStore(url), PostgresStore(url)]
        for store in stores:
            await store.open()
        try:
            async with stores[0].events.claim("webhook") as held:
                assert held is not None
                async with stores[1].events.claim("webhook") as skipped:
                    assert skipped is None
                await held.advance(4)
            async with stores[1].events.claim("webhook") as next_holder:
                assert next_holder is not None and next_holder.seq == 4
        finally:
            for store in stores:
                await store.close()


async def _write(store: Store, tenant_id: str, key_id: str, writer: int, rng: random.Random) -> list[str]:
    ids: list[str] = []
    for batch in range(20):
        rows = [row(f"w{writer}-{batch}-{i}", tenant_id, key_id, T0) for i in range(rng.randint(1, 6))]
        await store.insert_usage(rows)
        ids += [r.request_id for r in rows]
        await asyncio.sleep(rng.random() / 500)
    return ids


async def test_concurrent_writers_never_make_a_reader_skip_a_row_on_postgres() -> None:
    """Four processes' worth of connections write batches while a reader pages through: what it
    reads, in order, is every row exactly once."""
    require_postgres()
    async with temporary_schema() as url:
        writers = [PostgresStore(url, pool_size=2) for _ in range(4)]
        reader = PostgresStore(url, pool_size=1)
        for store in [*writers, reader]:
            await store.open()
        try:
            tenant = await reader.create_tenant("acme")
            key = await reader.create_key("acme", "a" * 64, "sk-gw-a", None, None)
            rng = random.Random(17)
            tasks = [asyncio.create_task(_write(w, tenant.id, key.id, n, rng)) for n, w in enumerate(writers)]
            taken: list[str] = []
            after = 0
            while not all(t.done() for t in tasks):
                entries = await reader.events.read(after, 7)
                assert [e.seq for e in entries] == sorted(e.seq for e in entries)
                taken += [e.record.request_id for e in entries]
                after = entries[-1].seq if entries else after
                await asyncio.sleep(0)
            written = [i for t in tasks for i in t.result()]
            taken += await _ids_after(reader, after, 7)
            assert len(taken) == len(set(taken)) and sorted(taken) == sorted(written)
        finally:
            for store in [*writers, reader]:
                await store.close()
