"""Relaying engine responses: split, meter and shape, each a small step.

Every complete upstream SSE event is forwarded as soon as it is whole; nothing waits for the
end of the response. ``UsageTracker`` reads usage as it goes by, so whatever way a response
ends, the tokens the engine produced so far are known.
"""

from __future__ import annotations

import ast
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import EngineError, GatewayError
from gateway.inference import InferenceRequest

logger = logging.getLogger(__name__)

DONE = b"[DONE]"  # the data of a stream's last event
_DATA = b"data: "
_END = b"\n\n"


class SseSplitter:
    """Cuts a byte stream into SSE event blocks (the lines between blank lines), as they came."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The blocks ``chunk`` completes; a block cut short waits for the next chunk."""
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        blocks = data.split(_END)
        self._buffer = blocks.pop()
        return [block for block in blocks if block]


def split_fields(block: bytes) -> tuple[bytes, bytes | None]:
    """(the block's other lines, each ending in a newline; its data, or None if it has none).

    Comments (``: ping``) and ``event:``, ``id:`` and ``retry:`` lines are kept as they came; the
    data lines are joined with newlines, as the SSE spec says."""
    others: list[bytes] = []
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line.startswith(_DATA) else line[5:])
        else:
            others.append(line + b"\n")
    return b"".join(others), b"\n".join(data) if data else None


def event_data(block: bytes) -> bytes | None:
    """The data of one SSE event block (None: a comment, or fields without data)."""
    if block.startswith(_DATA) and b"\n" not in block:
        return block[len(_DATA) :]  # vLLM's every event: one data line
    return split_fields(block)[1]


@dataclass(slots=True)
class UsageTracker:
    """What the engine reported (or, failing that, what was seen) about token usage.

    With ``n > 1`` vLLM's running usage (continuous usage stats) is per choice: each event carries
    one choice and that choice's completion tokens so far, so the total is the sum of the latest
    value of each choice until the final usage chunk (no choices) gives the whole."""

    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, served from the engine's prefix cache
    usage_seen: bool = False
    content_events: int = 0  # fallback count when an engine never reports usage
    first_token_at: float | None = None
    _per_choice: dict[int, int] | None = None  # running completion tokens by choice index (n > 1)

    def _take_usage(self, usage: Any, choices: Any = None) -> None:
        if not isinstance(usage, dict):
            return
        # Chat and completions name them prompt/completion; the Responses API input/output.
        self.prompt_tokens = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        if isinstance(details, dict) and details.get("cached_tokens"):
            self.cached_tokens = int(details["cached_tokens"])
        self.usage_seen = True
        index = choices[0].get("index", 0) if choices and len(choices) == 1 else None
        if index is None or (index == 0 and self._per_choice is None):
            self.completion_tokens = completion  # the whole (or the only choice so far)
            return
        if self._per_choice is None:
            self._per_choice = {0: self.completion_tokens}
        self._per_choice[index] = completion
        self.completion_tokens = sum(self._per_choice.values())

    def take_event(self, event: dict[str, Any]) -> None:
        """Usage and output of one stream event."""
        usage = event.get("usage")
        choices = event.get("choices")
        if usage:
            self._take_usage(usage, choices)
        if choices and _has_output(choices):
            self._saw_output()
        elif "type" in event:  # a Responses API event
            kind = event["type"]
            if kind in _RESPONSE_OUTPUT_EVENTS:
                self._saw_output()
            elif kind in _RESPONSE_END_EVENTS and isinstance(event.get("response"), dict):
                self._take_usage(event["response"].get("usage"))

    def _saw_output(self) -> None:
        self.content_events += 1
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def take_body(self, body: bytes) -> None:
        """Usage from a whole (non-streamed) response body."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if isinstance(payload, dict):
            self._take_usage(payload.get("usage"))

    @property
    def completion_tokens_known(self) -> int:
        """The engine's count when it reported one, else the content events seen."""
        return self.completion_tokens if self.usage_seen else self.content_events

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started


# Responses API stream events: those carrying generated output (one token each, about), and the
# last ones, whose ``response.usage`` is the engine's count (input, output and cached tokens).
_RESPONSE_OUTPUT_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
    }
)
_RESPONSE_END_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _has_output(choices: list[Any]) -> bool:
    for choice in choices:
        delta = choice.get("delta")
        if delta is not None:
            if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
                return True
        elif choice.get("text"):
            return True
    return False


class UsageShaper:
    """Gives the client the usage it asked for; the engine was always asked for all of it."""

    def __init__(self, request: InferenceRequest) -> None:
        self._final_usage = request.include_usage
        self._continuous = request.include_usage and request.continuous_usage

    def shape(self, payload: bytes, event: dict[str, Any]) -> bytes | None:
        """The bytes to send for one event, or None to drop it."""
        if self._continuous or "usage" not in event or event["usage"] is None:
            return payload
        if not event.get("choices"):  # the usage-only final chunk
            return payload if self._final_usage else None
        del event["usage"]
        return orjson.dumps(event)


