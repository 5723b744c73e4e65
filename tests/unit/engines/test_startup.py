"""Engine start progress reads as a phase, not as the raw last log line (which is often a warning
that looks like an error), and a start's phases carry the log's own timestamps."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from engines.launcher import ManagedEngine, build_commands
from engines.startup import (
    CONFIGURING,
    ENGINE_CORE,
    KV_CACHE,
    LOADING,
    SERVING,
    STARTING,
    WARMING_UP,
    PhaseMark,
    phase_times,
    progress_line,
    startup_phase,
)
from gateway.config.pools import DeploymentSpec, PoolSpec

# A vLLM 0.32 CPU engine's start, cut down (noise lines kept: they must not count).
PREVIOUS_RUN = """=== 2026-12-02 14:50:01 starting llama#0
(APIServer pid=1) INFO 12-02 14:50:09 [entry.py:140] Starting vLLM server on http://127.0.0.1:8100
"""
VLLM_START = """=== 2026-12-02 14:59:40 starting llama#0
Triton is installed, but doesn't include CPU backend. Disabling Triton.
(APIServer pid=2) INFO 12-02 14:59:47 [api_utils.py:286] non-default args: {'port': 8100}
(APIServer pid=2) WARNING 12-02 14:59:47 [system_utils.py:255] Found ulimit of 20000 and failed to \
automatically increase with error current limit exceeds maximum limit.
(APIServer pid=2) INFO 12-02 14:59:47 [model.py:733] Resolved architecture: LlamaForCausalLM
(EngineCore pid=3) INFO 12-02 14:59:54 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config
(Worker pid=4) INFO 12-02 15:00:02 [cpu_model_runner.py:68] Starting to load model /data/tiny-llama...
Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00, 156.00it/s]
(Worker pid=4) INFO 12-02 15:00:02 [default_loader.py:501] Loading weights took 0.01 seconds
(EngineCore pid=3) INFO 12-02 15:00:03 [utils.py:347] Using LBHNC KV cache layout.
(Worker pid=4) INFO 12-02 15:00:03 [cpu_model_runner.py:87] Warming up model for the compilation...
(Worker pid=4) WARNING 12-02 15:00:05 [decorators.py:333] [backbone] Compiling model again (load failure)
(Worker pid=4) INFO 12-02 15:00:10 [cpu_model_runner.py:91] Warming up done.
(EngineCore pid=3) INFO 12-02 15:00:10 [kv_cache_utils.py:2327] CPU KV cache size: 524,288 tokens
(EngineCore pid=3) INFO 12-02 15:00:10 [core.py:402] init engine (profile, create kv cache, warmup model) \
took 7.55 s
(APIServer pid=2) INFO 12-02 15:00:11 [entry.py:136] Supported tasks: ['generate']
(APIServer pid=2) INFO 12-02 15:00:11 [entry.py:140] Starting vLLM server on http://127.0.0.1:8100
INFO:     Application startup complete.
"""
LINES = VLLM_START.splitlines(keepends=True)


def upto(marker: str) -> str:
    """The log as written up to and including the first line containing ``marker``."""
    end = next(i for i, line in enumerate(LINES) if marker in line)
    return PREVIOUS_RUN + "".join(LINES[: end + 1])


def test_progress_names_the_phase_the_latest_start_reached() -> None:
    assert startup_phase(upto("Triton is installed")) == STARTING  # not the previous run's "serving"
    assert startup_phase(upto("Found ulimit")) == CONFIGURING  # the warning is no phase
    assert startup_phase(upto("Initializing a V1")) == ENGINE_CORE
    assert startup_phase(upto("Loading safetensors")) == LOADING
    assert startup_phase(upto("KV cache layout")) == LOADING  # "KV cache" alone is no marker
    assert startup_phase(upto("Compiling model again")) == WARMING_UP
    assert startup_phase(upto("init engine")) == KV_CACHE
    assert startup_phase(PREVIOUS_RUN + VLLM_START) == SERVING
    assert progress_line("llama#0", 10.4, upto("Found ulimit")) == "llama#0 reading the model config (10 s)"
    assert progress_line("llama#0", 3, "") == "llama#0 starting (3 s)"


def test_a_gpu_engine_captures_graphs_after_sizing_its_kv_cache() -> None:
    log = (
        "(EngineCore_DP0 pid=5) INFO 01-01 10:00:05 [gpu_worker.py:1] Available KV cache memory: 9 GiB\n"
        "(EngineCore_DP0 pid=5) INFO 01-01 10:00:05 [kv_cache_utils.py:1] GPU KV cache size: 80,000 tokens\n"
        "(EngineCore_DP0 pid=5) INFO 01-01 10:00:06 [gpu_model_runner.py:1] Capturing CUDA graphs (mixed)\n"
    )
    assert startup_phase(log) == WARMING_UP  # in log order, not in a fixed order of phases


def test_phase_times_use_the_log_timestamps_of_the_latest_start() -> None:
    def at(clock: str) -> datetime:
        return datetime.fromisoformat(f"2026-12-02 {clock}")

    assert phase_times(PREVIOUS_RUN + VLLM_START) == [
        PhaseMark(STARTING, at("14:59:40")),
        PhaseMark(CONFIGURING, at("14:59:47")),
        PhaseMark(ENGINE_CORE, at("14:59:54")),
        PhaseMark(LOADING, at("15:00:02")),
        PhaseMark(WARMING_UP, at("15:00:03")),
        PhaseMark(KV_CACHE, at("15:00:10")),
        PhaseMark(SERVING, at("15:00:11")),
    ]
    assert phase_times("no header\n") == []


def test_phase_times_carry_a_start_across_new_year() -> None:
    log = (
        "=== 2026-12-31 23:59:58 starting llama#0\n"
        "(APIServer pid=2) INFO 01-01 00:00:04 [entry.py:140] Starting vLLM server on http://x\n"
    )
    assert phase_times(log)[-1] == PhaseMark(SERVING, datetime(2027, 1, 1, 0, 0, 4))


def test_the_launcher_reports_its_engine_start_as_a_phase(tmp_path: Path) -> None:
    spec = DeploymentSpec(pools=[PoolSpec(served_name="llama", engine="sim", base_port=8400)])
    [command] = build_commands(spec, tmp_path)
    engine = ManagedEngine(command, tmp_path / "llama-0.log", started_at=time.monotonic() - 12.2)
    engine.log_path.write_text(upto("Starting to load model"))
    assert engine.progress() == "llama#0 loading weights (12 s)"
