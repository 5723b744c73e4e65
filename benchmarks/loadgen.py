"""A lean HTTP/1.1 load generator, run as its own process so its CPU never mixes with the gateway's.

Requests are pre-built bytes written on keep-alive connections by ``asyncio.Protocol`` callbacks
(no task per request), and responses are parsed only as far as needed: the status, the body's
framing (``content-length`` or chunked) and the number of SSE events. Measured on the 2-core
benchmark machine this costs about a quarter of what an aiohttp client does per request, which
keeps the generator off the critical path (see ``benchmarks/RESULTS.md``).

The parent process (``benchmarks/overhead.py``) sends one JSON phase per stdin line and reads one
JSON result per stdout line::

    {"host": "127.0.0.1", "port": 8000, "request": "<latin-1 text>", "mode": "closed",
     "concurrency": 16, "duration_s": 5, "warmup_s": 0.5}
    {"mode": "open", "rate": 300, ...}

Open loop follows a fixed schedule paced by a thread (``time.sleep`` is far finer than the event
loop's millisecond timers); latency is measured from the scheduled send time, so a generator that
falls behind shows up as latency instead of hiding it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.IGNORECASE)
_EVENT = b"data: "
_DONE = b"data: [DONE]"


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, on_response: Callable[[Connection, bool, int], None]) -> None:
        self._on_response = on_response
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.busy = False
        self._buffer = bytearray()
        self._reset()

    def _reset(self) -> None:
        self._buffer.clear()
        self._in_head = True
        self._status = 0
        self._remaining = -1  # body bytes still due; -1 while the body is chunked
        self._events = 0
        self._done_seen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, request: bytes, sent_at: float) -> None:
        assert self.transport is not None
        self._reset()
        self.busy, self.sent_at = True, sent_at
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._in_head:
            end = buffer.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            self._in_head = False
            self._status = int(head[9:12])
            length = _CONTENT_LENGTH.search(head)
            self._remaining = -1 if _CHUNKED.search(head) else int(length.group(1)) if length else 0
        if self._remaining >= 0:
            if len(buffer) >= self._remaining:
                self._finish(self._status == 200)
            return
        self._read_chunks()

    def _read_chunks(self) -> None:
        buffer, pos = self._buffer, 0
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(bytes(buffer[pos:line_end]).split(b";", 1)[0], 16)
            if size == 0:
                if len(buffer) >= line_end + 4:  # the empty trailer's CRLF
                    self._finish(self._status == 200 and (self._events == 0 or self._done_seen))
                    return
                break
            end = line_end + 2 + size
            if len(buffer) < end + 2:
                break
            self._events += buffer.count(_EVENT, line_end + 2, end)
            if not self._done_seen and buffer.find(_DONE, line_end + 2, end) >= 0:
                self._done_seen = True
                if buffer.find(b'{"error"', line_end + 2, end) >= 0:
                    self._status = -1  # an error event ended the stream
            pos = end + 2
        del buffer[:pos]

    def _finish(self, ok: bool) -> None:
        self.busy = False
        self._on_response(self, ok, self._events)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self._finish(False)


@dataclass
class Recorder:
    """Latencies and counts inside the measured window."""

    window_start: float
    window_end: float
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    errors: int = 0
    events: int = 0
    served: int = 0  # every response of the phase, warm-up included (for CPU per request)
    served_events: int = 0

    def count(self, events: int) -> None:
        self.served += 1
        self.served_events += events

    def add(self, latency: float, ok: bool, events: int) -> None:
        if ok:
            self.latencies.append(latency)
            self.events += events
        else:
            self.errors += 1

    def result(self, cpu_s: float, extra_connections: int = 0) -> dict[str, Any]:
        seconds = self.window_end - self.window_start
        done = len(self.latencies)
        return {
            "requests": done,
            "errors": self.errors,
            "seconds": round(seconds, 3),
            "rps": done / seconds,
            "events": self.events,
            "events_per_s": self.events / seconds,
            "latency_ms": summarize(self.latencies),
            "send_lag_ms": summarize(self.lags),
            "client_cpu_ms_per_request": 1000 * cpu_s / max(done + self.errors, 1),
            "extra_connections": extra_connections,
            "served": self.served,
            "served_events": self.served_events,
        }


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (``q`` in 0..100) of a sorted list."""
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples: list[float]) -> dict[str, float]:
    """Milliseconds: mean, p50, p90, p99, p99.9 and max."""
    ordered = sorted(samples)
    mean = sum(ordered) / len(ordered) if ordered else 0.0
    points = {"mean": mean, "p50": percentile(ordered, 50), "p90": percentile(ordered, 90)}
    points |= {"p99": percentile(ordered, 99), "p99.9": percentile(ordered, 99.9)}
    points["max"] = ordered[-1] if ordered else 0.0
    return {name: round(1000 * value, 4) for name, value in points.items()}


