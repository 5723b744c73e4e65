"""The load generator's response parsing and percentiles (pure logic, no sockets)."""

from __future__ import annotations

import pytest

from benchmarks.loadgen import Connection, percentile, summarize

SSE_EVENTS = [b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n', b"data: [DONE]\n\n"]


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def feed(response: bytes, step: int) -> list[tuple[bool, int]]:
    """Deliver ``response`` in ``step``-byte reads; return what the connection reported."""
    reported: list[tuple[bool, int]] = []
    connection = Connection(lambda _conn, ok, events: reported.append((ok, events)))
    connection.busy = True
    for start in range(0, len(response), step):
        connection.data_received(response[start : start + step])
    return reported


@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_chunked_stream_is_complete_at_the_last_chunk_and_counts_events(step: int) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert feed(head + chunked(SSE_EVENTS), step) == [(True, 2)]


@pytest.mark.parametrize("step", [1, 10_000])
def test_content_length_body(step: int) -> None:
    response = b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}'
    assert feed(response, step) == [(True, 0)]


def test_error_status_and_error_event_are_failures() -> None:
    assert feed(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}", 100) == [(False, 0)]
    error = [b'data: {"error":{"message":"engine died"}}\n\ndata: [DONE]\n\n']
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert feed(head + chunked(error), 100) == [(False, 2)]


def test_stream_without_done_is_a_failure() -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert feed(head + chunked(SSE_EVENTS[:1]), 100) == [(False, 1)]


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert summarize([0.001, 0.002, 0.003])["p50"] == 2.0
    assert summarize([])["max"] == 0.0
