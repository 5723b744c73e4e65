"""Usage events for billing systems: one CloudEvents 1.0 event per ledger row.

The event's ``id`` is the request id, so a billing system that receives an event twice (a webhook
batch resent after a crash, a pull that overlaps) keeps it once. Events are structured-mode
CloudEvents JSON, which OpenMeter ingests as they are; README ("Usage events") maps them to Stripe
meter events. Token counts are integers and the cost an exact decimal string, as in the reports.

The cursor of the pull API is the ledger's ``seq`` written as a decimal string. Clients treat it as
opaque; it is stable (the same cursor always names the same place in the log).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from gateway.errors import InvalidRequestError
from gateway.money import format_amount
from gateway.records import Outcome
from gateway.store.events import UsageEntry, UsageEventLog
from gateway.utc import format_timestamp

REQUEST_EVENT = "gateway.usage.request"
ADJUSTMENT_EVENT = "gateway.usage.adjustment"  # tokens found by reconciliation; ``adjusts`` names the request
MAX_LIMIT = 1000
_MAX_CURSOR_DIGITS = 19  # a BIGINT


class UsageEventData(BaseModel):
    """What was used, by whom, at what price: the ledger row, ready to bill."""

    tenant_id: str
    tenant: str | None  # the tenant's name (None only if its row is gone)
    key_id: str
    model: str
    api: str
    outcome: str
    http_status: int
    service_tier: str | None
    choices: int
    prompt_tokens: int  # cached ones included
    cached_tokens: int
    completion_tokens: int
    cost: str  # exact decimal in ``currency``
    currency: str
    price_version: str | None
    started_at: str
    ended_at: str
    adjusts: str | None  # an adjustment's request id


class UsageEvent(BaseModel):
    """A CloudEvents 1.0 event in structured JSON mode."""

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    type: str
    subject: str
    time: str
    datacontenttype: Literal["application/json"] = "application/json"
    data: UsageEventData


class UsageEventPage(BaseModel):
    """``GET /admin/usage/events``: pass ``next_cursor`` as ``after`` to read on."""

    data: list[UsageEvent]
    next_cursor: str
    has_more: bool


def _time(ts: float) -> str:
    return format_timestamp(ts, timespec="milliseconds")


def usage_event(entry: UsageEntry, source: str, currency: str) -> UsageEvent:
    row = entry.record
    return UsageEvent(
        id=row.request_id,
        source=source,
        type=ADJUSTMENT_EVENT if row.outcome == Outcome.adjustment else REQUEST_EVENT,
        subject=row.tenant_id,
        time=_time(row.ended_at),
        data=UsageEventData(
            tenant_id=row.tenant_id,
            tenant=entry.tenant_name,
            key_id=row.key_id,
            model=row.model,
            api=row.api,
            outcome=row.outcome.value,
            http_status=row.http_status,
            service_tier=row.service_tier,
            choices=row.choices,
            prompt_tokens=row.prompt_tokens,
            cached_tokens=row.cached_tokens,
            completion_tokens=row.completion_tokens,
            cost=format_amount(row.cost_pico),
            currency=currency,
            price_version=row.price_version,
            started_at=_time(row.started_at),
            ended_at=_time(row.ended_at),
            adjusts=row.adjusts,
        ),
    )


def parse_cursor(value: str | None) -> int:
    """The pull API's ``after``: absent or empty is the beginning of the log."""
    if not value:
        return 0
    if not value.isascii() or not value.isdigit() or len(value) > _MAX_CURSOR_DIGITS:
        raise InvalidRequestError(
            f"{value!r} is not a cursor: pass the next_cursor of a previous page, or nothing to start.",
            param="after",
            code="invalid_cursor",
        )
    return int(value)


def format_cursor(seq: int) -> str:
    return str(seq)


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Events after a cursor, and the cursor after them (the same one when there are none)."""

    events: list[UsageEvent]
    next_seq: int
    has_more: bool
    oldest_ended_at: float | None  # of the first event (the outbox's lag)

    def page(self) -> UsageEventPage:
        return UsageEventPage(
            data=self.events, next_cursor=format_cursor(self.next_seq), has_more=self.has_more
        )


class UsageEventFeed:
    """Reads the ledger's log as usage events (the pull API and the webhook outbox share it)."""

    def __init__(self, log: UsageEventLog, source: str, currency: str) -> None:
        self._log = log
        self._source = source
        self._currency = currency

    async def read(self, after: int, limit: int, tenant_id: str | None = None) -> EventBatch:
        entries = await self._log.read(after, limit + 1, tenant_id)  # one more: is there more?
        taken = entries[:limit]
        return EventBatch(
            events=[usage_event(e, self._source, self._currency) for e in taken],
            next_seq=taken[-1].seq if taken else after,
            has_more=len(entries) > limit,
            oldest_ended_at=taken[0].record.ended_at if taken else None,
        )
