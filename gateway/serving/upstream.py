"""The HTTP client to engines, over a small transport seam.

``UpstreamTransport`` is the one variation point: ``AiohttpTransport`` in production (aiohttp:
measured cheaper per request than httpx), an in-process fake in tests
(``tests/support/fake_upstream.py``). A transport returns a response exposing the part of
aiohttp's ``ClientResponse`` the gateway uses and raises aiohttp's exceptions, so the production
transport hands back aiohttp's own object (no wrapper, nothing added per chunk) and the mapping of
transport failures onto gateway errors below is the same code under test and in production.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import aiohttp

from gateway.errors import UpstreamError, UpstreamTimeoutError
from gateway.routing.endpoint import Endpoint

logger = logging.getLogger(__name__)

_JSON = "application/json"


class BodyReader(Protocol):
    """A response body as it arrives (aiohttp's ``StreamReader``)."""

    async def readany(self) -> bytes:
        """The next bytes that arrived (waits for some); b"" at the end."""
        ...

    def iter_any(self) -> AsyncIterator[bytes]:
        """Each piece as it arrives, until the end."""
        ...

    def read_nowait(self) -> bytes:
        """What has arrived and not been read, without waiting."""
        ...


class TransportResponse(Protocol):
    """An engine's response once its headers are in (aiohttp's ``ClientResponse``)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> BodyReader: ...

    def close(self) -> None:
        """Drop the connection (idempotent, also after ``release``)."""
        ...

    def release(self) -> Any:
        """Give a fully read connection back to the pool."""
        ...


class UpstreamTransport(Protocol):
    """Sends one POST and returns when the response headers are in; ``fresh``: on a new
    connection, not one from the keep-alive pool.

    Failures are raised as aiohttp raises them: ``aiohttp.ClientError`` subclasses, or
    ``TimeoutError`` for the transport's own timeouts."""

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], fresh: bool = False
    ) -> TransportResponse: ...


class AiohttpTransport:
    """The production transport: one pooled aiohttp session, its responses used as they come,
    and a second one without keep-alive for the rare request that must go on a new connection."""

    def __init__(
        self, session: aiohttp.ClientSession, connect_timeout_s: float, request_timeout_s: float
    ) -> None:
        self._session = session
        self._fresh: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], fresh: bool = False
    ) -> aiohttp.ClientResponse:
        session = self._session
        if fresh:
            session = self._fresh = self._fresh or create_session(keepalive_timeout_s=None)
        return await session.post(url, data=body, headers=headers, timeout=self._timeout)

    async def aclose(self) -> None:
        if self._fresh is not None:
            await self._fresh.close()


class EngineUnreachableError(UpstreamError):
    """No connection could be made: safe to try another engine, nothing was sent."""


class EngineConnectTimeoutError(EngineUnreachableError):
    """The connection was not made within the connect timeout."""


