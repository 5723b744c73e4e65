"""Reconciliation against a real vLLM CPU engine: aborted streams and a request cut before its
answer are billed what the engine counted, through adjustment rows, and the report adds up across
two gateway replicas on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path

import httpx
import pytest

from gateway.config.pools import PoolSpec
from gateway.records import Outcome, UsageRecord
from gateway.store import create_store
from tests.e2e.conftest import TINY, Engine, GatewayProcess, start_gateway
from tests.support.postgres import require_postgres, temporary_schema
from tests.support.processes import Process

# Short intervals so a test sees its periods settled within seconds.
FAST_RECONCILE = {
    "GATEWAY_RECONCILE_SAMPLE_INTERVAL_S": "1",
    "GATEWAY_RECONCILE_SETTLE_S": "2",
    "GATEWAY_RECONCILE_SETTLE_INTERVAL_S": "0.5",
    "GATEWAY_ENGINE_STATS_INTERVAL_S": "0.5",
}
PROMPT = "Write a long story about a lighthouse keeper and the sea, in many chapters."


def body(stream: bool, max_tokens: int, n: int = 1) -> dict[str, object]:
    return {
        "model": TINY,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "n": n,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


async def abort_stream(client: httpx.AsyncClient, url: str, key: str, after_events: int) -> None:
    """Read a few events of a long stream, then hang up."""
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream(
        "POST", f"{url}/v1/chat/completions", json=body(True, 400), headers=headers
    ) as resp:
        assert resp.status_code == 200
        seen = 0
        async for line in resp.aiter_lines():
            seen += line.startswith("data: ")
            if seen >= after_events:
                break


async def cut_before_answer(url: str, key: str) -> None:
    """A non-streamed request whose client gives up before the answer: the gateway gets nothing."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{url}/v1/chat/completions", json=body(False, 400), headers=headers)


async def drive(gateways: list[GatewayProcess], key: str) -> None:
    """Finished requests (one n = 2), aborted streams and a cut request, over every replica."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=120) as client:
        for i, gateway in enumerate(gateways * 2):
            for n in (1, 2):
                resp = await client.post(
                    f"{gateway.url}/v1/chat/completions", json=body(i % 2 == 0, 8, n), headers=headers
                )
                assert resp.status_code == 200, resp.text
            await asyncio.gather(*(abort_stream(client, gateway.url, key, k) for k in (1, 3, 6)))
            await cut_before_answer(gateway.url, key)
        # A last request that ends normally, so the engine's gauges report it idle after the aborts.
        resp = await client.post(
            f"{gateways[0].url}/v1/chat/completions", json=body(False, 4), headers=headers
        )
        assert resp.status_code == 200


async def ledger_rows(database_url: str, tenant: str) -> list[UsageRecord]:
    store = create_store(database_url)
    await store.open()
    try:
        return await store.list_usage((await store.get_tenant(tenant)).id)
    finally:
        await store.close()


def billed(rows: list[UsageRecord]) -> tuple[int, int]:
    """The ledger in the engine's units: prompt tokens once per choice, completion tokens."""
    return sum(r.prompt_tokens * r.choices for r in rows), sum(r.completion_tokens for r in rows)


async def settled_ledger(
    database_url: str, tenant: str, engine: Engine, before: tuple[float, float], timeout_s: float = 120
) -> tuple[list[UsageRecord], tuple[int, int]]:
    """Wait until ledger + adjustments equal the engine's counter growth (or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = engine.counters()
        growth = (int(after[0] - before[0]), int(after[1] - before[1]))
        rows = await ledger_rows(database_url, tenant)
        if billed(rows) == growth or time.monotonic() > deadline:
            return rows, growth
        await asyncio.sleep(0.5)


def quiet_start(engine: Engine) -> tuple[float, float]:
    """Let the engine go idle and the gateways see a quiet point; the counters then."""
    engine.wait_idle()
    time.sleep(3)
    return engine.counters()


async def test_aborted_and_cut_requests_are_billed_what_the_engine_counted(
    vllm_engine: Engine, tmp_path: Path
) -> None:
    pool = PoolSpec(served_name=TINY, endpoints=[vllm_engine.url])
    proc, gateway = start_gateway(tmp_path, [pool], FAST_RECONCILE)
    try:
        key = gateway.new_key("reconciled")
        before = quiet_start(vllm_engine)
        await drive([gateway], key)
        vllm_engine.wait_idle()
        rows, growth = await settled_ledger(
            gateway.env["GATEWAY_DATABASE_URL"], "reconciled", vllm_engine, before
        )
        assert billed(rows) == growth
        adjustments = [r for r in rows if r.outcome == Outcome.adjustment]
        cut = {r.request_id: r for r in rows if r.outcome == Outcome.aborted}
        assert adjustments and all(r.adjusts in cut for r in adjustments)
        assert len({r.adjusts for r in adjustments}) == len(adjustments)  # one adjustment per request
        # The cut non-streamed requests had nothing in the ledger: their adjustments bill the prompt.
        assert any(cut[r.adjusts or ""].prompt_tokens == 0 and r.prompt_tokens > 0 for r in adjustments)
        drift = f'gateway_metering_drift_tokens{{engine="{vllm_engine.url}"}} 0.0'
        deadline = time.monotonic() + 10  # published at the end of the settling round
        while drift not in gateway.metrics() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert drift in gateway.metrics()
    finally:
        proc.stop()


async def test_the_reconcile_report_adds_up_across_two_replicas(vllm_engine: Engine, tmp_path: Path) -> None:
    require_postgres()
    procs: list[Process] = []
    async with temporary_schema("reconcile") as url:
        try:
            gateways = []
            for replica in range(2):
                home = tmp_path / f"replica-{replica}"
                home.mkdir()
                pool = PoolSpec(served_name=TINY, endpoints=[vllm_engine.url])
                proc, gateway = start_gateway(home, [pool], {"GATEWAY_DATABASE_URL": url, **FAST_RECONCILE})
                procs.append(proc)
                gateways.append(gateway)
            key = gateways[0].new_key("shared")
            before = quiet_start(vllm_engine)
            day = dt.datetime.now(dt.UTC).date().isoformat()
            await drive(gateways, key)
            vllm_engine.wait_idle()
            rows, growth = await settled_ledger(url, "shared", vllm_engine, before)
            assert billed(rows) == growth
            report = json.loads(gateways[1].cli("usage", "reconcile", "--from", day, "--to", day, "--json"))
            [line] = [e for e in report["engines"] if e["engine"] == vllm_engine.url]
            assert (line["engine_prompt_tokens"], line["engine_generation_tokens"]) == growth
            assert line["ledger_prompt_tokens"] + line["adjusted_prompt_tokens"] == growth[0]
            assert line["ledger_completion_tokens"] + line["adjusted_completion_tokens"] == growth[1]
            assert (
                line["unexplained_prompt_tokens"],
                line["unexplained_completion_tokens"],
                line["resets"],
            ) == (0, 0, 0)
            assert line["adjusted_completion_tokens"] > 0
        finally:
            for proc in procs:
                proc.stop()
