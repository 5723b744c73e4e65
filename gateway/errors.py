"""One error hierarchy, rendered in OpenAI's shape by one handler.

GatewayError                      500 server_error
├── InvalidRequestError           400 invalid_request_error
│   ├── ModelNotFoundError        404 invalid_request_error / model_not_found
│   ├── RouteNotFoundError        404 invalid_request_error / not_found
│   ├── EndpointNotSupportedError 404 invalid_request_error (the model is served, not by this API)
│   ├── ResourceNotFoundError     404 invalid_request_error / not_found (tenant, key)
│   ├── ResourceConflictError     409 invalid_request_error / conflict
│   ├── MethodNotAllowedError     405 invalid_request_error / method_not_allowed
│   └── PayloadTooLargeError      413 invalid_request_error / request_too_large
├── AuthenticationError           401 authentication_error / invalid_api_key
├── PermissionDeniedError         403 permission_error / permission_denied
├── RateLimitError                429 rate_limit_error / rate_limit_exceeded
│   ├── LimitExceeded             (gateway.admission.limits: reason, scope, Retry-After; a spent
│   │                             monthly budget is type and code insufficient_quota)
│   └── TenantQueueFullError      (this tenant's share of a saturated pool's queue is full)
├── UpstreamError                 502 upstream_error
├── NoHealthyEngineError          503 service_unavailable / no_healthy_engine (with Retry-After)
├── EnginesBusyError              503 service_unavailable / engines_busy (queue full or waited too long)
├── StoreUnavailableError         503 service_unavailable / store_unavailable (with Retry-After)
├── LimiterUnavailableError       503 service_unavailable / rate_limiter_unavailable
├── UpstreamTimeoutError          504 timeout / upstream_timeout
└── EngineError                   the engine's own 4xx/5xx, its status kept, its type mapped:
                                  400 409 413 (any other 4xx) invalid_request_error,
                                  404 invalid_request_error / model_not_found,
                                  429 rate_limit_error / engine_overloaded, 5xx server_error / upstream_error;
                                  422 becomes 400, and 401/403 (the engine refused the gateway, not the
                                  client) become 502: gateway.serving.relay normalises them
"""

from __future__ import annotations

import math
from typing import Any

import orjson


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def to_sse(self) -> bytes:
        """The error as the last events of a stream that already started."""
        return b"data: " + self.to_json() + b"\n\ndata: [DONE]\n\n"


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class ModelNotFoundError(InvalidRequestError):
    status_code = 404
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )


class RouteNotFoundError(InvalidRequestError):
    status_code = 404
    default_code = "not_found"


class EndpointNotSupportedError(InvalidRequestError):
    """The model exists but is not served by this API (an embedding model on chat, or the reverse);
    OpenAI answers 404 with ``param`` ``model`` and no code."""

    status_code = 404

    def __init__(self, model: str, path: str) -> None:
        super().__init__(
            f"The model `{model}` is not supported by the {path.removeprefix('/')} endpoint.", param="model"
        )


class ResourceNotFoundError(InvalidRequestError):
    """An admin or usage request named a tenant or key that does not exist."""

    status_code = 404
    default_code = "not_found"


class ResourceConflictError(InvalidRequestError):
    """The change contradicts the current state (a taken name, a deleted tenant, a revoked key)."""

    status_code = 409
    default_code = "conflict"


class MethodNotAllowedError(InvalidRequestError):
    status_code = 405
    default_code = "method_not_allowed"


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413
    default_code = "request_too_large"


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class RateLimitError(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"


def _retry_after(error: GatewayError, retry_after_s: float) -> None:
    error.headers["retry-after"] = str(max(1, math.ceil(retry_after_s)))
    error.headers["retry-after-ms"] = str(max(1, math.ceil(retry_after_s * 1000)))


class NoHealthyEngineError(GatewayError):
    """No engine of the model can take the request (none up, or each one tried has failed)."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "no_healthy_engine"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        _retry_after(self, retry_after_s)


class TenantQueueFullError(RateLimitError):
    """The pool is saturated and this tenant already has its most requests waiting for it."""

    def __init__(self, model: str, waiting: int, retry_after_s: float) -> None:
        super().__init__(
            f"The engines serving `{model}` are busy and {waiting} of your requests are already "
            f"waiting for them. Please try again in {retry_after_s:g}s."
        )
        _retry_after(self, retry_after_s)


class EnginesBusyError(GatewayError):
    """The pool is saturated and its queue is full, or the request waited its longest."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "engines_busy"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        _retry_after(self, retry_after_s)


class StoreUnavailableError(GatewayError):
    """The database is unreachable and the answer is not cached (e.g. a key never seen)."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "store_unavailable"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        _retry_after(self, retry_after_s)


class LimiterUnavailableError(GatewayError):
    """The shared rate limiter (Redis) is unreachable and the policy is to fail closed."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "rate_limiter_unavailable"


class SharedStateUnavailableError(GatewayError):
    """State all replicas share (Redis) is unreachable for an admin change that must reach them all."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "shared_state_unavailable"


class UpstreamTimeoutError(GatewayError):
    status_code = 504
    error_type = "timeout"
    default_code = "upstream_timeout"


class EngineError(GatewayError):
    """An error the engine answered with (a whole 4xx/5xx body, or an error event mid-stream).

    The status is the engine's; the type is the one OpenAI uses for that status (vLLM writes its
    own, e.g. ``BadRequestError``), so an OpenAI SDK raises its matching exception. A string
    ``code`` from the engine is kept; vLLM's code is the HTTP status again, so a default stands in.
    """

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        error_type, default_code = _openai_kind(status)
        super().__init__(message, param=param, code=code if code is not None else default_code)
        self.status_code = status
        self.error_type = error_type


# OpenAI's (type, default code) for the statuses an engine's error may carry; see ``EngineError``.
_ENGINE_STATUS: dict[int, tuple[str, str | None]] = {
    401: (AuthenticationError.error_type, AuthenticationError.default_code),
    403: (PermissionDeniedError.error_type, PermissionDeniedError.default_code),
    404: (ModelNotFoundError.error_type, ModelNotFoundError.default_code),
    409: (ResourceConflictError.error_type, ResourceConflictError.default_code),
    413: (PayloadTooLargeError.error_type, PayloadTooLargeError.default_code),
    429: (RateLimitError.error_type, "engine_overloaded"),
}


def _openai_kind(status: int) -> tuple[str, str | None]:
    known = _ENGINE_STATUS.get(status)
    if known is not None:
        return known
    if 400 <= status < 500:
        return InvalidRequestError.error_type, None
    return GatewayError.error_type, UpstreamError.default_code
