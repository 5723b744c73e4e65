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

    done: bytes  # the stream's last event (chat and completions: [DONE]; responses: none)

    def opening(self, usage_now: Usage | None) -> bytes | None:
        """The event sent once the prompt is processed, if the endpoint has one."""

    def token(self, text: str, finish_reason: str | None, usage_now: Usage | None) -> bytes:
        """The event carrying one generated token (the last one also carries the finish reason)."""

    def final_usage(self, usage_total: Usage) -> bytes:
        """The trailing ``"choices": []`` event sent when ``include_usage`` is on."""


class ChatStream:
    """``chat.completion.chunk`` events."""

    done = DONE_EVENT

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

    done = DONE_EVENT

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


def response_usage(usage_total: Usage) -> dict[str, Any]:
    """The Responses API's ``usage`` (vLLM's ``ResponseUsage``)."""
    prompt, completion = usage_total["prompt_tokens"], usage_total["completion_tokens"]
    details = usage_total.get("prompt_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": details.get("cached_tokens", 0)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_object(
    response_id: str, model: str, text: str | None, status: str, usage_total: Usage | None
) -> dict[str, Any]:
    """A ``response`` object: in progress (no output, no usage) or finished."""
    output: list[dict[str, Any]] = []
    if text is not None:
        content: list[dict[str, Any]] = [
            {"type": "output_text", "text": text, "annotations": [], "logprobs": None}
        ]
        message = {"id": f"msg_{response_id[5:]}", "type": "message", "role": "assistant"}
        output.append({**message, "status": "completed", "content": content})
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": status,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "usage": response_usage(usage_total) if usage_total is not None else None,
    }


def responses_response(model: str, text: str, finish_reason: str, usage_total: Usage) -> bytes:
    """A non-streaming Responses API body."""
    status = "incomplete" if finish_reason == "length" else "completed"
    return orjson.dumps(response_object(f"resp_{uuid.uuid4().hex}", model, text, status, usage_total))


class ResponsesStream:
    """Responses API events, each with its ``event:`` line as vLLM sends them; the last,
    ``response.completed``, carries the usage. No ``[DONE]``."""

    done = b""

    def __init__(self, model: str) -> None:
        self._model = model
        self._id = f"resp_{uuid.uuid4().hex}"
        self._text: list[str] = []
        self._finish = "stop"
        self._sequence = 0

    def opening(self, usage_now: Usage | None) -> bytes | None:
        created = response_object(self._id, self._model, None, "in_progress", None)
        item = {"id": f"msg_{self._id[5:]}", "type": "message", "role": "assistant", "status": "in_progress"}
        return b"".join(
            (
                self._event("response.created", response=created),
                self._event("response.in_progress", response=created),
                self._event("response.output_item.added", output_index=0, item={**item, "content": []}),
            )
        )

    def token(self, text: str, finish_reason: str | None, usage_now: Usage | None) -> bytes:
        self._text.append(text)
        self._finish = finish_reason or self._finish
        item_id = f"msg_{self._id[5:]}"
        return self._event(
            "response.output_text.delta", item_id=item_id, output_index=0, content_index=0, delta=text
        )

    def final_usage(self, usage_total: Usage) -> bytes:
        status = "incomplete" if self._finish == "length" else "completed"
        done = response_object(self._id, self._model, "".join(self._text), status, usage_total)
        text = "".join(self._text)
        return b"".join(
            (
                self._event("response.output_text.done", output_index=0, content_index=0, text=text),
                self._event("response.output_item.done", output_index=0, item=done["output"][0]),
                self._event(f"response.{status}", response=done),
            )
        )

    def _event(self, kind: str, **fields: Any) -> bytes:
        self._sequence += 1
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        return b"event: " + kind.encode() + b"\n" + sse(payload)


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
