"""The reconcile report: per engine and UTC hour, the engine's counters against the ledger.

``gateway usage reconcile`` and ``GET /admin/usage/reconcile`` both build it here. Prompt tokens
are in the engine's units: vLLM counts a prompt once per choice, so each ledger row's prompt
tokens (billed once, as OpenAI bills them) count ``choices`` times. An hour's difference can show
a spill of a request running across the hour's end (the engine counts tokens as it processes
them, the ledger when the request ends) that the next hour cancels; the periods between the
engine's quiet points, which settlement adjusts, are exact.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from gateway.errors import InvalidRequestError
from gateway.store import Store
from gateway.store.counters import HOUR_S
from gateway.store.settlement import ReconcileHour
from gateway.utc import format_timestamp, midnight, parse_timestamp

NOTES = [
    "Prompt tokens are in the engine's units: vLLM counts a prompt once per choice, so the ledger's "
    "prompt tokens (billed once, as OpenAI does) are multiplied by the request's n (choices).",
    "difference = engine - ledger (adjustment rows excluded); unexplained = difference - adjustments.",
    "An hour can show a +/- spill for a request running across its end (the engine counts tokens as "
    "it processes them, the ledger when the request ends); the next hour cancels it. The periods "
    "between quiet points of an engine, which settlement adjusts, are exact.",
    "resets: engine restarts; tokens an engine counted after its last reading before a restart are "
    "lost with it, and such a period is reported but not adjusted.",
]


class ReconcileLine(BaseModel):
    """One engine's hour (``hour`` null: the engine's total; ``engine`` "all": the grand total)."""

    engine: str
    hour: str | None
    engine_prompt_tokens: int
    engine_cached_tokens: int
    engine_generation_tokens: int
    ledger_prompt_tokens: int  # times choices
    ledger_cached_tokens: int
    ledger_completion_tokens: int
    prompt_difference: int
    cached_difference: int
    completion_difference: int
    adjusted_prompt_tokens: int  # times choices
    adjusted_completion_tokens: int
    unexplained_prompt_tokens: int
    unexplained_completion_tokens: int
    resets: int


class ReconcileReportResponse(BaseModel):
    object: Literal["reconcile.report"] = "reconcile.report"
    from_: str = Field(alias="from")  # the first hour, included
    to: str  # the end of the last hour, excluded
    notes: list[str] = NOTES
    data: list[ReconcileLine]
    engines: list[ReconcileLine]
    total: ReconcileLine


def _instant(value: str, param: str, day_end: bool) -> float:
    """An ISO date or date-time (UTC unless it names a zone); a date ``to`` includes its day."""
    if day_end and len(value) == 10:
        try:
            return midnight(date.fromisoformat(value) + timedelta(days=1))
        except ValueError:
            pass  # parse_timestamp words the error
    return parse_timestamp(value, param)


def report_window(first: str, last: str) -> tuple[float, float]:
    """Whole UTC hours from ``first`` to ``last`` (dates include the ``to`` day, like usage reports)."""
    start = _instant(first, "from", day_end=False) // HOUR_S * HOUR_S
    end = -(-_instant(last, "to", day_end=True) // HOUR_S) * HOUR_S
    if end <= start:
        raise InvalidRequestError("'to' is not after 'from'.", param="to")
    return start, end


def _line(engine: str, hour: str | None, hours: list[ReconcileHour]) -> ReconcileLine:
    prompt = sum(h.engine_prompt_tokens for h in hours)
    cached = sum(h.engine_cached_tokens for h in hours)
    generation = sum(h.engine_generation_tokens for h in hours)
    ledger_prompt = sum(h.ledger.prompt_tokens for h in hours)
    ledger_cached = sum(h.ledger.cached_tokens for h in hours)
    ledger_completion = sum(h.ledger.completion_tokens for h in hours)
    adjusted_prompt = sum(h.adjusted.prompt_tokens for h in hours)
    adjusted_completion = sum(h.adjusted.completion_tokens for h in hours)
    return ReconcileLine(
        engine=engine,
        hour=hour,
        engine_prompt_tokens=prompt,
        engine_cached_tokens=cached,
        engine_generation_tokens=generation,
        ledger_prompt_tokens=ledger_prompt,
        ledger_cached_tokens=ledger_cached,
        ledger_completion_tokens=ledger_completion,
        prompt_difference=prompt - ledger_prompt,
        cached_difference=cached - ledger_cached,
        completion_difference=generation - ledger_completion,
        adjusted_prompt_tokens=adjusted_prompt,
        adjusted_completion_tokens=adjusted_completion,
        unexplained_prompt_tokens=prompt - ledger_prompt - adjusted_prompt,
        unexplained_completion_tokens=generation - ledger_completion - adjusted_completion,
        resets=sum(h.resets for h in hours),
    )


async def reconcile_report(store: Store, first: str, last: str) -> ReconcileReportResponse:
    """The report for ``from``/``to`` as given (raises ``InvalidRequestError`` for bad ones)."""
    start, end = report_window(first, last)
    hours = await store.reconcile_hours(start, end)
    engines = sorted({h.engine for h in hours})
    return ReconcileReportResponse.model_validate(
        {
            "from": format_timestamp(start),
            "to": format_timestamp(end),
            "data": [_line(h.engine, format_timestamp(h.hour), [h]) for h in hours],
            "engines": [_line(e, None, [h for h in hours if h.engine == e]) for e in engines],
            "total": _line("all", None, hours),
        }
    )


_TABLE_COLUMNS = (
    ("prompt", "engine_prompt_tokens"),
    ("ledger*n", "ledger_prompt_tokens"),
    ("adj*n", "adjusted_prompt_tokens"),
    ("left", "unexplained_prompt_tokens"),
    ("generated", "engine_generation_tokens"),
    ("ledger", "ledger_completion_tokens"),
    ("adj", "adjusted_completion_tokens"),
    ("left", "unexplained_completion_tokens"),
    ("cached", "engine_cached_tokens"),
    ("ledger", "ledger_cached_tokens"),
    ("resets", "resets"),
)


def render_reconcile_table(report: ReconcileReportResponse) -> str:
    """Aligned text: one line per engine and hour, each engine's total, the grand total, notes."""
    header = ["engine", "hour (UTC)", *(title for title, _ in _TABLE_COLUMNS)]
    lines = [*report.data, *report.engines, report.total]
    rows = [
        [line.engine, line.hour or "total", *(str(getattr(line, field)) for _, field in _TABLE_COLUMNS)]
        for line in lines
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        return "  ".join(cells + [c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)])

    rule = "  ".join("-" * w for w in widths)
    body = [fmt(r) for r in rows]
    split = len(report.data)
    title = f"engine counters against the ledger, {report.from_} to {report.to}"
    notes = ["", *(f"- {note}" for note in report.notes)]
    return "\n".join([title, fmt(header), rule, *body[:split], rule, *body[split:], *notes]) + "\n"
