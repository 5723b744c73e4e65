"""``gateway serve --workers 2`` as a real process on the simulated engine, with the real Redis:
both workers serve, one ledger row per request, /metrics adds up every worker's, a tenant's rpm
holds across workers, and SIGTERM stops it all cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.metrics import total
from tests.support.processes import REPO, Process, free_port, start_sim
from tests.support.redis import delete_prefix, redis_url, require_redis

MODEL = "sim-model"
RPM = 4
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


def _environment(tmp_path: Path, engine_url: str) -> dict[str, str]:
    pools = tmp_path / "pools.yaml"
    pools.write_text(f'pools:\n  - served_name: {MODEL}\n    endpoints: ["{engine_url}"]\n')
    limits = tmp_path / "limits.yaml"
    limits.write_text("defaults:\n")
    return {
        "GATEWAY_CONFIG_PATH": str(pools),
        "GATEWAY_LIMITS_PATH": str(limits),
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
        "GATEWAY_PORT": str(free_port()),
        "GATEWAY_REDIS_URL": redis_url(),
        "GATEWAY_REDIS_PREFIX": f"test-workers-{os.getpid()}-{free_port()}:",
        "GATEWAY_LEDGER_FLUSH_INTERVAL_S": "0.05",
    }


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def environment(tmp_path: Path) -> Iterator[dict[str, str]]:
    require_redis()
    engine, engine_url = start_sim(tmp_path, MODEL)
    env = _environment(tmp_path, engine_url)
    try:
        yield env
    finally:
        engine.stop()
        asyncio.run(delete_prefix(env["GATEWAY_REDIS_PREFIX"]))


def _key(env: dict[str, str], tenant: str) -> str:
    _cli(env, "tenants", "create", tenant)
    return _cli(env, "keys", "create", "--tenant", tenant).strip().splitlines()[-1]


def _chat(url: str, key: str) -> httpx.Response:
    """One request on a connection of its own: the kernel picks the worker for each."""
    return httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"})


def _worker_pids(gateway: Process) -> set[int]:
    """The supervisor's worker processes (multiprocessing also starts its resource tracker)."""
    children = psutil.Process(gateway.popen.pid).children()
    return {child.pid for child in children if "spawn_main" in " ".join(child.cmdline())}


def _until_both_workers(url: str, key: str, at_least: int) -> list[httpx.Response]:
    answers: list[httpx.Response] = []
    while len(answers) < at_least or len({a.headers["x-gateway-worker"] for a in answers}) < 2:
        assert len(answers) < 200, "every request went to one worker"
        answers.append(_chat(url, key))
    return answers


def test_two_workers_share_the_port_the_ledger_the_metrics_and_the_limits(
    environment: dict[str, str], tmp_path: Path
) -> None:
    env = environment
    free, capped = _key(env, "free"), _key(env, "capped")
    _cli(env, "limits", "set", "--tenant", "capped", "--rpm", str(RPM))
    url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    gateway = Process(
        [sys.executable, "-m", "gateway.cli", "serve", "--workers", "2"], tmp_path / "gw.log", env
    )
    try:
        gateway.wait_http(f"{url}/health", 60)
        workers = _worker_pids(gateway)
        assert len(workers) == 2

        served = _until_both_workers(url, free, at_least=20)
        assert {a.status_code for a in served} == {200}
        assert {int(a.headers["x-gateway-worker"]) for a in served} == workers

        limited = _until_both_workers(url, capped, at_least=3 * RPM)
        statuses = Counter(a.status_code for a in limited)
        assert statuses == {200: RPM, 429: len(limited) - RPM}  # one limit, not one per worker
        assert limited[-1].json()["error"]["code"] == "rate_limit_exceeded"

        ok = len(served) + RPM
        scrapes = [httpx.get(f"{url}/metrics").text for _ in range(6)]  # answered by either worker
        for text in scrapes:
            assert total(text, "gateway_requests_total", status="200") == ok
            assert total(text, "gateway_ratelimited_total", tenant="capped") == len(limited) - RPM
            assert total(text, "gateway_inflight_requests") == 0
        assert total(scrapes[0], "gateway_engine_up", model=MODEL) == 1  # not 2: the smallest of the two
    finally:
        gateway.stop()
    log = gateway.log_path.read_text()
    assert gateway.popen.returncode == 0, log
    assert not any(psutil.pid_exists(pid) for pid in workers)
    assert log.count("Application shutdown complete.") == 2, log
    journal = Path(env["GATEWAY_DATA_DIR"]) / "journal" / f"port-{env['GATEWAY_PORT']}"
    assert sorted(p.name for p in journal.iterdir() if p.is_dir()) == ["worker-0", "worker-1"]
    assert list(journal.rglob("segment-*")) == []  # a clean shutdown leaves nothing to recover
    with sqlite3.connect(env["GATEWAY_DATABASE_URL"].removeprefix("sqlite:///")) as conn:
        rows = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT request_id), MAX(seq) FROM usage_ledger"
        ).fetchone()
        statuses = dict(conn.execute("SELECT http_status, COUNT(*) FROM usage_ledger GROUP BY http_status"))
    answered = len(served) + len(limited)
    assert rows == (answered, answered, answered)  # a row per request (refusals too), seq 1..n
    assert statuses == {200: ok, 429: len(limited) - RPM}


def test_a_worker_that_dies_is_replaced_and_its_journal_recovered(
    environment: dict[str, str], tmp_path: Path
) -> None:
    env = environment
    key = _key(env, "acme")
    url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    gateway = Process(
        [sys.executable, "-m", "gateway.cli", "serve", "--workers", "2"], tmp_path / "gw.log", env
    )
    try:
        gateway.wait_http(f"{url}/health", 60)
        served = _until_both_workers(url, key, at_least=2)
        victim = int(served[0].headers["x-gateway-worker"])
        os.kill(victim, signal.SIGKILL)
        seen: set[int] = set()
        for _ in range(600):  # its replacement starts after a pause of 1 s
            seen |= {int(a.headers["x-gateway-worker"]) for a in _until_both_workers(url, key, at_least=1)}
            if len(seen - {victim}) == 2:
                break
        assert len(seen - {victim}) == 2
    finally:
        gateway.stop()
    assert gateway.popen.returncode == 0, gateway.log_tail()
    assert f"worker {victim} exited" in gateway.log_path.read_text()


def test_several_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    env = {**os.environ, **_environment(tmp_path, "http://127.0.0.1:9")}
    del env["GATEWAY_REDIS_URL"]
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--workers", "3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: 3 workers (--workers, GATEWAY_WORKERS) need GATEWAY_REDIS_URL")
    assert len(done.stderr.splitlines()) == 1
