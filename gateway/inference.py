"""The edge: an OpenAI request body in, the internal ``EngineCall`` out.

The body is validated with the OpenAI models, then re-encoded for the engine with usage
reporting switched on, whatever the client asked: metering must never depend on the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequestError
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.records import Api

_REQUEST_MODELS: dict[Api, type[BaseModel]] = {
    Api.chat: ChatCompletionRequest,
    Api.completions: CompletionRequest,
    Api.embeddings: EmbeddingRequest,
}


@dataclass(frozen=True, slots=True)
class EngineCall:
    """What the gateway sends to an engine, and what the client asked to get back."""

    api: Api
    model: str
    stream: bool
    client_usage: bool  # stream_options.include_usage as the client sent it
    client_continuous_usage: bool  # stream_options.continuous_usage_stats as sent
    body: bytes
    user: str | None = None
    # The parsed request (for token counting); ``body`` is what the engine gets.
    payload: dict[str, Any] = field(default_factory=dict)


def parse_call(api: Api, raw: bytes) -> EngineCall:
    """Validate an OpenAI request body; raise a 400 that names the offending field."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    try:
        request = _REQUEST_MODELS[api].model_validate(payload)
    except ValidationError as exc:
        raise _invalid(exc) from None
    stream = bool(getattr(request, "stream", False))
    options = payload.get("stream_options") or {}
    if options and not stream:
        raise InvalidRequestError(
            "stream_options is only allowed when stream is true.", param="stream_options"
        )
    if stream:
        payload["stream_options"] = {**options, "include_usage": True, "continuous_usage_stats": True}
    return EngineCall(
        api=api,
        model=str(payload["model"]),
        stream=stream,
        client_usage=bool(options.get("include_usage")),
        client_continuous_usage=bool(options.get("continuous_usage_stats")),
        body=orjson.dumps(payload),
        user=payload.get("user") if isinstance(payload.get("user"), str) else None,
        payload=payload,
    )


def _invalid(exc: ValidationError) -> InvalidRequestError:
    first: Any = exc.errors()[0]
    # The top-level field: deeper parts of a union's location name pydantic's member types.
    param = str(first["loc"][0]) if first["loc"] else None
    message = first["msg"]
    if first["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {message}."
    return InvalidRequestError(message, param=param, code="invalid_value")
