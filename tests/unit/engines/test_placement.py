"""Each launched CPU engine gets its own share of the cores (vLLM's ``auto`` stacks them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from engines.launcher import build_commands
from engines.placement import BIND_VARIABLE, cpu_bindings
from gateway.config.pools import DeploymentSpec, PoolSpec, ReplicaSpec


def spec(*pools: PoolSpec) -> DeploymentSpec:
    return DeploymentSpec(pools=list(pools))


def pool(name: str, port: int, replicas: int = 1, **fields: object) -> PoolSpec:
    return PoolSpec(served_name=name, base_port=port, replicas=replicas, **fields)  # type: ignore[arg-type]


def test_engines_of_all_pools_split_the_cores_contiguously() -> None:
    both = spec(pool("chat", 9000, replicas=2), pool("embed", 9010, kind="embed"))
    assert cpu_bindings(both, cores=range(8)) == {"chat#0": "0,1,2", "chat#1": "3,4,5", "embed#0": "6,7"}
    assert cpu_bindings(both, cores=[0, 1, 2]) == {"chat#0": "0", "chat#1": "1", "embed#0": "2"}


def test_one_engine_keeps_vllms_auto_and_too_few_cores_share_them_all() -> None:
    assert cpu_bindings(spec(pool("chat", 9000)), cores=range(8)) == {}
    crowded = spec(pool("chat", 9000, replicas=3))
    assert cpu_bindings(crowded, cores=[0, 1]) == {f"chat#{i}": "nobind" for i in range(3)}


def test_explicit_choices_win_and_only_launched_cpu_vllm_engines_are_placed() -> None:
    placed = pool("a", 9000, replicas=2, placement=[ReplicaSpec(cpus="0-3"), ReplicaSpec(cpus="4-7")])
    own_env = pool("b", 9010, replicas=2, env={BIND_VARIABLE: "nobind"})
    others = [
        pool("gpu", 9020, device="gpu"),
        pool("sim", 9030, engine="sim"),
        PoolSpec(served_name="remote", endpoints=["http://10.0.0.1:8000"]),
    ]
    assert cpu_bindings(spec(placed, own_env, *others), cores=range(8)) == {"a#0": "0-3", "a#1": "4-7"}
    # Two engines left to place: they split the cores between them.
    assert cpu_bindings(spec(own_env, pool("c", 9040, replicas=2)), cores=range(4)) == {
        "c#0": "0,1",
        "c#1": "2,3",
    }


def test_tensor_parallel_engines_get_one_run_of_cores_per_rank() -> None:
    tp = pool("big", 9000, replicas=2, vllm_args=["--tensor-parallel-size", "2"])
    assert cpu_bindings(spec(tp), cores=range(8)) == {"big#0": "0,1|2,3", "big#1": "4,5|6,7"}


def test_a_malformed_core_list_is_refused() -> None:
    with pytest.raises(ValidationError):
        ReplicaSpec(cpus="0-3;4")


def test_the_launcher_puts_the_binding_in_each_engines_environment(tmp_path: Path) -> None:
    sims_and_vllm = spec(pool("chat", 9000, replicas=2, model="/models/llama"))
    commands = build_commands(sims_and_vllm, tmp_path)
    binds = [c.env[BIND_VARIABLE] for c in commands]
    if len(os.sched_getaffinity(0)) >= 2:
        assert len(binds) == 2 and binds[0] != binds[1] and "nobind" not in binds
    else:
        assert binds == ["nobind", "nobind"]
