"""Every launched engine reports cached prompt tokens, so the gateway can bill them apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.commands import PROMPT_TOKENS_DETAILS, build_commands
from gateway.config.pools import DeploymentSpec, PoolSpec, load_spec

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.mark.parametrize("name", ["gpu-llama.yaml", "local.yaml"])
def test_every_engine_of_the_shipped_configs_reports_cached_tokens(name: str, tmp_path: Path) -> None:
    spec = load_spec(CONFIGS / name)
    if any(p.model.startswith("builtin:") for p in spec.pools):
        # Built-in models are built on first use; the flag does not depend on the weights.
        spec = DeploymentSpec(pools=[p.model_copy(update={"model": "/weights"}) for p in spec.pools])
    commands = build_commands(spec, tmp_path, python="py")
    assert commands
    for command in commands:
        assert command.argv.count(PROMPT_TOKENS_DETAILS) == 1, command.name


def test_vllm_and_sim_engines_get_the_flag_once(tmp_path: Path) -> None:
    pools = [
        PoolSpec(served_name="chat", model="/m", base_port=9000),
        PoolSpec(served_name="listed", model="/m", base_port=9010, vllm_args=[PROMPT_TOKENS_DETAILS]),
        PoolSpec(served_name="emb", model="/m", base_port=9020, kind="embed"),
        PoolSpec(served_name="sim", engine="sim", base_port=9030),
    ]
    commands = build_commands(DeploymentSpec(pools=pools), tmp_path, python="py")
    assert [c.argv.count(PROMPT_TOKENS_DETAILS) for c in commands] == [1, 1, 1, 1]
    sim = commands[-1].argv
    assert sim[:3] == ["py", "-m", "engines.sim"]  # the simulator takes vLLM's flag too