class UpstreamResponse:
    """An engine's response whose body has not been read yet."""

    def __init__(self, response: TransportResponse, endpoint: Endpoint) -> None:
        self._response = response
        self.endpoint = endpoint
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", _JSON)
        self._head = b""  # bytes read ahead by ``read_head``, relayed first by ``chunks``

    async def read_head(self, timeout_s: float) -> None:
        """Wait for the body's first bytes (a vLLM stream's first event comes with its first
        token), keeping them for ``chunks``. Until they come nothing has reached the client, so
        the caller can still answer 504, or try another engine if this one broke off."""
        try:
            async with asyncio.timeout(timeout_s):
                self._head = await self._response.content.readany()
        except TimeoutError:
            raise UpstreamTimeoutError(f"The engine sent no first token within {timeout_s:g}s.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"The engine's response broke off: {type(exc).__name__}") from None
        if not self._head:
            raise UpstreamError("The engine ended its response before the first byte.")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, starting with what ``read_head`` kept."""
        if self._head:
            head, self._head = self._head, b""
            yield head
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError:
            raise UpstreamTimeoutError("The engine did not finish in time.") from None
        except aiohttp.ClientError as exc:
            # The client sees a plain message; the transport's details are for the operator.
            logger.warning("engine %s broke off a response: %r", self.endpoint.url, exc)
            raise UpstreamError("The engine's response broke off.") from None

    async def read(self) -> bytes:
        """The whole body (an error answer: small, and needed whole to reshape it)."""
        return b"".join([chunk async for chunk in self.chunks()])

    def unread(self) -> bytes:
        """What arrived from the engine but was not relayed (the client left meanwhile)."""
        head, self._head = self._head, b""
        try:
            return head + self._response.content.read_nowait()
        except Exception:  # noqa: BLE001 - best effort: a waiting reader, a fired timeout, a broken body
            return head

    async def drain(self, timeout_s: float) -> bytes:
        """What the engine still sends once told the client is gone: the connection is half-closed
        (our side's end of stream), which an engine served by uvicorn takes as a disconnect and
        aborts the request, after writing what it had already produced. Read until the engine
        closes or ``timeout_s`` passes; the caller then ``close``s. Every token the engine sent is
        a token it counted, so a cut stream is billed what the engine made, not what we relayed.
        """
        pieces = [self.unread()]
        transport = _transport_of(self._response)
        if transport is None:
            return pieces[0]
        content = self._response.content
        try:
            transport.write_eof()
            async with asyncio.timeout(timeout_s):
                while piece := await content.readany():
                    pieces.append(piece)
        except (TimeoutError, aiohttp.ClientError, OSError, RuntimeError):
            # An engine that closes mid-body fails the reader, which may still hold bytes.
            pieces.extend(getattr(content, "_buffer", ()))
        return b"".join(pieces)

    def close(self) -> None:
        """Drop the connection: an engine sees the disconnect and aborts the generation."""
        self._response.close()

    def release(self) -> None:
        """Hand a fully read connection back to the pool for reuse."""
        self._response.release()


def _transport_of(response: TransportResponse) -> asyncio.WriteTransport | None:
    """The TCP transport under an aiohttp response, if it can be half-closed."""
    connection = getattr(response, "connection", None)
    transport = getattr(connection, "transport", None)
    if isinstance(transport, asyncio.WriteTransport) and transport.can_write_eof():
        return transport
    return None


class UpstreamClient:
    """Sends a prepared body to one endpoint, mapping transport failures onto gateway errors."""

    def __init__(
        self, transport: UpstreamTransport, first_token_timeout_s: float, engine_api_key: str | None = None
    ) -> None:
        self._transport = transport
        self.first_token_timeout_s = first_token_timeout_s
        # The key engines are started with (vLLM's --api-key / VLLM_API_KEY): only the gateway
        # knows it, so a request that reaches an engine port directly is refused.
        self._auth = {"Authorization": f"Bearer {engine_api_key}"} if engine_api_key else {}

    async def post(self, endpoint: Endpoint, path: str, body: bytes, request_id: str) -> UpstreamResponse:
        headers = {"Content-Type": _JSON, "X-Request-Id": request_id, **self._auth}
        url = endpoint.url + path
        try:
            try:
                response = await self._transport.post(url, body, headers)
            except aiohttp.ClientConnectionError as exc:
                if not _stale_connection(exc):
                    raise
                # A pooled keep-alive connection the engine had closed (its idle timeout raced our
                # send): the engine never saw the request. Once more, on a new connection.
                logger.info("engine %s closed a pooled connection (%r); retrying on a new one", url, exc)
                response = await self._transport.post(url, body, headers, fresh=True)
        except aiohttp.ConnectionTimeoutError:
            raise EngineConnectTimeoutError("Could not connect to the engine in time.") from None
        except TimeoutError:
            raise UpstreamTimeoutError("The engine did not answer in time.") from None
        except aiohttp.ClientConnectionError as exc:
            # Refused, reset (a pooled connection to an engine that died), or closed before the
            # response headers: nothing came back, so another engine may take the request.
            raise EngineUnreachableError(f"Could not reach the engine: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Engine request failed: {type(exc).__name__}") from None
        return UpstreamResponse(response, endpoint)


def _stale_connection(exc: aiohttp.ClientConnectionError) -> bool:
    """A connection that broke before the response headers, as a pooled one the engine closed
    does (disconnected, reset); not one that could not be opened (refused, DNS, connect timeout):
    aiohttp's own retry of idempotent requests draws the same line (RFC 9112, 9.3.1.1)."""
    stale = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientConnectionResetError)
    return isinstance(exc, stale) and not isinstance(exc, aiohttp.ClientConnectorError)


def create_session(keepalive_timeout_s: float | None = 4.0) -> aiohttp.ClientSession:
    """One pooled session for the app's life; keep-alive connections to every engine, dropped
    after ``keepalive_timeout_s`` idle (keep it below the engines' own: uvicorn's is 5 s).
    ``None``: no keep-alive, every request on a new connection."""
    if keepalive_timeout_s is None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, force_close=True)
    else:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=keepalive_timeout_s)
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )
