"""Noticing that the client went away, so the engine's work for it can be cut short."""

from __future__ import annotations

import asyncio

from starlette.types import Receive


class ClientDisconnectedError(Exception):
    """The client went away while the gateway was waiting on the engine or relaying its answer."""


class DisconnectWatch:
    """``async with DisconnectWatch(receive):`` cancels the block when the client disconnects, which
    then raises ``ClientDisconnectedError``. One plain task: Starlette's task group per response
    cost 0.07-0.2 ms of CPU per stream (benchmarks/overhead.py). Only valid once the request body
    has been read: the next ASGI message can then only be the disconnect."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._gone = False

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        if self._task is not None:
            self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._watcher.cancel()
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and self._gone:
            if self._task is not None:
                self._task.uncancel()
            raise ClientDisconnectedError from None
