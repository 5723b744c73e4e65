"""Several processes on one SQLite file, as ``gateway serve --workers`` runs them: each opens (and
migrates) the file at the same moment, writes ledger batches at once, and claims the outbox."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from pathlib import Path

from gateway.records import UsageRecord
from gateway.store.sqlite import SqliteStore

PROCESSES = 4
BATCHES = 40
ROWS = 10


def _write(path: Path, writer: int, start: multiprocessing.synchronize.Event) -> None:
    async def main() -> None:
        start.wait(10)  # every process opens the new file, and migrates it, at once
        store = SqliteStore(path)
        await store.open()
        try:
            for batch in range(BATCHES):
                rows = [
                    UsageRecord(f"w{writer}-{batch:03d}-{i}", "ten", "key", "m", "chat.completions", 1.0)
                    for i in range(ROWS)
                ]
                assert await store.insert_usage(rows) == ROWS
        finally:
            await store.close()

    asyncio.run(main())


def test_concurrent_writer_processes_get_unique_ordered_seqs(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Event()
    writers = [spawn.Process(target=_write, args=(path, w, start)) for w in range(PROCESSES)]
    for process in writers:
        process.start()
    start.set()
    for process in writers:
        process.join(60)
    assert [p.exitcode for p in writers] == [0] * PROCESSES
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT request_id, seq FROM usage_ledger ORDER BY seq").fetchall()
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,), (2,), (3,), (4,)]
    total = PROCESSES * BATCHES * ROWS
    assert [seq for _, seq in rows] == list(range(1, total + 1))  # every row, no gap, no repeat
    for writer in range(PROCESSES):  # each process's rows in the order it wrote them
        own = [request_id for request_id, _ in rows if request_id.startswith(f"w{writer}-")]
        assert own == sorted(own) and len(own) == BATCHES * ROWS


async def test_one_outbox_claim_among_stores_on_one_file(tmp_path: Path) -> None:
    first, second = SqliteStore(tmp_path / "ledger.db"), SqliteStore(tmp_path / "ledger.db")
    await first.open()
    await second.open()
    try:
        async with first.events.claim("webhook") as held:
            assert held is not None
            async with second.events.claim("webhook") as refused, second.events.claim("other") as free:
                assert refused is None and free is not None
        async with second.events.claim("webhook") as taken_over:
            assert taken_over is not None
    finally:
        await first.close()
        await second.close()
