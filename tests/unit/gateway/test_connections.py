"""The pieces of connection hygiene that need no socket (the server itself: tests/api)."""

from __future__ import annotations

import resource

import orjson
import pytest

from gateway.connections import (
    RESERVED_FDS,
    ConnectionLimits,
    connection_cap,
    error_bytes,
    guarded_protocol,
    raise_open_file_limit,
)
from gateway.errors import InvalidRequestError
from gateway.server import connection_limits, uvicorn_config
from gateway.settings import Settings


def test_the_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    """~1,100 idle connections under the default 1,024 took the gateway down for everyone."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    now = raise_open_file_limit()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard or hard == resource.RLIM_INFINITY
    assert now == soft or soft == resource.RLIM_INFINITY


@pytest.mark.parametrize(
    ("requested", "open_files", "cap"),
    [(4096, 1_048_576, 4096), (4096, 1024, 1024 - RESERVED_FDS), (4096, 0, 4096), (10, 100, 1)],
)
def test_the_connection_cap_leaves_room_for_everything_else(
    requested: int, open_files: int, cap: int
) -> None:
    assert connection_cap(requested, open_files) == cap


def test_a_refusal_is_a_whole_openai_shaped_response_that_closes() -> None:
    error = InvalidRequestError("Too slow.", code="request_timeout")
    error.status_code = 408
    raw = error_bytes(error, "Request Timeout")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in head and f"content-length: {len(body)}".encode() in head
    assert orjson.loads(body) == {
        "error": {
            "message": "Too slow.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        }
    }


def test_the_server_uses_the_guarded_protocol_with_the_settings_limits() -> None:
    settings = Settings(header_timeout_s=3, body_timeout_s=7, max_connections=50, max_header_bytes=4096)
    limits = connection_limits(settings, open_files=1_000_000)
    assert limits == ConnectionLimits(3.0, 7.0, 50, 4096, 100)
    config = uvicorn_config(None, settings, 1_000_000)  # type: ignore[arg-type]
    assert config.timeout_keep_alive == 30
    assert getattr(config.http, "limits", None) == limits
    assert guarded_protocol(limits).limits is limits
