"""The admin API (``/admin``): tenants, keys and usage reports, for the admin token only.

Routes are thin: ``TenancyService`` and ``UsageReporter`` (shared with the CLI) do the work; this
module converts their records into wire models, which never carry a key's secret or hash except
the secret of a key just created or rotated.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import HTMLResponse

from gateway.api.deps import EventFeedDep, ReporterDep, StateDep, TenancyDep, admin_caller
from gateway.api.docs import errors
from gateway.api.usage import REPORT, PeriodDep, ReportFormat, report_reply
from gateway.billing.events import MAX_LIMIT, UsageEventPage, parse_cursor
from gateway.errors import InvalidRequestError, ResourceNotFoundError
from gateway.limit_spec import LimitSpec
from gateway.protocol import (
    CreatedKey,
    EngineDrainRequest,
    EngineList,
    EngineObject,
    KeyCreateRequest,
    KeyList,
    KeyObject,
    KeyRotateRequest,
    KeyRotation,
    KeyUpdateRequest,
    LimitsObject,
    TenantCreateRequest,
    TenantList,
    TenantObject,
)
from gateway.reconcile.report import ReconcileReportResponse, reconcile_report
from gateway.records import ApiKey, Tenant, TenantStatus
from gateway.reporting.charts import render_usage_chart
from gateway.routing.endpoint import Endpoint
from gateway.store.base import UNSET, GroupBy, _Unset
from gateway.tenancy.service import IssuedKey
from gateway.utc import format_timestamp, parse_timestamp

_ADMIN_AUTH = {401: "No or a wrong admin token", 403: "A tenant key, or no admin token configured"}
router = APIRouter(
    prefix="/admin", dependencies=[Depends(admin_caller)], responses=errors(401, 403, described=_ADMIN_AUTH)
)
# What the routes that name a tenant, a key or an engine answer besides their 200.
_NOT_FOUND = errors(404, described={404: "No such tenant, key or engine"})
_CONFLICT = _NOT_FOUND | errors(409)
_INVALID = errors(400)
_HOUR = {"format": "date-time"}  # or a date (its 00:00 UTC), as ``parse_timestamp`` reads it


def limits_object(limits: LimitSpec | None) -> LimitsObject | None:
    return LimitsObject.from_spec(limits) if limits is not None else None


def tenant_object(tenant: Tenant) -> TenantObject:
    return TenantObject(
        id=tenant.id,
        name=tenant.name,
        status=tenant.status,
        created_at=format_timestamp(tenant.created_at),
        limits=limits_object(tenant.limits),
    )


def key_object(key: ApiKey) -> KeyObject:
    return KeyObject(
        id=key.id,
        tenant=key.tenant_name,
        prefix=key.prefix,
        models=sorted(key.models) if key.models is not None else None,
        expires_at=format_timestamp(key.expires_at) if key.expires_at is not None else None,
        revoked_at=format_timestamp(key.revoked_at) if key.revoked_at is not None else None,
        created_at=format_timestamp(key.created_at),
        limits=limits_object(key.limits),
    )


def created_key(issued: IssuedKey) -> CreatedKey:
    return CreatedKey(**key_object(issued.key).model_dump(), secret=issued.secret)


def _expiry(value: str | None) -> float | None:
    return parse_timestamp(value) if value is not None else None


# Tenants


@router.post("/tenants", status_code=201, responses=_INVALID | errors(409))
async def create_tenant(body: TenantCreateRequest, tenancy: TenancyDep) -> TenantObject:
    return tenant_object(await tenancy.create_tenant(body.name))


@router.get("/tenants")
async def list_tenants(tenancy: TenancyDep, include_deleted: bool = False) -> TenantList:
    return TenantList(data=[tenant_object(t) for t in await tenancy.list_tenants(include_deleted)])


@router.get("/tenants/{name}", responses=_NOT_FOUND)
async def get_tenant(name: str, tenancy: TenancyDep) -> TenantObject:
    return tenant_object(await tenancy.get_tenant(name))


@router.post("/tenants/{name}/suspend", responses=_CONFLICT)
async def suspend_tenant(name: str, tenancy: TenancyDep) -> TenantObject:
    return tenant_object(await tenancy.set_tenant_status(name, TenantStatus.suspended))


@router.post("/tenants/{name}/activate", responses=_CONFLICT)
async def activate_tenant(name: str, tenancy: TenancyDep) -> TenantObject:
    return tenant_object(await tenancy.set_tenant_status(name, TenantStatus.active))


@router.delete("/tenants/{name}", responses=_CONFLICT)
async def delete_tenant(name: str, tenancy: TenancyDep) -> TenantObject:
    """Soft delete: the tenant is kept (for billing) with status ``deleted``; its keys are revoked."""
    return tenant_object(await tenancy.set_tenant_status(name, TenantStatus.deleted))


@router.put("/tenants/{name}/limits", responses=_CONFLICT)
async def set_tenant_limits(name: str, body: LimitsObject, tenancy: TenancyDep) -> TenantObject:
    """Replace the tenant's limits (fields left out or null: unlimited, also over the defaults)."""
    return tenant_object(await tenancy.set_tenant_limits(name, body.to_spec()))


@router.delete("/tenants/{name}/limits", responses=_CONFLICT)
async def clear_tenant_limits(name: str, tenancy: TenancyDep) -> TenantObject:
    """Back to the configured defaults (``configs/limits.yaml``)."""
    return tenant_object(await tenancy.set_tenant_limits(name, None))


# Keys


@router.post("/keys", status_code=201, responses=_CONFLICT)
async def create_key(body: KeyCreateRequest, tenancy: TenancyDep) -> CreatedKey:
    return created_key(await tenancy.create_key(body.tenant, body.models, _expiry(body.expires_at)))


