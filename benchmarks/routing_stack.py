"""What the routing benchmarks run: a launched engine pool, gateway processes over it, and a
streaming chat client that records what the client saw of each request.

Everything listens on 127.0.0.1 only, and every process started here is stopped on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
import yaml

from benchmarks.stack import tenant_key
from engines.launcher import EngineLauncher
from engines.placement import BIND_VARIABLE
from gateway.config.pools import DeploymentSpec, PoolSpec
from tests.support.metrics import total
from tests.support.processes import REPO, Process, free_port

MODEL = "llama"  # the served name, whichever built-in Llama serves it
# ``tiny``: the tests' model, whose prefill costs next to nothing; ``small``: prefill costs time, as
# with real weights, so cache hits show in TTFT (engines.tiny_model.SMALL).
MODEL_SOURCES = {"tiny": "builtin:tiny-llama", "small": "builtin:small-llama"}
VLLM_ARGS = ["--max-model-len", "16384", "--max-num-seqs", "8", "--dtype", "float32"]
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
# vLLM's CPU "auto" binding pins every replica's worker to the same core (core 0 of two), and a
# worker busy-polls for 1 s after each step (shm_broadcast ``busy_loop_s``): the replica that
# worked last then starves the other for about a second. ``split``: the launcher gives each
# engine its own core (engines/placement.py); measured better than unpinned (``nobind``) under
# load (benchmarks/RESULTS.md).
OMP_BIND = "split"
# Shared with the tests and `gateway up`, so the tiny model is built once per machine.
DATA_DIR = Path(os.environ.get("GATEWAY_DATA_DIR", REPO / "data"))
READY_TIMEOUT_S = 900.0
HITS, QUERIES = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"
RUNNING, WAITING = "vllm:num_requests_running", "vllm:num_requests_waiting"
SUCCESS = "vllm:request_success_total"
ENGINE_METRICS = (HITS, QUERIES, SUCCESS, RUNNING, WAITING)
# Prompt text: about 1.5 tokens a word with the tiny model's tokenizer.
WORDS = tuple(
    "account answer area article bank board budget call case change city client code company cost "
    "country customer data date day decision delivery design detail document effect email energy error "
    "event fact family file form friend goal group health history home hour idea issue job key language "
    "law level line list market meeting member message method minute model money month name network "
    "night number office order page paper part party person phone picture place plan point policy price "
    "problem process product program project question rate reason record report request result review "
    "risk room rule sale school score screen service session side size source space staff step story "
    "system table task team term test thing time tool topic total training type update user value "
    "version view water week word work world year always never often quickly slowly today carefully "
    "check send open close read write find keep move pay show start stop take turn use wait".split()
)

Kind = Literal["ok", "failed_before_stream", "cut_mid_stream"]
KINDS: tuple[Kind, ...] = ("ok", "failed_before_stream", "cut_mid_stream")


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def free_ports(count: int) -> int:
    """A port ``p`` such that ``p`` .. ``p + count - 1`` are all free (a launched pool's ports)."""
    while True:
        base = free_port()
        if base + count <= 65535 and all(_bindable(base + i) for i in range(1, count)):
            return base


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pool_spec(
    engine: Literal["vllm", "sim"],
    replicas: int,
    sim_args: list[str],
    omp_bind: str = OMP_BIND,
    kv_blocks: int | None = None,
    model: str = "tiny",
) -> PoolSpec:
    """A built-in Llama (``MODEL_SOURCES``) on ``replicas`` vLLM CPU engines (as the e2e tests run
    the tiny one, but for ``omp_bind``: ``VLLM_CPU_OMP_THREADS_BIND``, ``split`` leaving it to the
    launcher, which gives each engine its own cores; ``kv_blocks``: a smaller KV
    cache, in blocks of 128 tokens), or on simulated engines."""
    vllm = engine == "vllm"
    blocks = ["--num-gpu-blocks-override", str(kv_blocks)] if kv_blocks else []
    return PoolSpec(
        served_name=MODEL,
        model=MODEL_SOURCES[model],
        engine=engine,
        replicas=replicas,
        base_port=free_ports(replicas),
        vllm_args=VLLM_ARGS + blocks if vllm else sim_args,
        env=(VLLM_ENV | ({} if omp_bind == "split" else {BIND_VARIABLE: omp_bind})) if vllm else {},
    )


@contextlib.asynccontextmanager
async def launched(
    pool: PoolSpec, log_dir: Path, progress: Callable[[str], None] = print
) -> AsyncIterator[EngineLauncher]:
    """The pool's engines, healthy; all stopped on the way out."""
    launcher = EngineLauncher(DeploymentSpec(pools=[pool]), DATA_DIR, log_dir)
    try:
        await launcher.start()
        await launcher.wait_ready(READY_TIMEOUT_S, progress)
        yield launcher
    finally:
        await launcher.stop()


# What the benchmark's tenants pay, to show what a cache hit saves them (Llama 3.1 8B-like prices;
# cached input at the default 0.1 of the input price).
PRICES = f"""currency: USD
prices:
  - {{model: {MODEL}, effective: 2026-01-01, prompt_per_million: "0.22", completion_per_million: "0.22"}}
"""


def gateway_env(tmp: Path) -> dict[str, str]:
    """What every gateway of a run shares: one SQLite ledger (tenants made once), no limits."""
    (tmp / "no-limits.yaml").write_text("defaults:\n")
    (tmp / "prices.yaml").write_text(PRICES)
    return {
        "GATEWAY_PRICES_PATH": str(tmp / "prices.yaml"),
        "GATEWAY_DATABASE_URL": f"sqlite:///{tmp / 'gateway.db'}",
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_LIMITS_PATH": str(tmp / "no-limits.yaml"),
        "GATEWAY_DATA_DIR": str(tmp / "data"),
    }


def create_keys(env: dict[str, str], tenants: int) -> list[str]:
    """Tenants ``app0`` .. with one key each."""
    return [tenant_key(env, f"app{i}") for i in range(tenants)]


def ledger_endpoints(env: dict[str, str]) -> dict[str, str]:
    """Request id → the engine that served it, from the (SQLite) ledger of ``gateway_env``."""
    path = env["GATEWAY_DATABASE_URL"].removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT request_id, endpoint FROM usage_ledger"))


def ledger_costs(env: dict[str, str], request_ids: list[str]) -> dict[str, int]:
    """Σ prompt, cached prompt and completion tokens and cost (picodollars) of these requests."""
    path = env["GATEWAY_DATABASE_URL"].removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TEMP TABLE wanted (id TEXT PRIMARY KEY)")
        db.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", [(i,) for i in request_ids])
        row = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(cached_tokens), 0), "
            "COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost_pico), 0) "
            "FROM usage_ledger JOIN wanted ON wanted.id = usage_ledger.request_id"
        ).fetchone()
    return dict(
        zip(("rows", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_pico"), row, strict=True)
    )


@contextlib.asynccontextmanager
async def gateway(env: dict[str, str], urls: list[str], routing: str, log_dir: Path) -> AsyncIterator[str]:
    """A gateway process over ``urls`` with the given routing policy; yields its base URL."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    pools = log_dir / f"pools-{routing}-{port}.yaml"
    pool = {"served_name": MODEL, "endpoints": urls, "routing": routing}
    pools.write_text(yaml.safe_dump({"pools": [pool]}))
    env = {**env, "GATEWAY_CONFIG_PATH": str(pools), "GATEWAY_PORT": str(port)}
    argv = [sys.executable, "-m", "gateway.cli", "serve"]
    proc = Process(argv, log_dir / f"gateway-{routing}-{port}.log", env)
    try:
        await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/health", 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(proc.stop)


@dataclass
class Result:
    """One streamed request as the client saw it."""

    started: float
    request_id: str | None = None  # the gateway's ``x-request-id``: its ledger row
    user: str = ""  # the conversation
    turn: int = 0
    status: int = 0  # 0: no HTTP response at all
    ttft_s: float | None = None  # to the first chunk with content
    latency_s: float = 0.0
    data_events: int = 0  # events other than errors and [DONE]
    content_events: int = 0  # events with content: a token each (vLLM and the simulator)
    done: bool = False
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    text: str = field(default="", repr=False)

    @property
    def kind(self) -> Kind:
        """``ok``; ``failed_before_stream`` when no event but an error reached the client (an HTTP
        error, a dropped connection, or a 200 whose only event is an error); else ``cut_mid_stream``."""
        if self.status == 200 and self.done and self.error is None:
            return "ok"
        return "cut_mid_stream" if self.data_events else "failed_before_stream"

    def summary(self) -> dict[str, Any]:
        """Everything but the text, and the outcome."""
        return {k: v for k, v in asdict(self).items() if k != "text"} | {"kind": self.kind}


def chat_body(messages: list[dict[str, str]], user: str | None, max_tokens: int) -> dict[str, Any]:
    """A streamed chat request; ``user`` (the OpenAI field) is left out when None."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # vLLM: a random-weight model would otherwise stop at random lengths
    }
    return body if user is None else body | {"user": user}


async def stream_chat(session: aiohttp.ClientSession, url: str, key: str, body: dict[str, Any]) -> Result:
    """POST one streamed chat completion and read it to the end."""
    result = Result(started=time.perf_counter())
    pieces: list[str] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        post = session.post(f"{url}/v1/chat/completions", data=orjson.dumps(body), headers=headers)
        async with post as resp:
            result.status = resp.status
            result.request_id = resp.headers.get("x-request-id")
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
            else:
                async for line in resp.content:
                    _take_line(result, line, pieces)
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.error = result.error or f"{type(exc).__name__}: {exc}"[:200]
    result.latency_s = time.perf_counter() - result.started
    result.text = "".join(pieces)
    return result


def _take_line(result: Result, line: bytes, pieces: list[str]) -> None:
    if not line.startswith(b"data: "):
        return
    payload = line[6:].strip()
    if payload == b"[DONE]":
        result.done = True
        return
    event = orjson.loads(payload)
    if "error" in event:
        result.error = str(event["error"].get("message", event["error"]))[:200]
        return
    result.data_events += 1
    if usage := event.get("usage"):
        result.prompt_tokens = usage.get("prompt_tokens") or 0
        result.completion_tokens = usage.get("completion_tokens") or 0
    for choice in event.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            result.content_events += 1
            if result.ttft_s is None:
                result.ttft_s = time.perf_counter() - result.started
            pieces.append(content)


async def scrape(session: aiohttp.ClientSession, urls: list[str]) -> list[dict[str, float]]:
    """Each engine's ``ENGINE_METRICS`` (summed over labels); zeros for one that does not answer."""
    counters = []
    for url in urls:
        try:
            async with session.get(f"{url}/metrics") as resp:
                text = await resp.text()
        except aiohttp.ClientError:
            text = ""
        counters.append({name: total(text, name) for name in ENGINE_METRICS})
    return counters
