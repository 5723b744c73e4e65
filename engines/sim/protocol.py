"""Requests at the edge: OpenAI JSON in, the simulator's internal request types out.

Parsing is hand-written over the decoded dict (no pydantic models) because it runs on every
request of a benchmark; each check names the offending field the way vLLM's validation does.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from engines.sim.errors import BadRequest, ModelNotFound
from engines.sim.tokens import chat_prompt_tokens, text_prompt_tokens

Endpoint = Literal["chat", "completion", "responses"]
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A chat or completions request reduced to what the simulator acts on."""

    endpoint: Endpoint
    model: str
    prompt_tokens: list[Hashable]
    # The client's limit (max_completion_tokens, else max_tokens); None means "up to the context".
    max_tokens: int | None
    # Which field carried the limit, for error messages; None when it is the endpoint's default.
    max_tokens_field: str | None
    stream: bool
    include_usage: bool
    continuous_usage: bool


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """An embeddings request: one token sequence per input."""

    model: str
    inputs: list[list[Hashable]]
    encoding_format: Literal["float", "base64"]


def decode_body(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object body or raise ``BadRequest``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def resolve_model(body: dict[str, Any], served: list[str]) -> str:
    """The requested model, or the first served one when absent (vLLM's default)."""
    model = body.get("model")
    if model is None:
        return served[0]
    if not isinstance(model, str):
        raise BadRequest("model: Input should be a valid string", param="model")
    if model not in served:
        raise ModelNotFound(model)
    return model


def parse_chat(body: dict[str, Any], served: list[str]) -> GenerationRequest:
    """Validate a ``/v1/chat/completions`` body."""
    model = resolve_model(body, served)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: a non-empty list of messages is required", param="messages")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("messages: each message must be an object with a string role", param="messages")
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    limit = _optional_limit(body, field)
    return _generation("chat", body, model, chat_prompt_tokens(messages), limit, field)


def parse_responses(body: dict[str, Any], served: list[str]) -> GenerationRequest:
    """Validate a ``/v1/responses`` body: ``input`` (a string or a list of items) and optional
    ``instructions``, rendered as chat messages, as vLLM does. Its stream always ends with the
    usage (``response.completed``); nothing is stored."""
    model = resolve_model(body, served)
    raw = body.get("input")
    if isinstance(raw, str):
        messages: list[dict[str, Any]] = [{"role": "user", "content": raw}]
    elif isinstance(raw, list) and raw and all(isinstance(item, dict) for item in raw):
        messages = [_item_message(item) for item in raw]
    else:
        raise BadRequest("input: a string or a non-empty list of input items is required", param="input")
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    if body.get("previous_response_id"):
        raise BadRequest("previous_response_id: responses are not stored", param="previous_response_id")
    limit = _optional_limit(body, "max_output_tokens")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("stream: Input should be a valid boolean", param="stream")
    return GenerationRequest(
        endpoint="responses",
        model=model,
        prompt_tokens=chat_prompt_tokens(messages),
        max_tokens=limit,
        max_tokens_field="max_output_tokens" if limit is not None else None,
        stream=stream,
        include_usage=True,
        continuous_usage=False,
    )


def _item_message(item: dict[str, Any]) -> dict[str, Any]:
    if isinstance(item.get("role"), str):
        return item
    text = item.get("output", item.get("arguments", ""))
    return {"role": "tool", "content": text if isinstance(text, str) else ""}


def parse_completion(body: dict[str, Any], served: list[str]) -> GenerationRequest:
    """Validate a ``/v1/completions`` body (one prompt: a string or a list of token ids).

    An absent ``max_tokens`` means 16, as in OpenAI's legacy API and vLLM; an explicit null means
    "up to the context".
    """
    model = resolve_model(body, served)
    prompt = _single_input(body.get("prompt"), "prompt")
    tokens = text_prompt_tokens(prompt)
    if "max_tokens" not in body:
        return _generation("completion", body, model, tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, None)
    return _generation("completion", body, model, tokens, _optional_limit(body, "max_tokens"), "max_tokens")


def parse_embedding(body: dict[str, Any], served: list[str]) -> EmbeddingRequest:
    """Validate a ``/v1/embeddings`` body: a string, a list of strings, token ids or lists of them."""
    model = resolve_model(body, served)
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(_is_token(t) for t in raw)):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise BadRequest("input: a string, a list of strings or token ids is required", param="input")
    inputs = [text_prompt_tokens(_single_input(item, "input")) for item in items]
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format == "float":
        return EmbeddingRequest(model=model, inputs=inputs, encoding_format="float")
    if encoding_format == "base64":
        return EmbeddingRequest(model=model, inputs=inputs, encoding_format="base64")
    raise BadRequest("encoding_format: must be 'float' or 'base64'", param="encoding_format")


def _generation(
    endpoint: Endpoint,
    body: dict[str, Any],
    model: str,
    tokens: list[Hashable],
    limit: int | None,
    limit_field: str | None,
) -> GenerationRequest:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("stream: Input should be a valid boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("stream_options: Input should be an object", param="stream_options")
    if options and not stream:
        raise BadRequest("Stream options can only be defined when `stream=True`.", param="stream_options")
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("n: the simulator only generates one choice", param="n")
    include_usage = bool(options and options.get("include_usage"))
    return GenerationRequest(
        endpoint=endpoint,
        model=model,
        prompt_tokens=tokens,
        max_tokens=limit,
        max_tokens_field=limit_field,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=include_usage and bool(options and options.get("continuous_usage_stats")),
    )


def _optional_limit(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"{name}: must be an integer >= 1", param=name)
    return value


def _single_input(raw: Any, param: str) -> str | list[int]:
    """One prompt: a non-empty string or token-id list, or a one-element list holding one."""
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str | list):
        raw = raw[0]
    if isinstance(raw, str) and raw.strip():
        return raw
    if isinstance(raw, list) and raw and all(_is_token(t) for t in raw):
        return raw
    if isinstance(raw, list) and len(raw) > 1 and all(isinstance(p, str | list) for p in raw):
        raise BadRequest(f"{param}: batched prompts are not supported by the simulator", param=param)
    raise BadRequest(f"{param}: a non-empty string or list of token ids is required", param=param)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
