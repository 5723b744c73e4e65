"""Engine discovery against a fake Kubernetes API (recorded EndpointSlices) and local DNS."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from gateway.config.pools import DeploymentSpec, PoolSpec
from gateway.errors import NoHealthyEngineError
from gateway.metrics import GatewayMetrics
from gateway.routing.discovery import (
    DiscoveryError,
    DnsSource,
    EndpointDiscovery,
    KubernetesApi,
    KubernetesSource,
    ready_urls,
)
from gateway.routing.endpoint import Endpoint
from gateway.routing.health import HealthChecker
from gateway.routing.router import Router

SLICES: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "endpointslices.json").read_text())
MODEL = "llama-8b"
E0, E1, E2 = "http://10.42.1.17:8000", "http://10.42.2.9:8000", "http://10.42.3.4:8000"
TOKEN = "fake-service-account-token"


@dataclass
class FakeApi:
    """What the fake API server answers, and what it was asked."""

    body: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(SLICES))
    status: int = 200
    requests: list[web.Request] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        return web.json_response(self.body, status=self.status)

    def set_ready(self, index: int, ready: bool) -> None:
        self.body["items"][0]["endpoints"][index]["conditions"]["ready"] = ready


class FakeHealth(HealthChecker):
    """Probes nothing: the engines in ``up`` pass, every other fails."""

    def __init__(self, router: Router, session: aiohttp.ClientSession, metrics: GatewayMetrics) -> None:
        super().__init__(router, session, metrics, interval_s=1, timeout_s=1)
        self.up: set[str] = set()
        self.checked: list[str] = []

    async def _check(self, endpoint: Endpoint) -> None:
        self.checked.append(endpoint.url)
        self.mark(endpoint, endpoint.url in self.up)


@dataclass
class Setup:
    api: FakeApi
    router: Router
    health: FakeHealth
    metrics: GatewayMetrics
    discovery: EndpointDiscovery


def discovered_spec(port: int | str = 8000) -> DeploymentSpec:
    pool = PoolSpec.model_validate(
        {"served_name": MODEL, "discovery": {"kubernetes": {"service": "llama-8b-engine", "port": port}}}
    )
    return DeploymentSpec(pools=[pool])


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    api = FakeApi()
    app = web.Application()
    app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", api.handle)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    spec = discovered_spec("http")
    metrics = GatewayMetrics()
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        router = Router.from_spec(spec, metrics)
        health = FakeHealth(router, session, metrics)
        kubernetes = KubernetesApi(str(server.make_url("")).rstrip("/"), token, None, namespace="llm")
        pool = spec.pools[0]
        assert pool.discovery is not None and pool.discovery.kubernetes is not None
        source = KubernetesSource(pool.discovery.kubernetes, kubernetes, session)
        yield Setup(api, router, health, metrics, EndpointDiscovery({MODEL: source}, router, health, 5))


def urls(router: Router) -> list[str]:
    return [e.url for e in router.pool(MODEL).endpoints]


def engine_up(metrics: GatewayMetrics, url: str) -> float | None:
    return metrics.registry.get_sample_value("gateway_engine_up", {"model": MODEL, "endpoint": url})


def test_ready_urls_skip_unready_endpoints_and_resolve_named_ports() -> None:
    assert ready_urls(SLICES, 8000) == [E0, E1]
    assert ready_urls(SLICES, "http") == [E0, E1]
    assert ready_urls(SLICES, 9000) == ["http://10.42.1.17:9000", "http://10.42.2.9:9000"]
    assert ready_urls(SLICES, "grpc") == []  # no such port name: no engines
    assert ready_urls({"kind": "EndpointSliceList", "items": None}, 8000) == []
    ipv6 = {"items": [{"endpoints": [{"addresses": ["fd00::7"]}], "ports": []}]}
    assert ready_urls(ipv6, 8000) == ["http://[fd00::7]:8000"]  # no conditions: ready


async def test_first_refresh_adds_ready_engines_which_wait_for_their_health_check(setup: Setup) -> None:
    assert urls(setup.router) == []  # nothing known before discovery
    setup.health.up = {E0}
    await setup.discovery.refresh()
    request = setup.api.requests[-1]
    assert request.match_info["namespace"] == "llm"
    assert request.query["labelSelector"] == "kubernetes.io/service-name=llama-8b-engine"
    pool = setup.router.pool(MODEL)
    assert urls(setup.router) == [E0, E1]
    assert sorted(setup.health.checked) == [E0, E1]  # new engines are checked at once
    assert [e.healthy for e in pool.endpoints] == [True, False]
    assert {(await pool.acquire("acme")).url for _ in range(4)} == {E0}
    assert engine_up(setup.metrics, E0) == 1 and engine_up(setup.metrics, E1) == 0


async def test_new_engine_gets_no_traffic_before_it_passes(setup: Setup) -> None:
    added, removed = setup.router.pool(MODEL).update_endpoints([E0])
    assert [e.healthy for e in added] == [False] and removed == []
    with pytest.raises(NoHealthyEngineError):
        setup.router.pool(MODEL).pick("acme")


async def test_refresh_keeps_persisting_engines_and_removes_gone_ones(setup: Setup) -> None:
    setup.health.up = {E0, E1, E2}
    await setup.discovery.refresh()
    pool = setup.router.pool(MODEL)
    e0, e1 = pool.endpoints
    held = [await pool.acquire("acme") for _ in range(4)]
    assert e0.inflight == e1.inflight == 2
    setup.health.checked.clear()

    setup.api.set_ready(0, False)  # engine 0 goes away (terminating), engine 2 becomes ready
    setup.api.set_ready(2, True)
    await setup.discovery.refresh()
    assert urls(setup.router) == [E1, E2]
    assert pool.endpoints[0] is e1 and e1.inflight == 2 and e1.healthy  # same object, state kept
    assert setup.health.checked == [E2]  # only the new one is probed now
    assert pool.endpoints[1].healthy and pool.endpoints[1].inflight == 0
    assert pool.shared == pool.endpoints
    assert engine_up(setup.metrics, E0) is None  # a gone engine's series is dropped
    assert {(await pool.acquire("other")).url for _ in range(6)} <= {E1, E2}
    for endpoint in held:  # requests that were on the removed engine still release cleanly
        pool.release(endpoint, "acme")
    assert e0.inflight == 0

    setup.health.checked.clear()
    await setup.discovery.refresh()  # nothing changed: nothing probed, nothing replaced
    assert setup.health.checked == [] and pool.endpoints[0] is e1


async def test_failed_lookup_keeps_the_endpoints_but_an_empty_service_empties_the_pool(setup: Setup) -> None:
    setup.health.up = {E0, E1}
    await setup.discovery.refresh()
    before = list(setup.router.pool(MODEL).endpoints)
    setup.api.status = 500
    await setup.discovery.refresh()
    assert setup.router.pool(MODEL).endpoints == before
    setup.api.status = 200
    setup.api.body = {"kind": "EndpointSliceList", "items": []}  # scaled to zero
    await setup.discovery.refresh()
    assert urls(setup.router) == []
    with pytest.raises(NoHealthyEngineError):
        setup.router.pool(MODEL).pick("acme")


async def test_wrong_token_is_a_failed_lookup(setup: Setup, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("expired")  # read again at every lookup
    source = setup.discovery._sources[MODEL]
    with pytest.raises(DiscoveryError, match="HTTP 401"):
        await source.resolve()


async def test_dns_source_returns_every_address() -> None:
    assert "http://127.0.0.1:8123" in await DnsSource("localhost:8123").resolve()


def test_in_cluster_needs_the_kubernetes_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(DiscoveryError, match="not in a pod"):
        KubernetesApi.in_cluster()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    assert KubernetesApi.in_cluster().base_url == "https://10.96.0.1:6443"


def test_spec_discovery_is_one_source_and_excludes_fixed_engines() -> None:
    pool = discovered_spec().pools[0]
    assert not pool.launched and pool.endpoint_urls() == []
    dns = PoolSpec.model_validate({"served_name": "m", "discovery": {"dns": "e.llm.svc.cluster.local:8000"}})
    assert dns.discovery is not None and dns.discovery.dns == "e.llm.svc.cluster.local:8000"
    bad = [
        {"discovery": {}},
        {"discovery": {"dns": "a:1", "kubernetes": {"service": "s"}}},
        {"discovery": {"dns": "no-port"}},
        {"discovery": {"dns": "a:1"}, "endpoints": ["http://x"]},
        {"discovery": {"dns": "a:1"}, "dedicated": {"acme": [0]}},
    ]
    for extra in bad:
        with pytest.raises(ValidationError):
            PoolSpec.model_validate({"served_name": "m", **extra})
