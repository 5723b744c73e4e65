"""An in-process engine for unit tests: a scripted ``UpstreamTransport`` (like httpx's MockTransport).

A handler gets each ``SentRequest`` and returns a ``Reply`` (status, content type, body), or raises
one of aiohttp's exceptions, which is what a refused, reset or timed-out connection looks like
before the headers; it may also await ``forever()`` to stall before the headers. A body is bytes,
a list of steps, or any async iterable of bytes. Steps are bytes (on the wire already: what
``read_nowait`` sees), ``STALL`` (nothing more comes; a read waits until cancelled) or an exception
(raised to the reader, e.g. ``cut()``: the engine died mid-body). Each read returns one step, so
a test knows exactly which pieces the gateway received. Every request and response is recorded:
``FakeUpstream.requests``, and ``FakeResponse.closed`` / ``released``, to tell a dropped connection
(the engine aborts the generation) from one handed back to the pool.

    upstream = FakeUpstream(in_order(Reply(500), Reply(200, completion(3, 4))))
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import aiohttp
import orjson
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy

JSON = "application/json"
EVENT_STREAM = "text/event-stream"


class _Stall:
    def __repr__(self) -> str:
        return "STALL"


STALL = _Stall()
Step = bytes | _Stall | BaseException


async def forever() -> NoReturn:
    """Never returns (until cancelled): an engine that accepted the request and went quiet."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def refused(host: str = "engine") -> aiohttp.ClientConnectorError:
    """What aiohttp raises when no new connection can be opened: nothing listens on the port."""
    key = ConnectionKey(host, 80, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


def reset() -> aiohttp.ServerDisconnectedError:
    """What aiohttp raises when a pooled keep-alive connection turns out closed by the engine."""
    return aiohttp.ServerDisconnectedError()


def cut() -> aiohttp.ClientPayloadError:
    """What aiohttp raises when the engine's connection drops in the middle of a body."""
    return aiohttp.ClientPayloadError("Response payload is not completed")


@dataclass(frozen=True)
class SentRequest:
    """What the gateway sent to the engine."""

    url: str
    body: bytes
    headers: dict[str, str]
    fresh: bool = False  # sent on a new connection, not a pooled one

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Reply:
    """The engine's answer: a status, a content type and a body (see the module docstring)."""

    status: int = 200
    body: bytes | list[Step] | AsyncIterable[bytes] = b""
    content_type: str = JSON


Handler = Callable[[SentRequest], Reply | Awaitable[Reply]]


class FakeBody:
    """A body read one step at a time, with aiohttp ``StreamReader``'s reading methods."""

    def __init__(self, body: bytes | list[Step] | AsyncIterable[bytes]) -> None:
        self._steps: deque[Step] | None = None
        self._source: AsyncIterator[bytes] | None = None
        if isinstance(body, bytes):
            self._steps = deque([body])
        elif isinstance(body, list):
            self._steps = deque(body)
        else:
            self._source = aiter(body)
        self.dropped = False
        self.half_closed = False  # the gateway ended its side (``write_eof``): the client left

    def half_close(self) -> None:
        """Like an engine told the client is gone: what was scripted after the first stall
        (tokens it had made meanwhile) arrives, and at the next stall it closes the connection."""
        self.half_closed = True
        if self._steps and isinstance(self._steps[0], _Stall):
            self._steps.popleft()

    async def readany(self) -> bytes:
        if self.dropped:
            raise aiohttp.ClientConnectionError("Connection closed")
        if self._source is not None:
            return await anext(self._source, b"")
        assert self._steps is not None
        while self._steps:
            step = self._steps.popleft()
            if isinstance(step, _Stall):
                if self.half_closed:
                    raise cut()
                self._steps.appendleft(step)  # it stays stalled for the next reader too
                await forever()
            if isinstance(step, BaseException):
                raise step
            if step:
                return step
        return b""

    async def iter_any(self) -> AsyncIterator[bytes]:
        while chunk := await self.readany():
            yield chunk

    def read_nowait(self) -> bytes:
        """The bytes steps up to the next stall or error: they had arrived."""
        arrived: list[bytes] = []
        while self._steps and isinstance(step := self._steps[0], bytes):
            arrived.append(step)
            self._steps.popleft()
        return b"".join(arrived)


class _HalfClosable(asyncio.WriteTransport):
    """The part of a TCP transport the gateway uses on a cut stream: ``write_eof``."""

    def __init__(self, body: FakeBody) -> None:
        super().__init__()
        self._body = body

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._body.half_close()


@dataclass
class _Connection:
    transport: _HalfClosable


class FakeResponse:
    """One answer as the gateway sees it; records how the gateway let go of it."""

    def __init__(self, request: SentRequest, reply: Reply) -> None:
        self.request = request
        self.status = reply.status
        self.headers = CIMultiDictProxy(CIMultiDict({"Content-Type": reply.content_type}))
        self.content = FakeBody(reply.body)
        self.connection = _Connection(_HalfClosable(self.content))
        self.closed = False  # the connection was dropped
        self.released = False  # the connection went back to the pool

    def close(self) -> None:
        self.closed = True
        self.content.dropped = True

    def release(self) -> None:
        self.released = True


@dataclass
class FakeUpstream:
    """The transport: answers every POST with the handler's ``Reply``."""

    handler: Handler
    requests: list[SentRequest] = field(default_factory=list)
    responses: list[FakeResponse] = field(default_factory=list)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], fresh: bool = False
    ) -> FakeResponse:
        request = SentRequest(url, body, dict(headers), fresh)
        self.requests.append(request)
        reply = self.handler(request)
        if inspect.isawaitable(reply):
            reply = await reply
        response = FakeResponse(request, reply)
        self.responses.append(response)
        return response


def in_order(*answers: Reply | BaseException | Handler) -> Handler:
    """A handler giving each request the next answer: a reply, an exception raised before the
    headers, or a handler of its own (e.g. one that stalls)."""
    pending = deque(answers)

    async def handle(request: SentRequest) -> Reply:
        assert pending, f"the engine got more requests than the test scripted: {request.url}"
        answer = pending.popleft()
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, Reply):
            return answer
        reply = answer(request)
        return await reply if inspect.isawaitable(reply) else reply

    return handle


# What a vLLM engine sends.


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(prompt: int, completion_tokens: int, text: str = "hi") -> bytes:
    """A whole chat completion body."""
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": usage(prompt, completion_tokens),
        }
    )


def event(payload: object) -> bytes:
    """One SSE event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chunk(content: str | None, prompt: int, completion_tokens: int, choices: bool = True) -> bytes:
    """One stream event with continuous usage (what the gateway asks every engine for)."""
    payload: dict[str, object] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m"}
    delta = {"content": content} if content is not None else {}
    payload["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}] if choices else []
    payload["usage"] = usage(prompt, completion_tokens)
    return event(payload)


DONE = b"data: [DONE]\n\n"
