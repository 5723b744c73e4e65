"""The OpenAPI schema as clients see the API: the OpenAI routes' request bodies (their routes read
the raw body themselves, so FastAPI cannot see them), the error statuses each route really answers
with (OpenAI's error object), who may call it (a bearer token: a tenant key, the admin token, the
metrics token) and no 422, which the gateway never sends (validation errors are OpenAI's 400).

``tests/api/test_fuzz.py`` holds the schema to what the app answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ErrorResponse,
    ResponsesRequest,
)

REQUEST_BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/responses": ResponsesRequest,
}
_FASTAPI_ONLY = ("HTTPValidationError", "ValidationError")
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorResponse.__name__}"}}}
_ERROR_DESCRIPTIONS = {
    400: "Invalid request (`param` names the field)",
    401: "Missing, wrong, revoked or expired token",
    403: "A token that may not call this route",
    404: "No such resource",
    409: "The resource's state forbids it (exists already, deleted, revoked, expired)",
    413: "Request body too large",
    429: "A rate limit or budget (`code` says which), or the pool's queue",
    500: "The engine failed",
    502: "The engine broke off or refused the gateway",
    503: "No healthy engine, engines busy, or the store or limiter unavailable",
    504: "The engine did not answer in time",
}
# Every token is sent as `Authorization: Bearer …`; the scheme names say which token a route takes.
SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "A tenant's API key"},
    "adminToken": {"type": "http", "scheme": "bearer", "description": "GATEWAY_ADMIN_TOKEN"},
    "metricsToken": {"type": "http", "scheme": "bearer", "description": "GATEWAY_METRICS_TOKEN, if set"},
}
# Which token the routes under each prefix take; `{}` is "no token" (metrics without a token set).
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "/v1/": [{"apiKey": []}],
    "/admin/": [{"adminToken": []}],
    "/metrics": [{"metricsToken": []}, {}],
}


def errors(*statuses: int, described: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of the error statuses a route really answers with: OpenAI's error
    object, as JSON whatever the route's own media type; ``described`` words a status for this route."""
    words = {**_ERROR_DESCRIPTIONS, **(described or {})}
    return {status: {"description": words[status], "content": _ERROR_CONTENT} for status in statuses}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components: dict[str, Any] = schema.setdefault("components", {})
    models: dict[str, Any] = components.setdefault("schemas", {})
    documented: list[type[BaseModel]] = [ErrorResponse, *REQUEST_BODIES.values()]
    for model in documented:
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        models.update(model_schema.pop("$defs", {}))
        models[model.__name__] = model_schema
    for path, model in REQUEST_BODIES.items():
        reference = {"$ref": f"#/components/schemas/{model.__name__}"}
        schema["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": reference}},
        }
    _replace_422(schema)
    for name in _FASTAPI_ONLY:
        models.pop(name, None)
    _add_security(schema)
    return schema


def _replace_422(schema: dict[str, Any]) -> None:
    """FastAPI's 422 (its validation error) is OpenAI's 400 here."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            answers = operation.get("responses", {})
            if answers.pop("422", None) is not None:
                answers.setdefault("400", errors(400)[400])


def _add_security(schema: dict[str, Any]) -> None:
    schema["components"]["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in schema["paths"].items():
        security = next((s for prefix, s in _SECURITY.items() if path.startswith(prefix)), None)
        if security is None:
            continue
        for operation in operations.values():
            operation["security"] = security
