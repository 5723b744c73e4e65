"""kill -9 the gateway mid-stream: the next start finalises every request exactly once."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import orjson

from gateway.config.pools import PoolSpec
from gateway.records import Outcome
from tests.e2e.conftest import start_gateway
from tests.support.processes import start_sim

MODEL = "sim-crash"


def test_a_killed_gateway_leaves_nothing_unbilled_and_nothing_twice(
    tmp_path: Path, database_url: str
) -> None:
    sim, sim_url = start_sim(tmp_path, MODEL, "--itl-ms", "10", "--output-tokens", "2000")
    pools = [PoolSpec(served_name=MODEL, endpoints=[sim_url])]
    # Nothing reaches the database before the kill: recovery alone must produce the rows.
    slow_ledger = {"GATEWAY_LEDGER_FLUSH_INTERVAL_S": "60", "GATEWAY_DATABASE_URL": database_url}
    try:
        first, gateway = start_gateway(tmp_path, pools, slow_ledger)
        key = gateway.new_key("crash")
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 5}
        done = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert done.status_code == 200
        streamed = 0
        stream_body = {**body, "max_tokens": 2000, "stream": True}
        with httpx.stream(
            "POST", f"{gateway.url}/v1/chat/completions", json=stream_body, headers=headers, timeout=30
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    streamed += bool(orjson.loads(line[6:])["choices"])
                if streamed == 250:  # 2.5 s of tokens: the journal has noted progress
                    first.signal(signal.SIGKILL)
                    first.popen.wait(10)
                    break
        assert gateway.ledger("crash", expected_rows=1, timeout_s=0.5) == []  # nothing written yet

        same_database = {"GATEWAY_DATABASE_URL": database_url}
        second, gateway = start_gateway(tmp_path, pools, same_database)  # same journal directory too
        try:
            rows = {r.request_id: r for r in gateway.ledger("crash", expected_rows=2)}
            assert len(rows) == 2
            finished = rows[done.headers["x-request-id"]]
            assert (finished.outcome, finished.completion_tokens) == (Outcome.ok, 5)
            [cut] = [r for r in rows.values() if r.request_id != finished.request_id]
            assert cut.outcome == Outcome.interrupted and cut.prompt_tokens > 0
            # Progress is journaled every second: at most ~1 s of tokens (100) can be unknown.
            assert streamed - 150 <= cut.completion_tokens <= streamed
            second.stop()
            # A third start finds nothing left to recover: still exactly two rows.
            third, gateway = start_gateway(tmp_path, pools, same_database)
            third.stop()
            assert len(gateway.ledger("crash", expected_rows=3, timeout_s=1)) == 2
        finally:
            second.stop()
    finally:
        sim.stop()
