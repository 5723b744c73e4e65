"""The suite's rules seen from outside: a developer's GATEWAY_* variables and tier selection."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.processes import REPO

UNIT_CHECK = "tests/unit/test_tiers.py::test_settings_ignore_the_developers_gateway_environment"


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_developers_gateway_variables_do_not_reach_the_tests() -> None:
    done = _pytest(UNIT_CHECK, GATEWAY_PORT="1", GATEWAY_DATABASE_URL="sqlite:////nonexistent/x.db")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_tiers_select_by_folder() -> None:
    unit = _pytest("--co", "-m", "unit", "tests/unit/test_tiers.py")
    assert "2 tests collected" in unit.stdout, unit.stdout
    e2e = _pytest("--co", "-m", "e2e", "tests/unit/test_tiers.py")
    assert "no tests collected" in e2e.stdout or "2 deselected" in e2e.stdout, e2e.stdout
