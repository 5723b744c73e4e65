"""Connection hygiene in front of the app: what uvicorn does not bound on its own.

uvicorn closes an idle keep-alive connection, but not one that never finishes its headers or its
body (slowloris): each held a file descriptor for as long as the client liked, and ~1,100 idle
connections under a 1,024 open-file limit took the gateway down. Nor does it bound the size or
number of headers. ``GuardedHttpToolsProtocol`` adds, per connection:

- a header timeout from the first byte of a request (or from the connect) to the end of its
  headers, and a body timeout from there to the end of its body: 408;
- a cap on the bytes before the end of the headers and on the number of headers: 431;
- a cap on open connections, refused at connect: 503;

each answered in OpenAI's error shape (``Connection: close``) while no response has started, and
by closing the connection otherwise. ``raise_open_file_limit`` lifts the soft ``RLIMIT_NOFILE``
to the hard one, so the cap, not the kernel, decides when to refuse.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import GatewayError, InvalidRequestError

logger = logging.getLogger(__name__)

# File descriptors kept for everything that is not a client connection: engines, the database,
# Redis, the journal, logs.
RESERVED_FDS = 256
_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}
HEADERS_TOO_LARGE = "request_header_fields_too_large"
# How long a refused client may go on sending (dropped) while it reads the answer.
LINGER_S = 2.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one client connection may take (``GATEWAY_*`` settings; see docs/operations.md)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 4096
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100


class _Refusal(GatewayError):
    """A refusal at the HTTP level: its own status, OpenAI's ``invalid_request_error`` shape."""

    error_type = InvalidRequestError.error_type

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status_code = status


def error_bytes(error: GatewayError, reason: str) -> bytes:
    """A whole HTTP/1.1 response carrying ``error`` in OpenAI's shape, closing the connection."""
    body = error.to_json()
    head = (
        f"HTTP/1.1 {error.status_code} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n"
    )
    extra = "".join(f"{name}: {value}\r\n" for name, value in error.headers.items())
    return (head + extra + "\r\n").encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds above; ``guarded_protocol`` sets ``limits``."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_head = True
        self._head_size = 0  # the request line and headers as parsed
        self._unparsed_head = 0  # bytes received while the headers are still unfinished
        self._header_count = 0
        self._refusal: _Refusal | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            logger.warning("refused a connection: %d open", len(self.connections) - 1)
            transport.write(error_bytes(_busy(), "Service Unavailable"))
            transport.close()
            return
        self._arm(self.limits.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # answered already; the rest is not read
        super().data_received(data)
        if self._reading_head and self._refusal is None:
            # A header still unfinished is buffered by the parser: bound it before it completes.
            self._unparsed_head += len(data)
            if self._unparsed_head > self.limits.max_header_bytes:
                self._refuse(_head_too_large(self.limits))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head, self._head_size, self._unparsed_head, self._header_count = True, 0, 0, 0
        if self._deadline is None:  # a keep-alive connection's next request: time its headers too
            self._arm(self.limits.header_timeout_s, "headers")

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = _Refusal(
                431, HEADERS_TOO_LARGE, f"The request has more than {self.limits.max_headers} headers."
            )
            raise httptools.HttpParserError("too many headers")  # answered by send_400_response
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.limits.max_header_bytes:
            self._refusal = _head_too_large(self.limits)
            raise httptools.HttpParserError("headers too large")

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._arm(self.limits.body_timeout_s, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to whatever the parser refused, in OpenAI's shape; a refusal of ours
        reaches here as a parser error and keeps its own status."""
        self._refuse(self._refusal or _Refusal(400, "invalid_http_request", msg))

    def _refuse(self, refusal: _Refusal) -> None:
        """Answer, then close: at once for a client that can no longer send, else after it had
        ``LINGER_S`` to read the answer (closing with its data unread would reset the connection
        and lose the answer); what it sends meanwhile is dropped."""
        self._refusal = refusal
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() ends, and its answer goes nowhere
            cycle.message_event.set()
        if self.transport.is_closing():
            return
        self.transport.write(error_bytes(refusal, _REASONS[refusal.status_code]))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._deadline = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _arm(self, delay_s: float, part: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, self._timed_out, part, delay_s)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self, part: str, delay_s: float) -> None:
        """The client took too long to send its headers or body: 408, or only the close when
        an answer is already on its way (the app answered without reading the whole body)."""
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.close()
            return
        message = f"The request's {part} did not arrive within {delay_s:g} seconds."
        self._refuse(_Refusal(408, "request_timeout", message))


def _busy() -> GatewayError:
    busy = GatewayError("The server has too many open connections. Please try again shortly.")
    busy.status_code, busy.error_type, busy.code = 503, "service_unavailable", "too_many_connections"
    busy.headers["retry-after"] = "1"
    return busy


def _head_too_large(limits: ConnectionLimits) -> _Refusal:
    return _Refusal(431, HEADERS_TOO_LARGE, f"The request's headers exceed {limits.max_header_bytes} bytes.")


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with ``limits`` (uvicorn builds one
    per connection from the class alone)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def raise_open_file_limit() -> int:
    """Lift the soft open-file limit to the hard one where the platform allows; the limit now."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            logger.warning("could not raise the open-file limit from %d to %d", soft, target)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(requested: int, open_files: int) -> int:
    """``requested`` connections, fewer when the open-file limit cannot hold them and the rest."""
    if open_files <= 0:
        return requested
    cap = max(1, min(requested, open_files - RESERVED_FDS))
    if cap < requested:
        logger.warning(
            "GATEWAY_MAX_CONNECTIONS=%d lowered to %d: the open-file limit is %d",
            requested,
            cap,
            open_files,
        )
    return cap
