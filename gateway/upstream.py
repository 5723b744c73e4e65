"""The HTTP client to engines (aiohttp: measured cheaper per request than httpx)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from gateway.errors import UpstreamError, UpstreamTimeoutError
from gateway.routing import Endpoint

_JSON = "application/json"


class EngineUnreachableError(UpstreamError):
    """No connection could be made: safe to try another engine, nothing was sent."""


class UpstreamResponse:
    """An engine's response whose body has not been read yet."""

    def __init__(self, response: aiohttp.ClientResponse, endpoint: Endpoint) -> None:
        self._response = response
        self.endpoint = endpoint
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", _JSON)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError:
            raise UpstreamTimeoutError("The engine did not finish in time.") from None
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamError(f"The engine's response broke off: {exc}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"The engine's response broke off: {type(exc).__name__}") from None

    def close(self) -> None:
        """Drop the connection: an engine sees the disconnect and aborts the generation."""
        if not self._response.closed:
            self._response.close()

    def release(self) -> None:
        """Hand a fully read connection back to the pool for reuse."""
        self._response.release()


class UpstreamClient:
    """Sends a prepared body to one endpoint, mapping transport failures onto gateway errors."""

    def __init__(
        self, session: aiohttp.ClientSession, connect_timeout_s: float, request_timeout_s: float
    ) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)

    async def post(self, endpoint: Endpoint, path: str, body: bytes, request_id: str) -> UpstreamResponse:
        headers = {"Content-Type": _JSON, "X-Request-Id": request_id}
        try:
            response = await self._session.post(
                endpoint.url + path, data=body, headers=headers, timeout=self._timeout
            )
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
            raise EngineUnreachableError(f"Could not reach the engine: {type(exc).__name__}") from None
        except TimeoutError:
            raise UpstreamTimeoutError("The engine did not answer in time.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Engine request failed: {type(exc).__name__}") from None
        return UpstreamResponse(response, endpoint)


def create_session() -> aiohttp.ClientSession:
    """One pooled session for the app's life; keep-alive connections to every engine."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )
