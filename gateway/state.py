"""The one typed object holding everything the app built in its lifespan."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from gateway.admission.service import Admission
from gateway.config.pools import DeploymentSpec
from gateway.metering.journal import Journal
from gateway.metering.meter import LedgerWriter, Meter
from gateway.metering.pricing import PriceBook
from gateway.metrics import GatewayMetrics
from gateway.routing.drains import Drains
from gateway.routing.health import HealthChecker
from gateway.routing.router import Router
from gateway.serving.proxy import ProxyService
from gateway.settings import Settings
from gateway.store import Store
from gateway.supervisor import Supervisor
from gateway.tenancy.auth import Authenticator


@dataclass(slots=True)
class GatewayState:
    settings: Settings
    spec: DeploymentSpec
    store: Store
    metrics: GatewayMetrics
    session: aiohttp.ClientSession
    router: Router
    health: HealthChecker
    authenticator: Authenticator
    ledger: LedgerWriter
    proxy: ProxyService
    journal: Journal
    prices: PriceBook
    meter: Meter
    admission: Admission
    drains: Drains
    supervisor: Supervisor  # the background tasks (``/health?scope=gateway`` reads it)