def error_from_body(status: int, body: bytes, unserved: GatewayError | None = None) -> GatewayError:
    """An engine's whole error answer in OpenAI's shape. vLLM writes ``{"error": {...}}``, older
    versions ``{"object": "error", "message": ..., "code": 400}``, FastAPI ``{"detail": ...}``;
    anything else gets a plain message. FastAPI's 404 ``Not Found`` means the engine does not
    serve the route at all (an embeddings call to a chat model): ``unserved``, when given."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if status == 404 and unserved is not None and payload == _ROUTE_NOT_FOUND:
        return unserved
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict | str):
        error = payload["error"]  # a string: vLLM's answer to a wrong --api-key
        payload = error if isinstance(error, dict) else {"message": error}
    return _engine_error(status, payload if isinstance(payload, dict) else {})


def error_from_event(details: Any) -> EngineError:
    """A stream's error event (``data: {"error": {...}}``) in OpenAI's shape; vLLM puts the HTTP
    status it would have answered with in ``code``."""
    if not isinstance(details, dict):
        details = {"message": details}
    code = details.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    return _engine_error(status, details)


# What an engine's error may say that the client must not see: addresses of our machines.
_ADDRESS = re.compile(r"\b(?:https?|tcp)://\S+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\blocalhost:\d+\b")
# vLLM's validation message: "1 validation error:\n  {'type': ..., 'loc': 'body.x', 'msg': ...}".
_VALIDATION = re.compile(r"^\d+ validation errors?:\s*(\{.*?\})\s*(?:\n|$)", re.DOTALL)
_ROUTE_NOT_FOUND = {"detail": "Not Found"}
ENGINE_FAILED = "The engine serving this model failed while processing your request."
ENGINE_REFUSED = "The engine serving this model refused the request."


def _engine_error(status: int, details: dict[str, Any]) -> EngineError:
    """In OpenAI's shape, saying nothing of our infrastructure. A 5xx (the engine's fault) gets a
    fixed message; 401/403 (the engine refused the gateway, not the client) becomes a 502; a 422
    (a framework's validation answer) becomes OpenAI's 400. The original is logged."""
    message = details.get("message") or details.get("detail")
    param, code = details.get("param"), details.get("code")
    param = param.removeprefix("body.") if isinstance(param, str) else None
    if status >= 500 or status in (401, 403):
        logger.warning("engine error %s: %.500s", status, message)
        return EngineError(status if status >= 500 else 502, ENGINE_FAILED)
    if isinstance(message, list):  # FastAPI's validation details
        message, param = _first_invalid(message[0] if message else None, param)
    elif isinstance(message, str) and (found := _VALIDATION.match(message)):
        message, param = _first_invalid(_literal(found.group(1)), param)
    if not isinstance(message, str) or not message.strip():
        message = f"The engine answered with HTTP status {status}."
    elif "Traceback" in message:
        logger.warning("engine error %s: %.500s", status, message)
        message = ENGINE_REFUSED
    return EngineError(
        400 if status == 422 else status,
        _ADDRESS.sub("[engine]", message),
        param=param,
        code=code if isinstance(code, str) else None,
    )


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _first_invalid(error: Any, param: str | None) -> tuple[str | None, str | None]:
    """One validation error (``{"loc", "msg"}``) as a short sentence and the field it names."""
    if not isinstance(error, dict) or not isinstance(error.get("msg"), str):
        return None, param
    loc = error.get("loc")
    parts = loc.split(".") if isinstance(loc, str) else [str(p) for p in loc or ()]
    field = ".".join(parts[1:] if parts[:1] == ["body"] else parts) or param
    if not field:
        return error["msg"].rstrip(".") + ".", None
    return f"Invalid value for '{field}': {error['msg'].rstrip('.')}.", field


def meter_unread(tail: bytes, splitter: SseSplitter, tracker: UsageTracker) -> None:
    """Count the events of a stream's unrelayed tail (the client left): the engine made and sent
    those tokens, so its counters include them and so must the bill."""
    for block in splitter.feed(tail):
        payload = event_data(block)
        if payload is None or payload == DONE:
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict):
            tracker.take_event(event)


async def relay_events(
    chunks: AsyncIterator[bytes], tracker: UsageTracker, shaper: UsageShaper, splitter: SseSplitter
) -> AsyncIterator[bytes]:
    """SSE in, SSE out: one output write per upstream read, holding nothing back. Events are
    passed on as they came unless shaped; an engine's error event raises ``EngineError`` (after
    what came before it), which the caller sends in OpenAI's shape."""
    async for chunk in chunks:
        out: list[bytes] = []
        for block in splitter.feed(chunk):
            if block.startswith(_DATA) and b"\n" not in block:
                fields, payload = b"", block[len(_DATA) :]  # vLLM's every event: one data line
            else:
                fields, data = split_fields(block)
                if data is None:  # a comment or a lone field: not ours to touch
                    out.append(block + _END)
                    continue
                payload = data
            try:
                event = orjson.loads(payload) if payload != DONE else None
            except orjson.JSONDecodeError:
                event = None  # not ours to judge; pass it on
            if not isinstance(event, dict):
                out.append(block + _END)
                continue
            if "error" in event or event.get("type") == "error":  # chat's, or a Responses event
                if out:
                    yield b"".join(out)
                raise error_from_event(event.get("error", event))
            tracker.take_event(event)
            shaped = shaper.shape(payload, event)
            if shaped is payload:
                out.append(block + _END)
            elif shaped is not None:
                out.append(fields + _DATA + shaped + _END)
        if out:
            yield b"".join(out)


async def relay_body(chunks: AsyncIterator[bytes], tracker: UsageTracker) -> AsyncIterator[bytes]:
    """A non-streamed body, forwarded piece by piece; usage is read from the whole at the end."""
    pieces: list[bytes] = []
    async for chunk in chunks:
        if tracker.first_token_at is None:  # an engine answers a whole body when it is done
            tracker.first_token_at = time.perf_counter()
        pieces.append(chunk)
        yield chunk
    tracker.take_body(b"".join(pieces))
