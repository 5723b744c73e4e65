"""Slow and oversized clients against the real server (uvicorn with the guarded protocol) on a
loopback port: each is answered in OpenAI's shape and closed within its bound, and ordinary
requests keep being served meanwhile (issue 18, item 2)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn

from gateway.app import create_app
from gateway.server import uvicorn_config
from gateway.settings import Settings
from gateway.state import GatewayState
from gateway.tenancy.auth import generate_key
from tests.conftest import pool_spec

LIMITS: dict[str, Any] = {
    "header_timeout_s": 0.5,
    "body_timeout_s": 0.5,
    "max_connections": 8,
    "max_header_bytes": 8 * 1024,
    "max_headers": 50,
}


@dataclass
class Served:
    port: int
    state: GatewayState


@pytest.fixture
async def server(sim_engine: str, tmp_path: Path) -> AsyncIterator[Served]:
    """The gateway served by uvicorn as ``gateway serve`` configures it, on a loopback port."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'g.db'}", data_dir=tmp_path, **LIMITS)
    app = create_app(settings, pool_spec(sim_engine))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn_config(app, settings)
    config.log_level = "warning"
    served = uvicorn.Server(config)
    task = asyncio.create_task(served.serve(sockets=[sock]))
    while not served.started:
        assert not task.done()
        await asyncio.sleep(0.02)
    try:
        yield Served(sock.getsockname()[1], app.state.gateway)
    finally:
        served.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def answer(reader: asyncio.StreamReader, within_s: float = 3.0) -> tuple[int, dict[str, Any]]:
    """The whole answer up to the server's close: (status, JSON body)."""
    raw = await asyncio.wait_for(reader.read(), within_s)  # EOF: the server closed it
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(head.split()[1]), orjson.loads(body)


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def health(port: int) -> int:
    async with connection(port) as (reader, writer):
        writer.write(b"GET /health HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 3)
    return int(raw.split()[1])


async def test_an_idle_connection_is_closed_after_the_header_timeout(server: Served) -> None:
    started = time.monotonic()
    async with connection(server.port) as (reader, _):
        status, body = await answer(reader)
    assert 0.4 <= time.monotonic() - started < 2.5
    assert status == 408
    assert error_of(body) == {
        "message": "The request's headers did not arrive within 0.5 seconds.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_timeout",
    }


async def test_dripping_headers_do_not_keep_the_connection(server: Served) -> None:
    async with connection(server.port) as (reader, writer):
        writer.write(b"GET /health HTTP/1.1\r\nHost: g\r\n")
        started = time.monotonic()
        answered = asyncio.create_task(answer(reader))
        while not answered.done() and time.monotonic() - started < 3:
            writer.write(b"x")  # a byte every 0.1 s: each well inside any per-read timeout
            await asyncio.sleep(0.1)
        status, body = await answered
    assert status == 408 and error_of(body)["code"] == "request_timeout"
    assert time.monotonic() - started < 2.0


async def test_a_body_that_never_arrives_is_cut_off(server: Served) -> None:
    await server.state.store.create_tenant("slow")
    new = generate_key()
    await server.state.store.create_key("slow", new.key_hash, new.prefix, None, None)
    async with connection(server.port) as (reader, writer):
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + new.secret.encode() + b"\r\nContent-Length: 1000\r\n\r\n{"
        )
        status, body = await answer(reader)
    assert status == 408
    assert error_of(body)["message"] == "The request's body did not arrive within 0.5 seconds."
    await server.state.ledger.flush()
    [row] = await server.state.store.list_usage()
    assert (row.outcome, row.http_status) == ("aborted", 499)  # metered as a client that went away


async def test_an_answer_given_before_the_body_still_closes_at_the_body_timeout(server: Served) -> None:
    async with connection(server.port) as (reader, writer):
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: 1000\r\n\r\n{")
        raw = await asyncio.wait_for(reader.read(), 3)  # to EOF: closed, although keep-alive
    assert raw.startswith(b"HTTP/1.1 401 ")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (b"X-Big: " + b"a" * (1024 * 1024) + b"\r\n", "The request's headers exceed 8192 bytes."),
        (b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)), "The request has more than 50 headers."),
        (b"X-Big: " + b"a" * 9000 + b"\r\n", "The request's headers exceed 8192 bytes."),
    ],
)
async def test_oversized_or_countless_headers_get_431(server: int, extra: bytes, message: str) -> None:
    async with connection(server.port) as (reader, writer):
        writer.write(b"GET /health HTTP/1.1\r\nHost: g\r\n" + extra + b"\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        status, body = await answer(reader)
    assert status == 431
    assert error_of(body) == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": "request_header_fields_too_large",
    }


async def test_past_the_connection_cap_a_new_connection_is_refused_and_the_rest_keep_working(
    server: Served,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(LIMITS["max_connections"]):
            await stack.enter_async_context(connection(server.port))
        await asyncio.sleep(0.05)
        async with connection(server.port) as (reader, _):
            status, body = await answer(reader, within_s=0.4)  # at once, not after a timeout
        assert status == 503
        assert error_of(body)["type"] == "service_unavailable"
        assert error_of(body)["code"] == "too_many_connections"
    await asyncio.sleep(0.05)
    assert await health(server.port) == 200  # the idle ones are gone: room again


async def test_ordinary_requests_are_served_while_slow_clients_wait(server: Served) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(4):
            _, writer = await stack.enter_async_context(connection(server.port))
            writer.write(b"GET /health HTTP/1.1\r\n")  # never finished
        started = time.monotonic()
        assert [await health(server.port) for _ in range(5)] == [200] * 5
        assert time.monotonic() - started < 1.0
