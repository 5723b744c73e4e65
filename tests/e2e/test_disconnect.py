"""A client that gives up on a non-streamed request: the engine stops and the ledger says aborted."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from gateway.config.pools import PoolSpec
from gateway.records import Outcome
from tests.e2e.conftest import start_gateway
from tests.support.metrics import total
from tests.support.processes import start_sim

MODEL = "sim-slow"


def test_client_timeout_before_the_answer_cuts_the_engine_request(tmp_path: Path) -> None:
    sim, sim_url = start_sim(tmp_path, MODEL, "--ttft-ms", "3000")
    proc, gateway = start_gateway(tmp_path, [PoolSpec(served_name=MODEL, endpoints=[sim_url])])
    try:
        key = gateway.new_key("impatient")
        body = {"model": MODEL, "messages": [{"role": "user", "content": "take your time"}], "max_tokens": 8}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json=body,
                timeout=httpx.Timeout(30, read=0.5),
                headers={"Authorization": f"Bearer {key}"},
            )
        time.sleep(0.5)
        engine = httpx.get(f"{sim_url}/metrics").text
        assert total(engine, "vllm:num_requests_running") == 0, "the engine is still working on it"
        time.sleep(3)  # past the moment the engine would have answered
        assert total(httpx.get(f"{sim_url}/metrics").text, "vllm:generation_tokens_total") == 0
        [row] = gateway.ledger("impatient", expected_rows=1)
        assert (row.outcome, row.http_status, row.completion_tokens) == (Outcome.aborted, 499, 0)
    finally:
        proc.stop()
        sim.stop()
