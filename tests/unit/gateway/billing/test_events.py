"""Usage events: a ledger row as a CloudEvent, and the pull API's cursor."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.billing.events import UsageEventFeed, format_cursor, parse_cursor, usage_event
from gateway.errors import InvalidRequestError
from gateway.records import Outcome, UsageRecord
from gateway.store.events import UsageEntry
from tests.unit.gateway.billing.fakes import MemoryEventLog

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC).timestamp()


def record(request_id: str = "req_1", **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "tenant_id": "ten_1",
        "key_id": "key_1",
        "model": "m1",
        "api": "chat.completions",
        "started_at": T0,
        "ended_at": T0 + 1.25,
        "prompt_tokens": 100,
        "cached_tokens": 60,
        "completion_tokens": 7,
        "cost_pico": 123_456_789,
        "price_version": "m1@2026-01-01",
        "choices": 2,
        "service_tier": "flex",
    }
    values.update(fields)
    return UsageRecord(request_id, **values)  # type: ignore[arg-type]


def test_a_ledger_row_becomes_a_cloudevent_with_the_request_id_as_its_id() -> None:
    event = usage_event(UsageEntry(5, record(), "acme"), source="gw-eu", currency="EUR")
    assert event.model_dump(mode="json") == {
        "specversion": "1.0",
        "id": "req_1",
        "source": "gw-eu",
        "type": "gateway.usage.request",
        "subject": "ten_1",
        "time": "2026-11-01T12:00:01.250Z",
        "datacontenttype": "application/json",
        "data": {
            "tenant_id": "ten_1",
            "tenant": "acme",
            "key_id": "key_1",
            "model": "m1",
            "api": "chat.completions",
            "outcome": "ok",
            "http_status": 200,
            "service_tier": "flex",
            "choices": 2,
            "prompt_tokens": 100,
            "cached_tokens": 60,
            "completion_tokens": 7,
            "cost": "0.000123456789",
            "currency": "EUR",
            "price_version": "m1@2026-01-01",
            "started_at": "2026-11-01T12:00:00.000Z",
            "ended_at": "2026-11-01T12:00:01.250Z",
            "adjusts": None,
        },
    }


def test_an_adjustment_row_has_its_own_type_and_names_the_request() -> None:
    row = record("adj_1", outcome=Outcome.adjustment, adjusts="req_1", prompt_tokens=0, completion_tokens=3)
    event = usage_event(UsageEntry(9, row, None), source="gw", currency="USD")
    assert (event.id, event.type, event.data.adjusts, event.data.tenant) == (
        "adj_1",
        "gateway.usage.adjustment",
        "req_1",
        None,
    )


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "١٢", "9" * 20, " 1"])
def test_a_bad_cursor_is_a_400_naming_after(value: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_cursor(value)
    assert caught.value.param == "after" and caught.value.code == "invalid_cursor"


def test_cursors_round_trip_and_nothing_is_the_start() -> None:
    assert parse_cursor(None) == 0 and parse_cursor("") == 0
    assert parse_cursor(format_cursor(1234)) == 1234


async def test_the_feed_pages_and_says_whether_there_is_more() -> None:
    log = MemoryEventLog([record(f"r{i}") for i in range(5)])
    feed = UsageEventFeed(log, "gw", "USD")
    first = await feed.read(0, 2)
    assert [e.id for e in first.events] == ["r0", "r1"] and first.has_more and first.next_seq == 2
    last = await feed.read(4, 2)
    assert [e.id for e in last.events] == ["r4"] and not last.has_more and last.next_seq == 5
    empty = await feed.read(5, 2)
    assert empty.events == [] and empty.next_seq == 5 and empty.oldest_ended_at is None
    assert empty.page().model_dump() == {"data": [], "next_cursor": "5", "has_more": False}
