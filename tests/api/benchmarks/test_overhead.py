"""The overhead benchmark's smoke run: every scenario runs and reports sane numbers (no timing limits)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks.overhead import scenarios
from tests.support.processes import REPO


def run_quick(out: Path) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, "-m", "benchmarks.overhead", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=True,
    )
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    return report


def assert_sane(result: dict[str, Any], stream: bool) -> None:
    assert result["requests"] > 0
    assert result["errors"] == 0
    assert result["rps"] > 0
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert (result["events"] > 0) == stream


def test_quick_run_reports_every_scenario(tmp_path: Path) -> None:
    report = run_quick(tmp_path / "overhead.json")

    rows = {row["name"]: row for row in report["scenarios"]}
    assert list(rows) == [s.name for s in scenarios()]
    for row in rows.values():
        assert_sane(row["direct"], row["stream"])
        assert_sane(row["gateway"], row["stream"])
        assert row["gateway"]["gateway_cpu_ms_per_request"] > 0
        assert set(row["added_ms"]) == {"p50", "p90", "p99"}
    # Every target of the issue gets a verdict.
    assert len(report["targets"]) == 13
    assert all(isinstance(check["met"], bool) for check in report["targets"])
    assert report["command"] == f"python -m benchmarks.overhead --quick --out {tmp_path / 'overhead.json'}"
