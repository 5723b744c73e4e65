"""The edge: an OpenAI request body in, the typed internal ``InferenceRequest`` out.

The body is parsed once and validated once with the OpenAI models; everything after the edge
(admission, token counting, routing, the proxy, the relay) reads the typed fields and never the
JSON. What the engine gets is the client's own bytes, unknown fields and all, except that a
stream always asks the engine for usage, whatever the client asked: metering must never depend
on the client.

The request is a frozen dataclass; its parts (messages, prompts) are named tuples, as immutable
and as typed but about three times cheaper to build (0.4 against 1.4 µs, measured on the 2-vCPU
dev machine): parsing is on every request's path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

from gateway.errors import InvalidRequestError
from gateway.protocol import (
    CHAT_ROLES,
    ENGINE_ONLY_FIELDS,
    STATEFUL_RESPONSES_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponsesRequest,
)
from gateway.records import Api, ApiKey

OpenAIRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest
_REQUEST_MODELS: dict[Api, type[OpenAIRequest]] = {
    Api.chat: ChatCompletionRequest,
    Api.completions: CompletionRequest,
    Api.embeddings: EmbeddingRequest,
    Api.responses: ResponsesRequest,
}
_ROLE_LIST = ", ".join(f"'{role}'" for role in CHAT_ROLES)
# The content part types vLLM treats as text, and the field each keeps its text in.
TEXT_PART_FIELDS = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "refusal": "refusal",
    "thinking": "thinking",
}
# What a stream's engine is always asked for (the client's own stream_options are kept beside it).
_ENGINE_STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}
_NOTHING: Mapping[str, Any] = MappingProxyType({})
# How deep a request body may nest. Tool schemas and structured content use a dozen levels;
# orjson accepts 1,024 but cannot encode past 255, and every deep walk costs CPU.
MAX_JSON_DEPTH = 64


class ChatMessage(NamedTuple):
    """One chat message, its content flattened to text as vLLM flattens it for a chat template."""

    role: str  # one of OpenAI's (the edge refuses others)
    text: str  # text parts joined with newlines; images, audio and a null content give nothing
    name: str | None = None
    # The message as sent (tool_calls, tool_call_id, …): a chat template may read any of it.
    sent: Mapping[str, Any] = _NOTHING


class ChatPrompt(NamedTuple):
    """A chat's messages and the vLLM extensions that change how they are rendered.

    The typed messages are built when read rather than at the edge: most requests (no token
    limit, no prefix-aware pool) never read them, and each costs about 0.6 µs to build.
    """

    sent: Sequence[Mapping[str, Any]]  # the messages as sent (validated: each a JSON object)
    tools: tuple[Any, ...] = ()  # tool definitions as sent (JSON objects)
    template_kwargs: Mapping[str, Any] = _NOTHING  # vLLM's chat_template_kwargs
    add_generation_prompt: bool = True

    @property
    def messages(self) -> tuple[ChatMessage, ...]:
        return tuple(map(_message, self.sent))

    def opening(self, count: int) -> tuple[ChatMessage, ...]:
        """The first ``count`` messages, typed (routing reads no further)."""
        return tuple(map(_message, self.sent[:count]))


class TextInput(NamedTuple):
    """A completion's ``prompt`` or an embedding's ``input``: its texts and its token ids."""

    texts: tuple[str, ...] = ()
    token_ids: int = 0  # how many token ids were sent as ids (the engine takes them as they are)

    @property
    def single_text(self) -> str | None:
        """The text of a request for one text prompt (not a batch, not token ids)."""
        return self.texts[0] if len(self.texts) == 1 and not self.token_ids else None


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceRequest:
    """One authenticated OpenAI request, parsed once at the edge; ``body`` is what the engine gets."""

    api: Api
    model: str
    key: ApiKey
    request_id: str
    body: bytes
    session_id: str | None = None  # the x-session-id header
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage as the client sent it
    continuous_usage: bool = False  # stream_options.continuous_usage_stats as the client sent it
    # The output cap: max_completion_tokens (chat), max_output_tokens (responses), else max_tokens.
    max_tokens: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    service_tier: str | None = None  # OpenAI's field, passed through to the engine
    user: str | None = None
    chat: ChatPrompt | None = None  # chat completions; a response's instructions and input
    prompt: TextInput | None = None  # completions
    input: TextInput | None = None  # embeddings


def parse_request(
    api: Api, raw: bytes, *, key: ApiKey, request_id: str, session_id: str | None = None
) -> InferenceRequest:
    """Parse and validate an OpenAI request body; raise a 400 that names the offending field."""
    payload = _json_object(raw)
    _refuse_engine_fields(payload)
    try:
        sent = _REQUEST_MODELS[api].model_validate(payload)
    except ValidationError as exc:
        raise _invalid(exc) from None
    if isinstance(sent, ResponsesRequest):
        return _responses_request(sent, payload, raw, key, request_id, session_id)
    if isinstance(sent, EmbeddingRequest):
        _refuse_stream_options(payload)
        return InferenceRequest(
            api=api,
            model=sent.model,
            key=key,
            request_id=request_id,
            session_id=session_id,
            body=raw,
            user=sent.user,
            input=_text_input(sent.input),
        )
    _check_generation(sent)
    stream = bool(sent.stream)
    if not stream:
        _refuse_stream_options(payload)
    chat = None
    if isinstance(sent, ChatCompletionRequest):
        _check_roles(sent.messages)
        chat = _chat_prompt(sent.messages, payload)
    options = sent.stream_options
    return InferenceRequest(
        api=api,
        model=sent.model,
        key=key,
        request_id=request_id,
        session_id=session_id,
        body=_engine_body(payload) if stream else raw,
        user=sent.user,
        stream=stream,
        include_usage=bool(options and options.include_usage),
        continuous_usage=bool(options and options.continuous_usage_stats),
        max_tokens=_output_cap(sent),
        n=sent.n or 1,
        stop=(sent.stop,) if isinstance(sent.stop, str) else tuple(sent.stop or ()),
        service_tier=sent.service_tier,
        chat=chat,
        prompt=_text_input(sent.prompt) if isinstance(sent, CompletionRequest) else None,
    )


def _responses_request(
    sent: ResponsesRequest,
    payload: Mapping[str, Any],
    raw: bytes,
    key: ApiKey,
    request_id: str,
    session_id: str | None,
) -> InferenceRequest:
    """A Responses API request: relayed as sent (its stream carries usage in its last event)."""
    for name in STATEFUL_RESPONSES_FIELDS:
        if payload.get(name):
            raise InvalidRequestError(
                f"'{name}' is not supported: this gateway stores no responses. "
                "Send the whole conversation in 'input'.",
                param=name,
                code="unsupported_parameter",
            )
    messages: list[Mapping[str, Any]] = []
    if sent.instructions:
        messages.append({"role": "system", "content": sent.instructions})
    if isinstance(sent.input, str):
        messages.append({"role": "user", "content": sent.input})
    else:
        messages.extend(m for m in map(_item_message, sent.input) if m is not None)
    return InferenceRequest(
        api=Api.responses,
        model=sent.model,
        key=key,
        request_id=request_id,
        session_id=session_id,
        body=raw,
        user=sent.user,
        stream=bool(sent.stream),
        max_tokens=sent.max_output_tokens,
        service_tier=sent.service_tier,
        chat=ChatPrompt(messages, tuple(map(_chat_tool, sent.tools or ()))),
    )


def _item_message(item: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A Responses input item as the chat message vLLM renders it as (for counting and affinity)."""
    if "role" in item:
        return item
    kind = item.get("type")
    if kind == "function_call_output":
        return {"role": "tool", "content": str(item.get("output", ""))}
    if kind == "function_call":
        return {"role": "assistant", "content": str(item.get("arguments", ""))}
    return None


