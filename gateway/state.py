"""The one typed object holding everything the app built in its lifespan."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from engines.spec import DeploymentSpec
from gateway.admission import Admission
from gateway.auth import Authenticator
from gateway.drains import Drains
from gateway.health import HealthChecker
from gateway.journal import Journal
from gateway.metering import LedgerWriter, Meter
from gateway.metrics import GatewayMetrics
from gateway.pricing import PriceBook
from gateway.proxy import ProxyService
from gateway.routing import Router
from gateway.settings import Settings
from gateway.store import Store


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