async def _connect(host: str, port: int, on_response: Callable[[Connection, bool, int], None]) -> Connection:
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(lambda: Connection(on_response), host, port)
    return connection


async def closed_loop(phase: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` connections, each sending its next request as soon as a response ends."""
    request = phase["request"].encode("latin-1")
    finished = asyncio.get_running_loop().create_future()
    active = phase["concurrency"]
    recorder = Recorder(0.0, 0.0)

    def on_response(connection: Connection, ok: bool, events: int) -> None:
        nonlocal active
        now = time.perf_counter()
        recorder.count(events)
        # A window that no response ended in (a tiny --quick window on a busy machine) stays
        # open until one does, so every phase reports something.
        in_window = now <= recorder.window_end or not (recorder.latencies or recorder.errors)
        if recorder.window_start <= now and in_window:
            recorder.add(now - connection.sent_at, ok, events)
            recorder.window_end = max(recorder.window_end, now)
        if now < recorder.window_end and connection.transport is not None:
            connection.send(request, now)
            return
        active -= 1
        if active == 0 and not finished.done():
            finished.set_result(None)

    cpu = time.process_time()
    connections = [await _connect(phase["host"], phase["port"], on_response) for _ in range(active)]
    start = time.perf_counter()  # after connecting: the window measures requests only
    recorder.window_start = start + phase["warmup_s"]
    recorder.window_end = recorder.window_start + phase["duration_s"]
    for connection in connections:
        connection.send(request, time.perf_counter())
    await finished
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    return recorder.result(time.process_time() - cpu)


def _pace(
    loop: asyncio.AbstractEventLoop, times: list[float], fire: Callable[[int], None], stop: threading.Event
) -> None:
    """Runs in a thread: wake at each scheduled time and hand the send to the event loop."""
    for index, when in enumerate(times):
        delay = when - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if stop.is_set():
            return
        loop.call_soon_threadsafe(fire, index)


async def open_loop(phase: dict[str, Any]) -> dict[str, Any]:
    """Sends at a fixed rate whatever the responses do; a busy pool grows a new connection."""
    loop = asyncio.get_running_loop()
    host, port, request = phase["host"], phase["port"], phase["request"].encode("latin-1")
    rate, warmup = phase["rate"], phase["warmup_s"]
    total = int(rate * (warmup + phase["duration_s"]))
    start = time.perf_counter() + 0.05
    times = [start + i / rate for i in range(total)]
    # Requests scheduled inside the window count, whenever their responses end.
    recorder = Recorder(start + warmup, times[-1] + 1 / rate)
    idle: deque[Connection] = deque()
    outstanding = total
    finished = loop.create_future()
    extra = 0

    def on_response(connection: Connection, ok: bool, events: int) -> None:
        nonlocal outstanding
        now = time.perf_counter()
        recorder.count(events)
        if connection.sent_at >= recorder.window_start:
            recorder.add(now - connection.sent_at, ok, events)
        outstanding -= 1
        if connection.transport is not None:
            idle.append(connection)
        if outstanding == 0 and not finished.done():
            finished.set_result(None)

    def fire(index: int) -> None:
        scheduled = times[index]
        if idle:
            send(idle.pop(), scheduled)
        else:
            loop.create_task(_send_on_new(scheduled))

    def send(connection: Connection, scheduled: float) -> None:
        if scheduled >= recorder.window_start:
            recorder.lags.append(time.perf_counter() - scheduled)
        connection.send(request, scheduled)

    async def _send_on_new(scheduled: float) -> None:
        nonlocal extra
        extra += 1
        send(await _connect(host, port, on_response), scheduled)

    cpu = time.process_time()
    for _ in range(phase.get("connections", 16)):
        idle.append(await _connect(host, port, on_response))
    stop = threading.Event()
    pacer = threading.Thread(target=_pace, args=(loop, times, fire, stop), daemon=True)
    pacer.start()
    try:
        await asyncio.wait_for(finished, timeout=times[-1] - time.perf_counter() + 30)
    finally:
        stop.set()
        for connection in idle:
            if connection.transport is not None:
                connection.transport.close()
    return recorder.result(time.process_time() - cpu, extra)


async def serve_phases() -> None:
    """Read phases from stdin, write results to stdout, until stdin closes."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        phase = orjson.loads(line)
        runner = closed_loop if phase["mode"] == "closed" else open_loop
        try:
            result = await runner(phase)
        except Exception as exc:  # report, and stay alive for the next phase
            result = {"failure": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        sys.stdout.flush()


def main() -> None:
    import uvloop

    uvloop.run(serve_phases())


if __name__ == "__main__":
    main()
