"""Responses at the edge: vLLM's exact JSON and SSE shapes for chat, completions and embeddings.

Field order and which ``null`` fields appear follow vLLM's serialisation: non-streaming bodies are a
full ``model_dump()``; stream chunks are ``exclude_unset`` dumps, so a chat chunk carries ``usage``
only when usage is requested, and the final usage chunk has ``"choices": []``.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from typing import Any, Protocol

import orjson

DONE_EVENT = b"data: [DONE]\n\n"


Usage = dict[str, Any]


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> Usage:
    """``UsageInfo`` in vLLM's field order; ``prompt_tokens_details`` only when ``cached_tokens``
    is given (vLLM's ``--enable-prompt-tokens-details``; running usage never carries it)."""
    info: Usage = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    if cached_tokens is not None:
        info["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return info


def _body_usage(usage_total: Usage) -> Usage:
    """A whole body's usage: vLLM dumps every field, so details are ``null`` when off."""
    return {**usage_total, "prompt_tokens_details": usage_total.get("prompt_tokens_details")}


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class StreamFormat(Protocol):
    """How one endpoint frames its stream; the engine drives it token by token."""

    def opening(self, usage_now: Usage | None) -> bytes | None:
        """The event sent once the prompt is processed, if the endpoint has one."""

    def token(self, text: str, finish_reason: str | None, usage_now: Usage | None) -> bytes:
        """The event carrying one generated token (the last one also carries the finish reason)."""

    def final_usage(self, usage_total: Usage) -> bytes:
        """The trailing ``"choices": []`` event sent when ``include_usage`` is on."""


class ChatStream:
    """``chat.completion.chunk`` events."""

    def __init__(self, model: str) -> None:
        self._head: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

    def opening(self, usage_now: Usage | None) -> bytes | None:
        delta = {"role": "assistant", "content": ""}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        return self._event(choice, usage_now)

    def token(self, text: str, finish_reason: str | None, usage_now: Usage | None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None}
        choice["finish_reason"] = finish_reason
        if finish_reason is not None:
            choice["stop_reason"] = None
        return self._event(choice, usage_now)

    def final_usage(self, usage_total: Usage) -> bytes:
        return sse({**self._head, "choices": [], "usage": usage_total})

    def _event(self, choice: dict[str, Any], usage_now: Usage | None) -> bytes:
        payload = {**self._head, "choices": [choice]}
        if usage_now is not None:
            payload["usage"] = usage_now
        return sse(payload)


class CompletionStream:
    """``text_completion`` events (no opening event: the first token is the first chunk)."""

    def __init__(self, model: str) -> None:
        self._head: dict[str, Any] = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
        }

    def opening(self, usage_now: Usage | None) -> bytes | None:
        return None

    def token(self, text: str, finish_reason: str | None, usage_now: Usage | None) -> bytes:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
        payload = {**self._head, "choices": [choice]}
        if usage_now is not None:
            payload["usage"] = usage_now
        return sse(payload)

    def final_usage(self, usage_total: Usage) -> bytes:
        return sse({**self._head, "choices": [], "usage": usage_total})


def chat_response(model: str, text: str, finish_reason: str, usage_total: Usage) -> bytes:
    """A non-streaming ``chat.completion`` body."""
    message = {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    choice["stop_reason"] = None
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": _body_usage(usage_total),
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }
    return orjson.dumps(body)


def completion_response(model: str, text: str, finish_reason: str, usage_total: Usage) -> bytes:
    """A non-streaming ``text_completion`` body."""
    choice = {
        "index": 0,
        "text": text,
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": None,
        "prompt_logprobs": None,
    }
    body = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": _body_usage(usage_total),
        "kv_transfer_params": None,
    }
    return orjson.dumps(body)


def embedding_response(
    model: str, vectors: list[list[float]], encoding_format: str, prompt_tokens: int
) -> bytes:
    """An embeddings ``list`` body; base64 is little-endian float32, as OpenAI and vLLM encode it."""
    data = [
        {"index": index, "object": "embedding", "embedding": _encode_vector(vector, encoding_format)}
        for index, vector in enumerate(vectors)
    ]
    body = {
        "id": f"embd-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": usage(prompt_tokens, 0),
    }
    return orjson.dumps(body)


def models_response(models: list[str], max_model_len: int, created: int) -> bytes:
    """The ``GET /v1/models`` list."""
    cards = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": name,
            "parent": None,
            "max_model_len": max_model_len,
        }
        for name in models
    ]
    return orjson.dumps({"object": "list", "data": cards})


def _encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
