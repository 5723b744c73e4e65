"""The reconcile report through the admin API and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from gateway.records import EngineCounters, EngineSample, Outcome, UsageRecord
from gateway.store import Store
from gateway.store.sqlite import SqliteStore
from tests.conftest import ADMIN_TOKEN, Gateway

ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ENGINE = "http://engine-a:8001"
T0 = 1_794_528_000.0  # 2026-11-13T00:00:00Z


async def seed(store: Store) -> None:
    """One engine over two hours: an n = 2 request, a cut one, a restart in the second hour."""
    for at, prompt, generation, quiet, incarnation in (
        (T0 + 10, 0, 0, True, 1.0),
        (T0 + 100, 40, 12, True, 1.0),  # 40 = a 20-token prompt, n = 2
        (T0 + 3700, 70, 30, False, 1.0),
        (T0 + 3800, 9, 3, True, 2.0),  # restarted
    ):
        sample = EngineSample(ENGINE, at, incarnation, EngineCounters(prompt, generation, 8), quiet)
        await store.record_engine_sample(sample)
    await store.insert_usage(
        [
            UsageRecord(
                "req_n2",
                "ten",
                "key",
                "m",
                "chat.completions",
                T0 + 20,
                ENGINE,
                prompt_tokens=20,
                completion_tokens=12,
                ended_at=T0 + 30,
                choices=2,
            ),
            UsageRecord(
                "req_cut",
                "ten",
                "key",
                "m",
                "completions",
                T0 + 3650,
                ENGINE,
                Outcome.aborted,
                499,
                ended_at=T0 + 3690,
            ),
            UsageRecord(
                "adj_req_cut",
                "ten",
                "key",
                "m",
                "completions",
                T0 + 3650,
                ENGINE,
                Outcome.adjustment,
                499,
                prompt_tokens=30,
                completion_tokens=18,
                ended_at=T0 + 3690,
                adjusts="req_cut",
            ),
        ]
    )


def engine_line(hour: str | None, **values: int) -> dict[str, object]:
    zero = dict.fromkeys(
        [
            "engine_prompt_tokens",
            "engine_cached_tokens",
            "engine_generation_tokens",
            "ledger_prompt_tokens",
            "ledger_cached_tokens",
            "ledger_completion_tokens",
            "prompt_difference",
            "cached_difference",
            "completion_difference",
            "adjusted_prompt_tokens",
            "adjusted_completion_tokens",
            "unexplained_prompt_tokens",
            "unexplained_completion_tokens",
            "resets",
        ],
        0,
    )
    return {"engine": ENGINE, "hour": hour, **zero, **values}


FIRST_HOUR = engine_line(
    "2026-11-13T00:00:00Z",
    engine_prompt_tokens=40,
    engine_generation_tokens=12,
    ledger_prompt_tokens=40,
    ledger_completion_tokens=12,
)
SECOND_HOUR = engine_line(
    "2026-11-13T01:00:00Z",
    engine_prompt_tokens=30 + 9,
    engine_generation_tokens=18 + 3,
    prompt_difference=39,
    completion_difference=21,
    adjusted_prompt_tokens=30,
    adjusted_completion_tokens=18,
    unexplained_prompt_tokens=9,
    unexplained_completion_tokens=3,
    engine_cached_tokens=8,  # the new process's, from zero
    cached_difference=8,
    resets=1,
)


async def test_the_admin_report_per_engine_and_hour(gateway: Gateway) -> None:
    await seed(gateway.state.store)
    resp = await gateway.client.get(
        "/admin/usage/reconcile", params={"from": "2026-11-13", "to": "2026-11-13"}, headers=ADMIN
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["object"], body["from"], body["to"]) == (
        "reconcile.report",
        "2026-11-13T00:00:00Z",
        "2026-11-14T00:00:00Z",
    )
    assert body["data"] == [FIRST_HOUR, SECOND_HOUR]
    totals = {k: FIRST_HOUR[k] + SECOND_HOUR[k] for k in FIRST_HOUR if isinstance(FIRST_HOUR[k], int)}  # type: ignore[operator]
    assert body["engines"] == [{"engine": ENGINE, "hour": None, **totals}]
    assert body["total"] == {"engine": "all", "hour": None, **totals}
    assert any("once per choice" in note for note in body["notes"])
    one_hour = await gateway.client.get(
        "/admin/usage/reconcile",
        params={"from": "2026-11-13T01:00:00Z", "to": "2026-11-13T01:30:00Z"},
        headers=ADMIN,
    )
    assert one_hour.json()["data"] == [SECOND_HOUR]


async def test_bad_windows_are_openai_shaped_400s(gateway: Gateway) -> None:
    backwards = await gateway.client.get(
        "/admin/usage/reconcile", params={"from": "2026-11-14", "to": "2026-11-13"}, headers=ADMIN
    )
    assert backwards.status_code == 400
    assert backwards.json() == {
        "error": {
            "message": "'to' is not after 'from'.",
            "type": "invalid_request_error",
            "param": "to",
            "code": None,
        }
    }
    garbled = await gateway.client.get(
        "/admin/usage/reconcile", params={"from": "yesterday", "to": "2026-11-13"}, headers=ADMIN
    )
    assert garbled.status_code == 400 and garbled.json()["error"]["param"] == "from"
    missing = await gateway.client.get("/admin/usage/reconcile", params={"to": "2026-11-13"}, headers=ADMIN)
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "invalid_request_error"
    tenant_key, _ = await gateway.new_key("t")
    forbidden = await gateway.client.get(
        "/admin/usage/reconcile",
        params={"from": "2026-11-13", "to": "2026-11-13"},
        headers={"Authorization": f"Bearer {tenant_key}"},
    )
    assert forbidden.status_code == 403


async def _seed_file(path: Path) -> None:
    store = SqliteStore(path)
    await store.open()
    try:
        await seed(store)
    finally:
        await store.close()


def test_the_cli_prints_the_same_report(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    asyncio.run(_seed_file(db))
    env = {**os.environ, "GATEWAY_DATABASE_URL": f"sqlite:///{db}", "GATEWAY_DATA_DIR": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "usage", "reconcile", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    as_json = cli("--from", "2026-11-13", "--to", "2026-11-13", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["data"] == [FIRST_HOUR, SECOND_HOUR]
    table = cli("--from", "2026-11-13", "--to", "2026-11-13").stdout.splitlines()
    assert table[0] == "engine counters against the ledger, 2026-11-13T00:00:00Z to 2026-11-14T00:00:00Z"
    assert table[1].split() == [
        "engine",
        "hour",
        "(UTC)",
        "prompt",
        "ledger*n",
        "adj*n",
        "left",
        "generated",
        "ledger",
        "adj",
        "left",
        "cached",
        "ledger",
        "resets",
    ]
    assert table[3].split() == [ENGINE, "2026-11-13T00:00:00Z", *"40 40 0 0 12 12 0 0 0 0 0".split()]
    assert table[7].split() == ["all", "total", *"79 40 30 9 33 12 18 3 8 0 1".split()]
    refused = cli("--from", "2026-11-14", "--to", "2026-11-13")
    assert (refused.returncode, refused.stderr) == (1, "error: 'to' is not after 'from'.\n")
