"""The ledger's backlog while the database refuses writes: rows kept, counted, aged (fake clock)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gateway.metering.journal import Journal
from gateway.metering.meter import LedgerWriter
from gateway.metrics import GatewayMetrics
from gateway.records import UsageRecord
from tests.support.clock import FakeClock


class FlakyLedger:
    """A store's ``insert_usage`` that fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.rows: list[UsageRecord] = []

    async def insert_usage(self, records: Sequence[UsageRecord]) -> int:
        if self.down:
            raise ConnectionError("database unreachable")
        self.rows.extend(records)
        return len(records)


def row(request_id: str, ended_at: float) -> UsageRecord:
    return UsageRecord(request_id, "ten_1", "key_1", "m", "chat.completions", ended_at - 1, ended_at=ended_at)


def gauge(metrics: GatewayMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


async def test_rows_waiting_for_the_database_are_a_backlog_with_an_age(tmp_path: Path) -> None:
    clock, metrics, store = FakeClock(1000.0), GatewayMetrics(), FlakyLedger()
    journal = Journal(tmp_path / "journal")
    journal.open()
    writer = LedgerWriter(store, journal, metrics, 0.001, 100, clock=clock)  # type: ignore[arg-type]
    try:
        assert gauge(metrics, "gateway_ledger_backlog_rows") == 0
        assert gauge(metrics, "gateway_ledger_backlog_age_seconds") == 0
        store.down = True
        for i, ended_at in enumerate((990.0, 995.0)):
            record = row(f"req_{i}", ended_at)
            journal.finished(record)
            writer.submit(record)
        assert not writer.spooling  # queued for the next flush: not yet a backlog
        await writer.flush()
        assert writer.spooling and writer.backlog_rows == 2
        assert gauge(metrics, "gateway_ledger_backlog_rows") == 2
        assert gauge(metrics, "gateway_ledger_backlog_age_seconds") == 10.0  # the oldest row's
        clock.advance(5)
        assert gauge(metrics, "gateway_ledger_backlog_age_seconds") == 15.0
        store.down = False
        await writer.flush()
        assert not writer.spooling and [r.request_id for r in store.rows] == ["req_0", "req_1"]
        assert gauge(metrics, "gateway_ledger_backlog_rows") == 0
        assert gauge(metrics, "gateway_ledger_backlog_age_seconds") == 0
    finally:
        journal.close()