def _chat_tool(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """A Responses function tool (flat) in chat's shape (nested under ``function``)."""
    if tool.get("type") != "function" or "function" in tool:
        return tool
    function = {name: tool[name] for name in ("name", "description", "parameters") if name in tool}
    return {"type": "function", "function": function}


def _refuse_engine_fields(payload: Mapping[str, Any]) -> None:
    """vLLM's operational extensions are the operator's, not a tenant's (``ENGINE_ONLY_FIELDS``)."""
    if ENGINE_ONLY_FIELDS.isdisjoint(payload):
        return
    name = min(ENGINE_ONLY_FIELDS.intersection(payload))
    raise InvalidRequestError(
        f"'{name}' is an engine setting this gateway does not accept from clients.",
        param=name,
        code="unsupported_parameter",
    )


def _check_roles(messages: list[dict[str, Any]]) -> None:
    """Each message's role is one of OpenAI's, as a string (``["user"]`` is not ``"user"``)."""
    for index, message in enumerate(messages):
        role = message.get("role")
        if isinstance(role, str) and role in CHAT_ROLES:
            continue
        param = f"messages.[{index}].role"
        if role is None:
            raise InvalidRequestError(
                f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
            )
        shown = role if isinstance(role, str) else orjson.dumps(role).decode()
        raise InvalidRequestError(
            f"Invalid value: '{shown}'. Supported values are: {_ROLE_LIST}.",
            param=param,
            code="invalid_value",
        )


def _output_cap(sent: ChatCompletionRequest | CompletionRequest) -> int | None:
    """Chat's ``max_completion_tokens`` replaced ``max_tokens``; a client may still send either."""
    if isinstance(sent, ChatCompletionRequest) and sent.max_completion_tokens is not None:
        return sent.max_completion_tokens
    return sent.max_tokens


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    # Counting brackets is C-fast; only a body with that many of them can be that deep.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _too_deep(payload, MAX_JSON_DEPTH):
        raise InvalidRequestError(
            f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.", code="invalid_json"
        )
    return payload


def _too_deep(payload: dict[str, Any], limit: int) -> bool:
    """Whether ``payload`` nests objects and arrays more than ``limit`` levels deep (one level of
    the tree at a time: no recursion, which is what the depth would exhaust)."""
    level: list[Any] = [payload]
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def _check_generation(sent: ChatCompletionRequest | CompletionRequest) -> None:
    """What a field's own type cannot say: ``best_of`` no smaller than ``n``."""
    if sent.best_of is not None and sent.best_of < (sent.n or 1):
        raise InvalidRequestError(
            "Invalid value for 'best_of': must be at least n.", param="best_of", code="invalid_value"
        )


def _refuse_stream_options(payload: Mapping[str, Any]) -> None:
    """As OpenAI does for a request that does not stream (an empty object is let through)."""
    if payload.get("stream_options"):
        raise InvalidRequestError(
            "stream_options is only allowed when stream is true.", param="stream_options"
        )


def _engine_body(payload: dict[str, Any]) -> bytes:
    """A stream's body for the engine: the client's, asking for usage on every chunk and at the end."""
    options = payload.get("stream_options") or {}
    payload["stream_options"] = {**options, **_ENGINE_STREAM_OPTIONS}
    return orjson.dumps(payload)


def _chat_prompt(messages: list[dict[str, Any]], payload: Mapping[str, Any]) -> ChatPrompt:
    tools = payload.get("tools")
    kwargs = payload.get("chat_template_kwargs")
    return ChatPrompt(
        messages,
        tuple(tools) if isinstance(tools, list) else (),
        kwargs if isinstance(kwargs, dict) else _NOTHING,
        payload.get("add_generation_prompt", True) is not False,
    )


def _message(sent: Mapping[str, Any]) -> ChatMessage:
    name = sent.get("name")
    return ChatMessage(
        str(sent.get("role", "")),
        content_text(sent.get("content")),
        name if isinstance(name, str) else None,
        sent,
    )


def content_text(content: Any) -> str:
    """A message's content as vLLM gives it to a string-content chat template."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and (name := TEXT_PART_FIELDS.get(part.get("type", ""))):
            text = part.get(name)
            if isinstance(text, str):
                texts.append(text)
    return "\n".join(texts)


def _text_input(value: str | list[str] | list[int] | list[list[int]]) -> TextInput:
    """Pydantic chose one member of the union, so a list holds items of one kind: the first says which."""
    if isinstance(value, str):
        return TextInput((value,))
    if not value:
        return TextInput()
    if isinstance(value[0], str):
        return TextInput(tuple(value))
    if isinstance(value[0], int):
        return TextInput((), len(value))
    return TextInput((), sum(len(ids) for ids in value))


def _invalid(exc: ValidationError) -> InvalidRequestError:
    first: Any = exc.errors()[0]
    # The top-level field: deeper parts of a union's location name pydantic's member types.
    param = str(first["loc"][0]) if first["loc"] else None
    message, code = first["msg"], "invalid_value"
    if first["type"] == "missing":
        message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
    elif param:
        message = f"Invalid value for '{param}': {message}."
    return InvalidRequestError(message, param=param, code=code)
