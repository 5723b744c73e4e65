"""The test suite's own rules, checked from inside a test run."""

from __future__ import annotations

import os

import pytest

from gateway.settings import Settings


def test_settings_ignore_the_developers_gateway_environment() -> None:
    # tests/api/test_tiers_subprocess.py runs this with GATEWAY_PORT and GATEWAY_DATABASE_URL set.
    assert Settings().port == Settings.model_fields["port"].default
    assert Settings().database_url == "sqlite:///data/gateway.db"  # the default: data_dir's
    assert not [n for n in os.environ if n.startswith("GATEWAY_") and not n.startswith("GATEWAY_TEST_")]


def test_every_test_carries_its_tier_and_a_time_limit(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("e2e") is None
    timeout = request.node.get_closest_marker("timeout")
    assert timeout is not None and timeout.args == (30,)
