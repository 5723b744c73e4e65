"""The fault benchmark's cheapest scenario, small, so the script keeps working: overload waves on
one simulated engine, with a tenant limit and without (the full runs are in RESULTS.md)."""

from __future__ import annotations

from pathlib import Path

import orjson

from benchmarks.faults import main, parse_args


def test_the_scenarios_are_chosen_by_flag_and_the_light_ones_are_the_default() -> None:
    assert parse_args([]).scenarios == ["overload", "engine_kill", "gateway_kill"]
    assert parse_args(["--pg-outage", "--restart-time"]).scenarios == ["pg_outage", "restart_time"]


def test_overload_waves_answer_200_and_429_only(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    argv = ["--overload", "--waves", "2", "--streams", "8", "--tenant-limit", "4", "--gap-s", "0.5"]
    argv += ["--max-tokens", "20", "--gateway-cpu", "none", "--work-dir", str(tmp_path), "--out", str(out)]
    assert main(argv) == 0

    report = orjson.loads(out.read_bytes())
    limited, unlimited = report["scenarios"]["overload"]["rows"]
    assert (limited["tenant_limit"], unlimited["tenant_limit"]) == (4, None)
    for row in (limited, unlimited):
        assert row["requests"] == 16 and row["503"] == row["other"] == 0, row
        assert row["engine_ejections"] == row["engine_marked_down"] == 0, row
    assert limited["200"] >= 8 and limited["200"] + limited["429"] == 16  # 4 in flight at a time
    assert unlimited["200"] == 16
