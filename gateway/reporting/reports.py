"""Usage reports from the ledger: totals per UTC day, model or key, and their renderings.

The admin API, the tenant's ``/v1/usage`` and ``gateway usage report`` all build the report here,
so they return the same numbers. Money stays exact: the store sums integer picodollars,
``to_decimal`` converts them and ``format_cost`` prints all twelve decimals (a picodollar is the
ledger's unit, so no line is ever rounded and the lines always add up to the total).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

from gateway.errors import InvalidRequestError
from gateway.money import format_amount
from gateway.protocol import UsageLine, UsageReportResponse
from gateway.records import ApiKey, UsageGroup
from gateway.store import Store
from gateway.store.base import GroupBy
from gateway.tenancy.service import store_errors
from gateway.utc import DAY_S, day_of, midnight

COST_DECIMALS = 12
TOTAL = "total"
NO_MODEL = "(no model)"  # the model line of requests refused before their body named a served one
_TABLE_COLUMNS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens", "cost")
# A CSV is read by position too: columns added later go after the ones readers already know.
_CSV_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost")
_CSV_ADDED = ("cached_tokens",)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _day(value: str, param: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(f"'{value}' is not a date (YYYY-MM-DD).", param=param) from None


@dataclass(frozen=True, slots=True)
class ReportPeriod:
    """Whole UTC days with both ends included: ``--from 2026-11-01 --to 2026-11-30`` is November."""

    first: date
    last: date

    @classmethod
    def parse(cls, first: str, last: str) -> ReportPeriod:
        period = cls(_day(first, "from"), _day(last, "to"))
        if period.last < period.first:
            raise InvalidRequestError("'to' is before 'from'.", param="to")
        return period

    @classmethod
    def parse_or_month_to_date(cls, first: str | None, last: str | None, now: float) -> ReportPeriod:
        """Either end left out: ``to`` is today (UTC), ``from`` the first day of ``to``'s month."""
        today = datetime.fromtimestamp(now, UTC).date()
        last_day = _day(last, "to") if last is not None else today
        first_day = _day(first, "from") if first is not None else last_day.replace(day=1)
        return cls.parse(first_day.isoformat(), last_day.isoformat())

    @property
    def start(self) -> float:
        """00:00 UTC of the first day (included)."""
        return midnight(self.first)

    @property
    def end(self) -> float:
        """00:00 UTC of the day after the last (excluded)."""
        return midnight(self.last) + DAY_S  # as a date, the day after 9999-12-31 does not exist

    def days(self) -> list[str]:
        count = (self.last - self.first).days + 1
        return [(self.first + timedelta(days=i)).isoformat() for i in range(count)]


@dataclass(frozen=True, slots=True)
class UsageReport:
    """The ledger's totals per group over a period; ``tenant`` None means every tenant."""

    tenant: str | None
    period: ReportPeriod
    group_by: GroupBy
    currency: str
    lines: list[UsageGroup]

    @property
    def total(self) -> UsageGroup:
        return UsageGroup(
            TOTAL,
            requests=sum(g.requests for g in self.lines),
            prompt_tokens=sum(g.prompt_tokens for g in self.lines),
            completion_tokens=sum(g.completion_tokens for g in self.lines),
            cost_pico=sum(g.cost_pico for g in self.lines),
            cached_tokens=sum(g.cached_tokens for g in self.lines),
        )


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """Tokens and cost per (UTC day, model), for the chart; every day of the period is listed."""

    tenant: str | None
    period: ReportPeriod
    currency: str
    models: list[str]
    tokens: dict[tuple[str, str], int]
    cost_pico: dict[tuple[str, str], int]
    cached_tokens: dict[tuple[str, str], int] = field(default_factory=dict)  # of the prompt tokens


