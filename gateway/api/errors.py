"""The one place a ``GatewayError`` (or a framework error) becomes an HTTP answer:
``{"error": {"message", "type", "param", "code"}}`` with the status OpenAI would use."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    PayloadTooLargeError,
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
    """FastAPI's validation of a query parameter or an admin body, as OpenAI's 400."""
    assert isinstance(exc, RequestValidationError)
    return error_response(invalid_request(exc.errors()))


def invalid_request(errors: Any) -> InvalidRequestError:
    """The first of pydantic's errors as a short sentence, ``param`` naming the field (the
    location without ``body``/``query``), never the rejected value's Python repr."""
    first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(p) for p in first.get("loc", ())]
    param = ".".join(loc[1:] if loc[:1] in (["body"], ["query"], ["path"]) else loc) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ").rstrip(".")
    if first.get("type") == "missing" and param:
        return InvalidRequestError(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    if first.get("type") == "extra_forbidden" and param:
        return InvalidRequestError(
            f"Unrecognized request argument supplied: {param}.", param=param, code="unknown_parameter"
        )
    text = f"Invalid value for '{param}': {message}." if param else f"{message}."
    return InvalidRequestError(text, param=param, code="invalid_value")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (no such route, wrong method) in OpenAI's words."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    error: GatewayError
    if exc.status_code == 405:
        error = MethodNotAllowedError(f"Method not allowed ({where}).")
        error.headers.update(exc.headers or {})  # Allow: the methods the path takes
    elif exc.status_code == 404:
        error = RouteNotFoundError(f"Invalid URL ({where}).")
    elif exc.status_code == 413:
        error = PayloadTooLargeError("The request body is too large.")
    elif 400 <= exc.status_code < 500:
        error = InvalidRequestError(str(exc.detail))
        error.status_code = exc.status_code
    else:
        error = GatewayError("The server had an error while processing your request.")
        error.status_code = exc.status_code
    return error_response(error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(GatewayError("The server had an error while processing your request."))
