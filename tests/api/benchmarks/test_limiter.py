"""The limiter benchmark's smoke run: every scenario runs and reports sane numbers (no timing limits)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.support.processes import REPO
from tests.support.redis import require_redis


def test_quick_run_reports_every_scenario(tmp_path: Path) -> None:
    require_redis()
    out = tmp_path / "limiter.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.limiter", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=True,
    )
    report: dict[str, Any] = orjson.loads(out.read_bytes())

    scenarios = [(row["backend"], row["callers"]) for row in report["results"]]
    redis = "redis (loopback)"
    assert scenarios == [("in-process", 1), ("in-process", 64), (redis, 1), (redis, 64)]
    for row in report["results"]:
        assert row["requests"] > 0 and row["requests_per_s"] > 0 and row["cpu_us_per_request"] > 0
        assert 0 < row["latency_p50_us"] <= row["latency_p99_us"] <= row["latency_max_us"]
    assert report["command"] == f"python -m benchmarks.limiter --quick --out {out}"
