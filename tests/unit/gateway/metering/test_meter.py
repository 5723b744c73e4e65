"""Meter.finish prices a row with its cached tokens and counts them in Prometheus."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import cast

from prometheus_client import CollectorRegistry

from gateway.metering.journal import Journal
from gateway.metering.meter import LedgerWriter, Meter
from gateway.metering.pricing import Price, PriceBook
from gateway.metrics import GatewayMetrics
from gateway.records import UsageRecord
from gateway.store import Store
from tests.support.metrics import sample

# $1 per million prompt tokens (10^6 pico a token), so cached ones cost 10^5; $2 per million out.
PRICE = Price("m", 0.0, Decimal("1"), Decimal("2"))


def meter(tmp_path: Path, metrics: GatewayMetrics) -> Meter:
    journal = Journal(tmp_path)
    journal.open()
    # Rows are only queued here; nothing reaches the store in these tests.
    writer = LedgerWriter(cast(Store, None), journal, metrics, flush_interval_s=60.0, batch_size=100)
    return Meter(writer, journal, PriceBook([PRICE]), metrics, known_models={"m"})


def row(request_id: str, prompt: int, completion: int, cached: int) -> UsageRecord:
    return UsageRecord(
        request_id,
        "ten_1",
        "key_1",
        "m",
        "chat.completions",
        1.0,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
    )


def test_cached_prompt_tokens_are_priced_apart_and_counted_as_their_own_kind(tmp_path: Path) -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    first, second = row("req_1", 300, 10, 256), row("req_2", 40, 5, 0)
    for record in (first, second):
        meter(tmp_path / record.request_id, metrics).finish(record, "acme", duration_s=0.5)
    assert first.cost_pico == 44 * 10**6 + 256 * 10**5 + 10 * 2 * 10**6
    assert second.cost_pico == 40 * 10**6 + 5 * 2 * 10**6
    text = metrics.render().decode()
    labels = {"tenant": "acme", "model": "m"}
    assert sample(text, "gateway_tokens_total", **labels, kind="prompt") == 340  # cached included
    assert sample(text, "gateway_tokens_total", **labels, kind="cached_prompt") == 256
    assert sample(text, "gateway_tokens_total", **labels, kind="completion") == 15
    kinds = {s.labels["kind"] for family in metrics.tokens.collect() for s in family.samples}
    assert kinds == {"prompt", "cached_prompt", "completion"}  # a bounded label set
