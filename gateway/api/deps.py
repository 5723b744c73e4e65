"""Named dependencies for routes: the app state, the authenticated caller and the services."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.billing.events import UsageEventFeed
from gateway.errors import AuthenticationError
from gateway.records import ApiKey
from gateway.reporting.reports import UsageReporter
from gateway.state import GatewayState
from gateway.tenancy.auth import authorize_admin
from gateway.tenancy.service import TenancyService


async def get_state(request: Request) -> GatewayState:
    # ``async``: FastAPI runs a plain ``def`` dependency in a worker thread, which cost about a
    # fifth of the gateway's CPU per request (measured with py-spy under benchmarks/overhead.py).
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


async def authenticated_key(request: Request, state: StateDep) -> ApiKey:
    try:
        return await state.authenticator.authenticate(request.headers.get("authorization"))
    except AuthenticationError:
        state.metrics.auth_failures.inc()
        raise


KeyDep = Annotated[ApiKey, Depends(authenticated_key)]


async def admin_caller(request: Request, state: StateDep) -> None:
    """Let only the admin token through (401 for no or a wrong token, 403 for a tenant key)."""
    try:
        await authorize_admin(
            request.headers.get("authorization"), state.settings.admin_token, state.authenticator
        )
    except AuthenticationError:
        state.metrics.auth_failures.inc()
        raise


async def tenancy_service(state: StateDep) -> TenancyService:
    # Built per request: it holds only references to the state's store and key cache.
    return TenancyService(state.store, state.authenticator.forget, state.settings.key_rotation_grace_s)


async def usage_reporter(state: StateDep) -> UsageReporter:
    return UsageReporter(state.store, state.prices.currency)


async def usage_event_feed(state: StateDep) -> UsageEventFeed:
    return UsageEventFeed(state.store.events, state.settings.usage_events_source, state.prices.currency)


TenancyDep = Annotated[TenancyService, Depends(tenancy_service)]
ReporterDep = Annotated[UsageReporter, Depends(usage_reporter)]
EventFeedDep = Annotated[UsageEventFeed, Depends(usage_event_feed)]
