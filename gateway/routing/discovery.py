"""Engine discovery: a pool's endpoints follow a Kubernetes Service or a DNS name at run time.

Each pool with ``discovery`` in the spec gets one ``EndpointSource`` (chosen by the spec's key):

- ``kubernetes``: the ready addresses of the Service's EndpointSlices, read from the API server
  with the pod's service-account token (RBAC: ``get``/``list`` on ``endpointslices``);
- ``dns``: the A/AAAA records of a name, e.g. a headless Service's.

``EndpointDiscovery.refresh`` looks every pool up (a supervised background round) and hands the
result to ``EnginePool.update_endpoints``: engines that stay keep their state, new ones wait for the
health checker (checked at once, so they take traffic within one probe), removed ones get no new
requests. A failed lookup keeps the endpoints the pool has: an API server or DNS outage must not
empty a pool whose engines still answer. The request path never waits on any of this.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from gateway.config.pools import DeploymentSpec, DiscoverySpec, KubernetesDiscoverySpec
from gateway.routing.health import HealthChecker
from gateway.routing.router import Router

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class DiscoveryError(RuntimeError):
    """A lookup failed; the pool keeps the endpoints it has."""


class EndpointSource(Protocol):
    """Where one pool's engines are found."""

    async def resolve(self) -> list[str]:
        """The engines' base URLs now (``http://host:port``)."""
        ...


@dataclass(frozen=True, slots=True)
class KubernetesApi:
    """How to reach the API server: in a pod, from its environment and service account."""

    base_url: str
    token_path: Path | None = SERVICE_ACCOUNT_DIR / "token"
    ca_path: Path | None = SERVICE_ACCOUNT_DIR / "ca.crt"
    namespace: str = "default"

    @classmethod
    def in_cluster(cls) -> KubernetesApi:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise DiscoveryError("KUBERNETES_SERVICE_HOST is not set: the gateway is not in a pod")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        namespace_file = SERVICE_ACCOUNT_DIR / "namespace"
        namespace = namespace_file.read_text().strip() if namespace_file.exists() else "default"
        return cls(f"https://{host}:{port}", namespace=namespace)

    def headers(self) -> dict[str, str]:
        # Read at every call: the kubelet rotates projected tokens (about hourly).
        if self.token_path is None:
            return {}
        return {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.ca_path is None:
            return True  # the system's CAs (or plain http, as in the tests)
        return ssl.create_default_context(cafile=str(self.ca_path))


class KubernetesSource:
    """The ready addresses in a Service's EndpointSlices (``discovery.k8s.io/v1``)."""

    def __init__(self, spec: KubernetesDiscoverySpec, api: KubernetesApi, session: aiohttp.ClientSession):
        self._spec = spec
        self._api = api
        self._session = session
        self._ssl = api.ssl_context()
        namespace = spec.namespace or api.namespace
        self._url = f"{api.base_url}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        self._params = {"labelSelector": f"kubernetes.io/service-name={spec.service}"}

    async def resolve(self) -> list[str]:
        try:
            async with self._session.get(
                self._url,
                params=self._params,
                headers=self._api.headers(),
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                if resp.status != 200:
                    raise DiscoveryError(f"{self._url}: HTTP {resp.status}: {(await resp.text())[:200]}")
                body = await resp.json()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise DiscoveryError(f"{self._url}: {type(exc).__name__}: {exc}") from exc
        return ready_urls(body, self._spec.port)


def ready_urls(slice_list: dict[str, Any], port: int | str) -> list[str]:
    """Base URLs of the ready endpoints in an ``EndpointSliceList``, sorted.

    ``port`` is a number, or a port name looked up in each slice. ``ready`` left out counts as
    ready, as the API defines it; a terminating endpoint is not ready.
    """
    urls: set[str] = set()
    for item in slice_list.get("items") or []:
        number = port if isinstance(port, int) else _named_port(item, port)
        if number is None:
            continue
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                urls.add(_url(address, number))
    return sorted(urls)


def _named_port(item: dict[str, Any], name: str) -> int | None:
    return next((p.get("port") for p in item.get("ports") or [] if p.get("name") == name), None)


def _url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


class DnsSource:
    """Every address a name resolves to (a headless Service has one A record per ready pod)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._host = host
        self._port = int(port)

    async def resolve(self) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except OSError as exc:  # socket.gaierror: NXDOMAIN too (a headless Service with no ready pod)
            raise DiscoveryError(f"{self._host}: {exc}") from exc
        return sorted({_url(str(info[4][0]), self._port) for info in infos})


SourceFactory = Callable[[DiscoverySpec, aiohttp.ClientSession], EndpointSource]


def _kubernetes(spec: DiscoverySpec, session: aiohttp.ClientSession) -> EndpointSource:
    assert spec.kubernetes is not None
    return KubernetesSource(spec.kubernetes, KubernetesApi.in_cluster(), session)


def _dns(spec: DiscoverySpec, session: aiohttp.ClientSession) -> EndpointSource:
    assert spec.dns is not None
    return DnsSource(spec.dns)


# The spec's source key → how to build it.
SOURCES: dict[str, SourceFactory] = {"kubernetes": _kubernetes, "dns": _dns}


def create_source(spec: DiscoverySpec, session: aiohttp.ClientSession) -> EndpointSource:
    key = next(name for name in SOURCES if getattr(spec, name) is not None)
    return SOURCES[key](spec, session)


class EndpointDiscovery:
    """Keeps the endpoints of every discovered pool up to date."""

    def __init__(
        self, sources: dict[str, EndpointSource], router: Router, health: HealthChecker, interval_s: float
    ) -> None:
        self._sources = sources
        self._router = router
        self._health = health
        self.interval_s = interval_s

    @classmethod
    def from_spec(
        cls,
        spec: DeploymentSpec,
        router: Router,
        health: HealthChecker,
        session: aiohttp.ClientSession,
        interval_s: float,
    ) -> EndpointDiscovery:
        sources = {
            p.served_name: create_source(p.discovery, session) for p in spec.pools if p.discovery is not None
        }
        return cls(sources, router, health, interval_s)

    @property
    def enabled(self) -> bool:
        """Whether any pool is discovered (else there is nothing to refresh in the background)."""
        return bool(self._sources)

    async def refresh(self) -> None:
        """Look every pool up once; a failed lookup is logged and changes nothing. The background
        round (``gateway.supervisor`` runs it every ``interval_s``)."""
        await asyncio.gather(*(self._refresh(model, source) for model, source in self._sources.items()))

    async def _refresh(self, model: str, source: EndpointSource) -> None:
        try:
            urls = await source.resolve()
        except DiscoveryError as exc:
            count = len(self._router.pool(model).endpoints)
            logger.warning("discovery of %s failed, keeping its %d endpoints: %s", model, count, exc)
            return
        added, removed = self._router.pool(model).update_endpoints(urls)
        for endpoint in removed:
            self._health.forget(endpoint)
        if added or removed:
            logger.info(
                "pool %s: %d engines (+%s, -%s)",
                model,
                len(urls),
                [e.url for e in added],
                [e.url for e in removed],
            )
            await self._health.check(added)
