"""The one place a ``GatewayError`` (or a framework error) becomes an HTTP answer:
``{"error": {"message", "type", "param", "code"}}`` with the status OpenAI would use."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    RouteNotFoundError,
)

logger = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


def error_response(error: GatewayError) -> Response:
    return Response(
        error.to_json(),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first["loc"][1:]) or None
    return error_response(InvalidRequestError(str(first["msg"]), param=param))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(MethodNotAllowedError(f"Method {request.method} is not allowed here."))
    if exc.status_code == 404:
        return error_response(RouteNotFoundError(f"Unknown path: {request.url.path}"))
    error = GatewayError(str(exc.detail))
    error.status_code = exc.status_code
    return error_response(error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(GatewayError("The server had an error while processing your request."))
