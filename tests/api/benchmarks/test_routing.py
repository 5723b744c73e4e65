"""The routing benchmark's smoke run on simulated engines: every policy serves the whole workload,
and the numbers it reports hang together (no timing limits; the real-engine run is in RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks.routing import POLICIES
from tests.support.processes import REPO

APPS, CONVERSATIONS, TURNS = 3, 4, 4


def run_sim(out: Path) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "benchmarks.routing",
        "--engine",
        "sim",
        "--rounds",
        "1",
        "--apps",
        str(APPS),
        "--conversations",
        str(CONVERSATIONS),
        "--turns",
        str(TURNS),
        "--out",
        str(out),
    ]
    subprocess.run(argv, cwd=REPO, capture_output=True, timeout=180, check=True)
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    return report


def test_every_policy_serves_the_workload_and_prefix_aware_keeps_conversations_together(
    tmp_path: Path,
) -> None:
    report = run_sim(tmp_path / "routing.json")

    rows = {row["policy"]: row for row in report["rows"]}
    assert sorted(rows) == sorted(POLICIES)
    for row in rows.values():
        assert row["requests"] == APPS * CONVERSATIONS * TURNS and row["errors"] == 0
        assert sum(row["engine_requests"]) == row["requests"]  # the engines' own success counters
        assert 0 < row["prefix_hits"] < row["prefix_queries"]  # first turns miss, later ones hit
        assert row["ttft_p50_ms"] <= row["ttft_p99_ms"]
    assert rows["round_robin"]["engine_requests"] == [24, 24]
    # Keyed on ``user``, a conversation's turns stay on its engine but where the bounded load
    # passes one on; round-robin's land wherever the rotation is.
    assert rows["prefix_aware"]["same_engine_share"] > rows["round_robin"]["same_engine_share"]
    assert rows["prefix_aware"]["hit_rate"] > rows["round_robin"]["hit_rate"]
    assert report["verdict"].startswith("prefix_aware vs round_robin")