@router.get("/keys", responses=_NOT_FOUND)
async def list_keys(tenancy: TenancyDep, tenant: str | None = None) -> KeyList:
    return KeyList(data=[key_object(k) for k in await tenancy.list_keys(tenant)])


@router.get("/keys/{key_id}", responses=_NOT_FOUND)
async def get_key(key_id: str, tenancy: TenancyDep) -> KeyObject:
    return key_object(await tenancy.get_key(key_id))


@router.patch("/keys/{key_id}", responses=_CONFLICT)
async def update_key(key_id: str, body: KeyUpdateRequest, tenancy: TenancyDep) -> KeyObject:
    """Fields sent are replaced (``null``: every model / never expires); fields left out are kept."""
    if not body.model_fields_set:
        raise InvalidRequestError("Send models and/or expires_at to change.")
    models: list[str] | None | _Unset = body.models if "models" in body.model_fields_set else UNSET
    expires: float | None | _Unset = (
        _expiry(body.expires_at) if "expires_at" in body.model_fields_set else UNSET
    )
    return key_object(await tenancy.update_key(key_id, models, expires))


@router.put("/keys/{key_id}/limits", responses=_CONFLICT)
async def set_key_limits(key_id: str, body: LimitsObject, tenancy: TenancyDep) -> KeyObject:
    """Replace the key's own limits, which hold on top of its tenant's (which still count this key)."""
    return key_object(await tenancy.set_key_limits(key_id, body.to_spec()))


@router.delete("/keys/{key_id}/limits", responses=_CONFLICT)
async def clear_key_limits(key_id: str, tenancy: TenancyDep) -> KeyObject:
    return key_object(await tenancy.set_key_limits(key_id, None))


@router.post("/keys/{key_id}/revoke", responses=_CONFLICT)
async def revoke_key(key_id: str, tenancy: TenancyDep) -> KeyObject:
    return key_object(await tenancy.revoke_key(key_id))


@router.post("/keys/{key_id}/rotate", status_code=201, responses=_CONFLICT)
async def rotate_key(key_id: str, tenancy: TenancyDep, body: KeyRotateRequest | None = None) -> KeyRotation:
    rotation = await tenancy.rotate_key(key_id, body.grace_s if body is not None else None)
    return KeyRotation(key=created_key(rotation.new), previous=key_object(rotation.old))


# Usage


@router.get("/usage", responses=REPORT | _NOT_FOUND)
async def usage(
    reporter: ReporterDep,
    period: PeriodDep,
    tenant: str | None = None,
    group_by: GroupBy = "day",
    format: ReportFormat = "json",
) -> Response:
    """One tenant's usage, or every tenant's when ``tenant`` is left out."""
    return report_reply(await reporter.report(tenant, period, group_by), format)


@router.get("/usage/chart", response_class=HTMLResponse, responses=_NOT_FOUND)
async def usage_chart(reporter: ReporterDep, period: PeriodDep, tenant: str | None = None) -> HTMLResponse:
    return HTMLResponse(render_usage_chart(await reporter.daily_by_model(tenant, period)))


@router.get("/usage/events", responses=_NOT_FOUND)
async def usage_events(
    feed: EventFeedDep,
    tenancy: TenancyDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    tenant: str | None = None,
) -> UsageEventPage:
    """Usage events (CloudEvents) in ledger write order after the cursor ``after`` (none: from the
    start), for billing pipelines; one tenant's when ``tenant`` names it."""
    tenant_id = (await tenancy.get_tenant(tenant)).id if tenant is not None else None
    return (await feed.read(parse_cursor(after), limit, tenant_id)).page()


@router.get("/usage/reconcile")
async def usage_reconcile(
    state: StateDep,
    from_: Annotated[str, Query(alias="from", json_schema_extra=_HOUR)],
    to: Annotated[str, Query(json_schema_extra=_HOUR)],
) -> ReconcileReportResponse:
    """Per engine and UTC hour: the engine's token counters against the ledger and adjustments."""
    return await reconcile_report(state.store, from_, to)


def engine_object(endpoint: Endpoint, now: float) -> EngineObject:
    return EngineObject(
        model=endpoint.model,
        url=endpoint.url,
        healthy=endpoint.healthy,
        draining=endpoint.draining,
        ejected=bool(endpoint.ejected_until) and now < endpoint.ejected_until,
        inflight=endpoint.inflight,
        engine_running=endpoint.engine_running,
        engine_waiting=endpoint.engine_waiting,
        kv_cache_usage=endpoint.kv_usage,
    )


@router.get("/engines")
async def list_engines(state: StateDep) -> EngineList:
    """Every engine this process routes to and why it does or does not get traffic."""
    now = time.monotonic()
    return EngineList(data=[engine_object(e, now) for e in state.router.endpoints()])


async def _set_draining(state: StateDep, url: str, draining: bool) -> EngineList:
    matched = await state.drains.set(url, draining)
    if not matched:
        raise ResourceNotFoundError(f"No engine at `{url}`.", param="url")
    now = time.monotonic()
    return EngineList(data=[engine_object(e, now) for e in matched])


@router.post("/engines/drain", responses=_NOT_FOUND)
async def drain_engine(body: EngineDrainRequest, state: StateDep) -> EngineList:
    """Stop routing new requests to an engine; those in flight finish. With Redis every replica
    follows within ``drain_sync_interval_s``; without, this process only."""
    return await _set_draining(state, body.url, True)


@router.post("/engines/resume", responses=_NOT_FOUND)
async def resume_engine(body: EngineDrainRequest, state: StateDep) -> EngineList:
    return await _set_draining(state, body.url, False)
