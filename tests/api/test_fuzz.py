"""The fuzz tier: schemathesis draws requests from the gateway's own OpenAPI schema (valid ones and
invalid ones) and sends them to the app in-process, in front of the simulated engine, with a real
tenant key (``/v1``) or the admin token (``/admin``). A request fails the tier if its answer is a
5xx, a status or body its operation's schema does not declare, or a 4xx that is not OpenAI's error
object (issue 18, "Keep it closed").

Bounded and reproducible: a fixed number of examples per operation, derandomized, no example
database. Each operation is its own test, well inside the api tier's 120 s; the file takes about
half a minute.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN_TOKEN, SIM_MODEL, pool_spec

# The sim engine's answer: short and instant, so that an example costs milliseconds.
SIM_DEFAULTS = {"ttft_ms": 0, "itl_ms": 0, "output_tokens": 4, "failure_rate": 0, "fail_after_tokens": None}
BASE_URL = f"http://{asgi.HOST}"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ERROR_FIELDS = {"message", "type", "param", "code"}
FUZZ_TENANT = "fuzz"


def fuzz_settings(data_dir: Path) -> Settings:
    """Development (so that the admin API is in the schema), no default limits (a 429 would hide
    what comes after admission) and no price table to read."""
    return Settings(
        database_url=f"sqlite:///{data_dir / 'gateway.db'}",
        data_dir=data_dir,
        max_body_bytes=64 * 1024,
        auth_cache_ttl_s=0,
        admin_token=ADMIN_TOKEN,
        limits_path=None,
        prices_path=None,
    )


def served_schema() -> dict[str, Any]:
    """What the app serves at ``/openapi.json`` (building an app opens nothing)."""
    with tempfile.TemporaryDirectory() as scratch:
        return create_app(fuzz_settings(Path(scratch)), pool_spec("http://127.0.0.1:9")).openapi()


SERVED = served_schema()
SCHEMA = schemathesis.openapi.from_dict(SERVED)


def test_the_schema_says_who_may_call_and_that_errors_are_openais() -> None:
    """What the fuzzer reads: a bearer scheme per token, and every error an ``ErrorResponse``
    (with no 422, which the gateway never sends)."""
    assert {s["scheme"] for s in SERVED["components"]["securitySchemes"].values()} == {"bearer"}
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in SERVED["paths"].items():
        for method, operation in operations.items():
            if path.startswith(("/v1/", "/admin/")):
                assert operation["security"] in ([{"apiKey": []}], [{"adminToken": []}]), (method, path)
            for status, answer in operation["responses"].items():
                assert status != "422", (method, path)
                if status.startswith(("4", "5")) and path != "/health":
                    assert answer["content"] == {"application/json": {"schema": error}}, (method, path)


@schemathesis.check
def errors_are_openai_shaped(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx is ``{"error": {"message", "type", "param", "code"}}`` and nothing else."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert set(body) == {"error"}, f"not OpenAI's error object: {body}"
    error = body["error"]
    assert set(error) == ERROR_FIELDS, f"not OpenAI's error fields: {body}"
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    errors_are_openai_shaped,
]
BOUNDED = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@dataclass
class Target:
    """An app with its lifespan running, and what a valid request of its caller names."""

    client: asgi.ASGIClient
    auth: dict[str, str]
    names: dict[str, str]  # parameter or body field -> a value that exists (valid cases only)


def _reset_sim(sim_url: str) -> None:
    with httpx.Client(base_url=sim_url) as sim:
        sim.post("/sim/reset").raise_for_status()
        sim.post("/sim/config", json=SIM_DEFAULTS).raise_for_status()


@contextlib.contextmanager
def running_app(sim_url: str, data_dir: Path) -> Iterator[tuple[asgi.ASGIClient, dict[str, str]]]:
    """A fresh app, its lifespan running on schemathesis's event loop thread until the end, and a
    key issued through the admin API (its ``id`` and ``secret``)."""
    _reset_sim(sim_url)
    try:
        with asgi.get_client(create_app(fuzz_settings(data_dir), pool_spec(sim_url))) as client:
            tenant = client.post("/admin/tenants", json={"name": FUZZ_TENANT}, headers=ADMIN_AUTH)
            tenant.raise_for_status()
            issued = client.post("/admin/keys", json={"tenant": FUZZ_TENANT}, headers=ADMIN_AUTH)
            issued.raise_for_status()
            yield client, issued.json()
    finally:
        asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def tenant_target(sim_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with running_app(sim_engine, tmp_path_factory.mktemp("fuzz-v1")) as (client, key):
        yield Target(client, {"Authorization": f"Bearer {key['secret']}"}, {"model": SIM_MODEL})


@pytest.fixture(scope="module")
def admin_target(sim_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """Its own app: draining its engine or suspending its tenant must not touch ``/v1``'s."""
    with running_app(sim_engine, tmp_path_factory.mktemp("fuzz-admin")) as (client, key):
        names = {"name": FUZZ_TENANT, "tenant": FUZZ_TENANT, "key_id": key["id"], "url": sim_engine}
        yield Target(client, ADMIN_AUTH, names)


def aim(case: schemathesis.Case, names: dict[str, str]) -> None:
    """A valid request names what exists (the served model, the tenant, its key, the engine), so
    that it gets past the 404 at the door to admission, the engine, the relay or the store;
    invalid requests keep what was drawn."""
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return
    for part in (case.body, case.path_parameters, case.query):
        if isinstance(part, dict):
            part.update({field: value for field, value in names.items() if field in part})


def call(case: schemathesis.Case, target: Target) -> None:
    aim(case, target.names)
    case.call_and_validate(base_url=BASE_URL, session=target.client, headers=target.auth, checks=CHECKS)


@SCHEMA.include(path_regex=r"^/v1/").parametrize()
@BOUNDED
def test_openai_api(case: schemathesis.Case, tenant_target: Target) -> None:
    call(case, tenant_target)


@SCHEMA.include(path_regex=r"^/(health|metrics)$").parametrize()
@BOUNDED
def test_ops_routes(case: schemathesis.Case, tenant_target: Target) -> None:
    """Anonymous, as a probe or a scraper in development (where /metrics needs no token)."""
    call(case, Target(tenant_target.client, {}, {}))


@SCHEMA.include(path_regex=r"^/admin/").parametrize()
@BOUNDED
def test_admin_api(case: schemathesis.Case, admin_target: Target) -> None:
    call(case, admin_target)
