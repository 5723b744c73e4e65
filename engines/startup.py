"""What a starting engine is doing, read from its log: a phase for progress lines, and when each
phase began (the engine restart benchmark's breakdown).

A vLLM CPU engine takes tens of seconds to start and its log is noisy: its last line is often a
warning that reads like an error ("failed to automatically increase with error current limit
exceeds maximum limit") or a progress bar. Progress lines name the phase instead, from the last
known marker this start has logged (the text after the launcher's ``=== … starting`` header):
markers are matched in log order, not ranked, because a GPU engine captures its CUDA graphs after
sizing the KV cache while a CPU engine warms up before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

STARTING = "starting"  # the process exists; nothing known logged yet (vLLM: Python imports)
CONFIGURING = "reading the model config"
ENGINE_CORE = "starting the engine core"
LOADING = "loading weights"
WARMING_UP = "compiling/warming up"
KV_CACHE = "KV cache ready"
SERVING = "serving"

# (substring of a log line, the phase it begins): vLLM 0.x's own lines (V1 engine, CPU and GPU),
# uvicorn's, and the simulated engine's.
MARKERS: tuple[tuple[str, str], ...] = (
    ("non-default args:", CONFIGURING),
    ("Resolved architecture:", CONFIGURING),
    ("Initializing a V1 LLM engine", ENGINE_CORE),
    ("Starting to load model", LOADING),
    ("Loading safetensors checkpoint shards", LOADING),
    ("Loading weights took", LOADING),
    ("Model loading took", LOADING),
    ("Warming up model", WARMING_UP),
    ("Compiling a graph", WARMING_UP),
    ("torch.compile takes", WARMING_UP),
    ("Memory profiling takes", WARMING_UP),
    ("Capturing CUDA graph", WARMING_UP),
    ("KV cache size:", KV_CACHE),
    ("init engine (profile, create kv cache, warmup model) took", KV_CACHE),
    ("Starting vLLM server on", SERVING),
    ("Starting vLLM API server", SERVING),
    ("Available routes are", SERVING),
    ("Application startup complete", SERVING),
    ("sim engine ready on", SERVING),
)

# The launcher's line before each start (``engines.launcher``), with the full local date.
HEADER = re.compile(r"^=== (?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) starting ", re.MULTILINE)
# vLLM's prefix: ``(APIServer pid=1) INFO 12-02 14:59:47 [file.py:12] …`` (local time, no year).
VLLM_TIME = re.compile(r"^\([^)]*\)\s+[A-Z]+\s+(?P<at>\d\d-\d\d \d\d:\d\d:\d\d)\s")


def current_start(log_text: str) -> str:
    """The part of an engine's log written since its latest start (the log is kept across restarts)."""
    headers = list(HEADER.finditer(log_text))
    return log_text[headers[-1].start() :] if headers else log_text


def _phase_of(line: str) -> str | None:
    return next((phase for marker, phase in MARKERS if marker in line), None)


def startup_phase(log_text: str) -> str:
    """The phase the latest start has reached: that of its last line with a known marker."""
    phase = STARTING
    for line in current_start(log_text).splitlines():
        phase = _phase_of(line) or phase
    return phase


def progress_line(name: str, waited_s: float, log_text: str) -> str:
    """``llama#0 loading weights (12 s)``: one line for someone waiting on an engine's start."""
    return f"{name} {startup_phase(log_text)} ({waited_s:.0f} s)"


@dataclass(frozen=True)
class PhaseMark:
    """A phase and when the engine's log first showed it (1 s resolution: vLLM's timestamps)."""

    phase: str
    at: datetime


def phase_times(log_text: str) -> list[PhaseMark]:
    """When the latest start began (the launcher's header) and first reached each later phase,
    from the log's own timestamps; a phase whose lines carry none (uvicorn's) takes the last
    timestamp seen before it. Empty without a header (a log not written by the launcher)."""
    text = current_start(log_text)
    header = HEADER.match(text)
    if header is None:
        return []
    started = datetime.strptime(header["at"], "%Y-%m-%d %H:%M:%S")
    marks = [PhaseMark(STARTING, started)]
    seen, last = {STARTING}, started
    for line in text.splitlines()[1:]:
        if stamp := VLLM_TIME.match(line):
            last = _with_year(stamp["at"], started)
        phase = _phase_of(line)
        if phase is not None and phase not in seen:
            seen.add(phase)
            marks.append(PhaseMark(phase, last))
    return marks


def _with_year(month_day_time: str, started: datetime) -> datetime:
    """vLLM leaves the year out: the start's, or the next one for a start across New Year."""
    at = datetime.strptime(f"{started.year}-{month_day_time}", "%Y-%m-%d %H:%M:%S")
    return at.replace(year=started.year + 1) if at < started - timedelta(days=1) else at
