"""The few ASGI pieces the simulator needs: reading a body, sending a response, noticing a disconnect.

Plain ASGI instead of a framework: the simulator sits under the gateway's benchmarks, and a
request here costs a dict lookup and two ``send`` calls rather than a middleware stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
METRICS_HEADERS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


async def read_body(receive: Receive) -> bytes:
    """The whole request body (the common single-message case avoids any copying)."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def send_response(
    send: Send, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A complete response in two messages, with a content-length so keep-alive needs no chunking."""
    headers = [*(headers or ()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class EventStream:
    """A ``text/event-stream`` response that the engine writes one event at a time."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.closed = False

    async def open(self) -> None:
        """Send the status line and headers (at once, as vLLM does, before the first token)."""
        await self._send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

    async def emit(self, data: bytes, last: bool = False) -> None:
        """Send one event; ``last`` ends the response in the same message."""
        self.closed = last
        await self._send({"type": "http.response.body", "body": data, "more_body": not last})

    async def close(self) -> None:
        """End the response if the stream stopped early (a client that left ignores it)."""
        if not self.closed:
            await self.emit(b"", last=True)


class ClientWatch:
    """Notices the client going away while a response is being produced.

    ASGI reports a disconnect only through ``receive()`` (uvicorn's ``send`` silently drops data for a
    gone client), so a watcher task waits on it. The task starts with the first ``pause`` and is
    stopped by ``close``; ``pause`` wakes early when the client leaves so a slot is freed promptly.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None
        self._sleeper: asyncio.Future[None] | None = None
        self.gone = False
        self.gone_at = 0.0

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (0: just yield to the loop), or less if the client disconnects."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._watch())
        if seconds <= 0 or self.gone:
            await asyncio.sleep(0)
            return
        sleeper: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, sleeper)
        self._sleeper = sleeper
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleeper = None

    def close(self) -> None:
        """Stop watching (the response is done)."""
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self.gone_at = asyncio.get_running_loop().time()
        if self._sleeper is not None:
            _wake(self._sleeper)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
