"""Errors the simulated engine returns, in OpenAI's shape.

SimError                 -> {"error": {"message", "type", "param", "code"}} with ``status``
├── BadRequest           400 invalid_request_error
├── ModelNotFound        404 invalid_request_error / model_not_found
└── InjectedFailure      --failure-status, server_error (or invalid_request_error below 500)

SimulatedCrash           not a response: raised mid-stream so the server drops the connection
"""

from __future__ import annotations

from typing import Any

import orjson


class SimError(Exception):
    """An error rendered as one OpenAI error body with an HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body, as OpenAI and vLLM spell it."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_json(self) -> bytes:
        """The body, serialised."""
        return orjson.dumps(self.body())


class BadRequest(SimError):
    """The request is malformed (400)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, status=400, type="invalid_request_error", param=param, code=code)


class ModelNotFound(SimError):
    """The requested model is not served here (404)."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist.",
            status=404,
            type="invalid_request_error",
            param="model",
            code="model_not_found",
        )


class InjectedFailure(SimError):
    """A failure chosen by ``failure_rate`` (the status is configurable)."""

    def __init__(self, status: int) -> None:
        super().__init__(
            f"Simulated failure (status {status}).",
            status=status,
            type="server_error" if status >= 500 else "invalid_request_error",
            code="simulated_failure",
        )


class SimulatedCrash(Exception):
    """Raised after ``fail_after_tokens`` tokens; the server closes the connection without [DONE]."""
