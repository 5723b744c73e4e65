"""``GET /v1/usage``: a tenant reads its own usage with its own key; the report helpers the admin
API shares."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from gateway.api.deps import KeyDep, ReporterDep
from gateway.api.docs import errors
from gateway.errors import InvalidRequestError
from gateway.protocol import UsageReportResponse
from gateway.reporting.reports import ReportPeriod, UsageReport, render_csv, report_response
from gateway.store.base import GroupBy

router = APIRouter(prefix="/v1")

ReportFormat = Literal["json", "csv"]
# A report is JSON, or CSV with ``format=csv``.
REPORT: dict[int | str, dict[str, Any]] = {
    200: {"model": UsageReportResponse, "content": {"text/csv": {"schema": {"type": "string"}}}}
}


_DAY = {"format": "date"}  # YYYY-MM-DD; parsed (and refused with OpenAI's 400) by ReportPeriod


async def report_period(
    from_: Annotated[str | None, Query(alias="from", json_schema_extra=_DAY)] = None,
    to: Annotated[str | None, Query(json_schema_extra=_DAY)] = None,
) -> ReportPeriod:
    """``from`` and ``to`` are UTC days, both included; by default the month to date."""
    return ReportPeriod.parse_or_month_to_date(from_, to, time.time())


PeriodDep = Annotated[ReportPeriod, Depends(report_period)]


def report_reply(report: UsageReport, fmt: ReportFormat) -> Response:
    if fmt == "csv":
        return Response(render_csv(report), media_type="text/csv; charset=utf-8")
    return JSONResponse(report_response(report).model_dump(by_alias=True))


@router.get("/usage", responses=REPORT | errors(400, 401, 503))
async def own_usage(
    request: Request,
    key: KeyDep,
    reporter: ReporterDep,
    period: PeriodDep,
    group_by: GroupBy = "day",
    format: ReportFormat = "json",
) -> Response:
    """The caller's tenant only. Naming a tenant is refused rather than ignored, so that nobody
    mistakes the answer for another tenant's usage."""
    if "tenant" in request.query_params:
        raise InvalidRequestError(
            "This route reports the usage of the key's own tenant; it takes no tenant parameter.",
            param="tenant",
            code="unknown_parameter",
        )
    return report_reply(await reporter.own_report(key, period, group_by), format)
