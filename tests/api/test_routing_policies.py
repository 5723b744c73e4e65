"""Prefix-aware routing through the app: a conversation stays on one engine, others spread."""

from __future__ import annotations

from pathlib import Path

from gateway.config.pools import PoolSpec
from tests.api.test_dedicated import serving
from tests.conftest import SIM_MODEL
from tests.support.processes import start_sim


async def test_prefix_aware_pool_keeps_each_conversation_on_one_engine(
    sim_engine: str, tmp_path: Path
) -> None:
    second, second_url = start_sim(tmp_path, SIM_MODEL)
    try:
        pool = PoolSpec(served_name=SIM_MODEL, endpoints=[sim_engine, second_url], routing="prefix_aware")
        async with serving(sim_engine, tmp_path, pool) as gw:
            secret, _ = await gw.new_key("chatty")
            served_by: dict[int, set[str]] = {}
            for conversation in range(12):
                history = [{"role": "user", "content": f"conversation {conversation} opens here"}]
                for turn in range(3):
                    body = {"model": SIM_MODEL, "messages": history, "max_tokens": 2}
                    response = await gw.client.post(
                        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
                    )
                    assert response.status_code == 200
                    history = [
                        *history,
                        {"role": "assistant", "content": "ok"},
                        {"role": "user", "content": f"turn {turn}"},
                    ]
            await gw.state.ledger.flush()
            rows = await gw.state.store.list_usage()
            for index, row in enumerate(rows):
                served_by.setdefault(index // 3, set()).add(row.endpoint)
        assert all(len(engines) == 1 for engines in served_by.values())  # every turn on one engine
        assert set().union(*served_by.values()) == {sim_engine, second_url}  # both engines used
    finally:
        second.stop()


async def test_a_5xx_before_any_byte_is_retried_on_another_engine(sim_engine: str, tmp_path: Path) -> None:
    broken, broken_url = start_sim(tmp_path, SIM_MODEL, "--failure-rate", "1", "--failure-status", "500")
    try:
        pool = PoolSpec(served_name=SIM_MODEL, endpoints=[broken_url, sim_engine], routing="round_robin")
        async with serving(sim_engine, tmp_path, pool) as gw:
            secret, _ = await gw.new_key("unlucky")
            for stream in (False, True) * 3:
                body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
                response = await gw.client.post(
                    "/v1/chat/completions",
                    json={**body, "stream": stream},
                    headers={"Authorization": f"Bearer {secret}"},
                )
                assert response.status_code == 200, response.text
            await gw.state.ledger.flush()
            rows = await gw.state.store.list_usage()
            assert {r.endpoint for r in rows} == {sim_engine} and len(rows) == 6
            assert all(e.inflight == 0 for e in gw.state.router.endpoints())  # no slot leaked
    finally:
        broken.stop()