class UsageReporter:
    """Builds reports from the store; the tenant is named (admin, CLI) or comes from a key."""

    def __init__(self, store: Store, currency: str) -> None:
        self._store = store
        self._currency = currency

    async def _tenant_id(self, tenant: str | None) -> str | None:
        if tenant is None:
            return None
        with store_errors():  # a deleted tenant is found too: its usage is still billable
            return (await self._store.get_tenant(tenant)).id

    async def report(self, tenant: str | None, period: ReportPeriod, group_by: GroupBy) -> UsageReport:
        tenant_id = await self._tenant_id(tenant)
        groups = await self._store.usage_report(tenant_id, period.start, period.end, group_by)
        return UsageReport(tenant, period, group_by, self._currency, _named(groups))

    async def own_report(self, key: ApiKey, period: ReportPeriod, group_by: GroupBy) -> UsageReport:
        """The caller's own tenant, taken from its key: there is no way to name another."""
        groups = await self._store.usage_report(key.tenant_id, period.start, period.end, group_by)
        return UsageReport(key.tenant_name, period, group_by, self._currency, _named(groups))

    async def daily_by_model(self, tenant: str | None, period: ReportPeriod) -> DailyUsage:
        rows = await self._store.list_usage(await self._tenant_id(tenant), period.start, period.end)
        tokens: dict[tuple[str, str], int] = defaultdict(int)
        cost: dict[tuple[str, str], int] = defaultdict(int)
        cached: dict[tuple[str, str], int] = defaultdict(int)
        for row in rows:
            cell = (day_of(row.started_at), row.model or NO_MODEL)
            tokens[cell] += row.prompt_tokens + row.completion_tokens
            cost[cell] += row.cost_pico
            cached[cell] += row.cached_tokens
        models = sorted({model for _, model in tokens})
        return DailyUsage(tenant, period, self._currency, models, dict(tokens), dict(cost), dict(cached))


def _named(groups: list[UsageGroup]) -> list[UsageGroup]:
    """A request refused before its body named a served model (not JSON, too large, the client
    gone, a model not served: its name is not stored) has a ledger row with no model: its line
    says so instead of being blank."""
    return [replace(g, group=NO_MODEL) if not g.group else g for g in groups]


def _line(group: UsageGroup) -> UsageLine:
    return UsageLine(
        group=group.group,
        requests=group.requests,
        prompt_tokens=group.prompt_tokens,
        cached_tokens=group.cached_tokens,
        completion_tokens=group.completion_tokens,
        total_tokens=group.prompt_tokens + group.completion_tokens,
        cost=format_amount(group.cost_pico),
    )


def report_response(report: UsageReport) -> UsageReportResponse:
    """The report as the API's JSON (and ``--format json``)."""
    return UsageReportResponse.model_validate(
        {
            "tenant": report.tenant,
            "from": report.period.first.isoformat(),
            "to": report.period.last.isoformat(),
            "group_by": report.group_by,
            "currency": report.currency,
            "data": [_line(g) for g in report.lines],
            "total": _line(report.total),
        }
    )


def render_json(report: UsageReport) -> str:
    return report_response(report).model_dump_json(by_alias=True, indent=2)


def _cells(report: UsageReport, columns: tuple[str, ...]) -> list[list[str]]:
    """Header, one row per group, then the totals row; every cell a string."""
    rows = [[report.group_by, *columns]]
    for group in [*report.lines, report.total]:
        line = _line(group)
        rows.append([line.group, *(str(getattr(line, column)) for column in columns)])
    return rows


def csv_cell(value: str) -> str:
    """A cell a spreadsheet shows as text, never runs: one starting with ``= + - @``, a tab or a
    carriage return (a formula to Excel, LibreOffice and Sheets) gets a leading apostrophe, as
    OWASP advises. Groups can be names a tenant chose (a model it asked for, in older rows).

    A carriage return becomes a newline: the writer quotes a cell with a newline (our line
    terminator) but not one with a lone CR, which a spreadsheet would read as the end of the row.
    """
    cell = "'" + value if value.startswith(_FORMULA_STARTS) else value
    return cell.replace("\r\n", "\n").replace("\r", "\n") if "\r" in cell else cell


def render_csv(report: UsageReport) -> str:
    """The report's columns, then ``currency``, then the columns added since (``cached_tokens``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    known, added = _cells(report, _CSV_COLUMNS), _cells(report, _CSV_ADDED)
    writer.writerow([*known[0], "currency", *added[0][1:]])
    writer.writerows(
        [*map(csv_cell, row), csv_cell(report.currency), *map(csv_cell, more[1:])]
        for row, more in zip(known[1:], added[1:], strict=True)
    )
    return out.getvalue()


def render_table(report: UsageReport) -> str:
    """Aligned text for a terminal: groups left, numbers right, a rule above the totals."""
    rows = _cells(report, _TABLE_COLUMNS)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells)

    rule = "  ".join("-" * w for w in widths)
    who = report.tenant or "all tenants"
    title = f"usage of {who}, {report.period.first} to {report.period.last} (UTC), cost in {report.currency}"
    return "\n".join([title, fmt(rows[0]), rule, *map(fmt, rows[1:-1]), rule, fmt(rows[-1])]) + "\n"
