"""Relaying engine responses: split, meter and shape, each a small step.

Every complete upstream SSE event is forwarded as soon as it is whole; nothing waits for the
end of the response. ``UsageTracker`` reads usage as it goes by, so whatever way a response
ends, the tokens the engine produced so far are known.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.inference import InferenceRequest

DONE = b"[DONE]"
_DATA = b"data: "


class SseSplitter:
    """Cuts a byte stream into SSE event payloads (the text after ``data: ``)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        parts = data.split(b"\n\n")
        self._buffer = parts.pop()
        return [p[len(_DATA) :] if p.startswith(_DATA) else p for p in parts if p]


@dataclass(slots=True)
class UsageTracker:
    """What the engine reported (or, failing that, what was seen) about token usage."""

    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_seen: bool = False
    content_events: int = 0  # fallback count when an engine never reports usage
    first_token_at: float | None = None
    error: dict[str, Any] | None = None

    def take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            self.usage_seen = True

    def take_event(self, event: dict[str, Any]) -> None:
        usage = event.get("usage")
        if usage:
            self.take_usage(usage)
        choices = event.get("choices")
        if choices and _has_output(choices):
            self.content_events += 1
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        if "error" in event and isinstance(event["error"], dict):
            self.error = event["error"]

    def take_body(self, body: bytes) -> None:
        """Usage from a whole (non-streamed) response body."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if isinstance(payload, dict):
            self.take_usage(payload.get("usage"))
            if isinstance(payload.get("error"), dict):
                self.error = payload["error"]

    @property
    def completion_tokens_known(self) -> int:
        return self.completion_tokens if self.usage_seen else self.content_events

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started


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


def meter_unread(tail: bytes, splitter: SseSplitter, tracker: UsageTracker) -> None:
    """Count the events of a stream's unrelayed tail (the client left): the engine made and sent
    those tokens, so its counters include them and so must the bill."""
    for payload in splitter.feed(tail):
        if payload != DONE:
            try:
                tracker.take_event(orjson.loads(payload))
            except orjson.JSONDecodeError:
                continue


async def relay_events(
    chunks: AsyncIterator[bytes], tracker: UsageTracker, shaper: UsageShaper, splitter: SseSplitter
) -> AsyncIterator[bytes]:
    """SSE in, SSE out: one output write per upstream read, holding nothing back."""
    async for chunk in chunks:
        out: list[bytes] = []
        for payload in splitter.feed(chunk):
            if payload == DONE:
                out.append(b"data: [DONE]\n\n")
                continue
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                out.append(_DATA + payload + b"\n\n")  # not ours to judge; pass it on
                continue
            tracker.take_event(event)
            shaped = shaper.shape(payload, event)
            if shaped is not None:
                out.append(_DATA + shaped + b"\n\n")
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
