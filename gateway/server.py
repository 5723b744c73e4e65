"""Running the app under uvicorn, with the settings that measured fastest."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import socket
from collections.abc import Coroutine
from typing import Any

import uvicorn
from fastapi import FastAPI

from gateway.app import create_app
from gateway.config.pools import DeploymentSpec
from gateway.connections import ConnectionLimits, connection_cap, guarded_protocol, raise_open_file_limit
from gateway.settings import Settings

logger = logging.getLogger(__name__)

STARTUP_FAILURE = 3  # uvicorn's exit status for a server that never started serving


def connection_limits(settings: Settings, open_files: int = 0) -> ConnectionLimits:
    """What each client connection may take; the connection cap fits ``open_files`` (0: unknown)."""
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=connection_cap(settings.max_connections, open_files),
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
    )


def uvicorn_config(app: FastAPI, settings: Settings, open_files: int = 0) -> uvicorn.Config:
    """uvicorn with the guarded httptools protocol (``gateway.connections``). One of several
    workers names itself in an ``x-gateway-worker`` header (its pid) where internals are public:
    uvicorn adds it to every response at no cost per request."""
    worker = [("x-gateway-worker", str(os.getpid()))] if settings.workers > 1 else []
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",  # the caller's loop (uvloop when installed; see run_async)
        http=guarded_protocol(connection_limits(settings, open_files)),
        lifespan="on",
        access_log=False,  # the ledger is the access log; a line per request costs CPU
        log_level=settings.log_level,
        timeout_keep_alive=math.ceil(settings.keep_alive_timeout_s),
        backlog=4096,
        # SIGTERM: uvicorn closes the listening socket at once (new connections are refused, so
        # readiness fails) and lets requests in flight, streams included, run this long.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
        headers=worker if settings.internals_public else [],
    )


async def serve_gateway(
    settings: Settings, spec: DeploymentSpec | None = None, sockets: list[socket.socket] | None = None
) -> int:
    """Serve until SIGTERM or SIGINT, on ``sockets`` (bound) or else on the settings' host and port;
    0, or ``STARTUP_FAILURE`` when the server never started (the lifespan or the port failed)."""
    open_files = raise_open_file_limit()
    server = uvicorn.Server(uvicorn_config(create_app(settings, spec), settings, open_files))
    freeze_startup_objects()
    await server.serve(sockets)
    return 0 if server.started else STARTUP_FAILURE


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory gateway.server:app_from_env``: one process (several worker
    processes, with what they share set up: ``gateway serve --workers N``, gateway/workers.py)."""
    app = create_app(Settings.load())  # a bad GATEWAY_* variable is named, not a traceback
    freeze_startup_objects()
    return app


def freeze_startup_objects() -> None:
    """Keep what the imports built (about 80,000 objects) out of every later full collection.

    Each full collection walked them all, 40-50 ms with the event loop stopped, several times a
    second under load. Measured with ``benchmarks/overhead.py``: p99 at 16 concurrent requests
    fell from 10-49 ms to 6-10 ms, at 64 from 70-83 ms to 30 ms, and CPU per request by 5-15%.
    """
    gc.collect()
    gc.freeze()


def configure_logging(level: str) -> None:
    """One line per record, on stderr (each worker process too)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_async(main: Coroutine[Any, Any, int | None]) -> int:
    """Run ``main`` on uvloop when it is installed (measured cheaper per request than asyncio)."""
    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(main) or 0)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return int(runner.run(main) or 0)
