"""Which CPU cores each launched vLLM CPU engine may use.

vLLM's CPU worker binds its OpenMP threads by ``VLLM_CPU_OMP_THREADS_BIND``. Left at ``auto``,
every engine on a host picks the same cores (the first NUMA node's, minus a reserved one), so two
engines on one host run on the same cores while the others idle; and because a worker busy-polls
for a second after each step, the one that worked last starves the other (measured on 2 cores: a
request to the other engine waited about 0.9 s longer; benchmarks/RESULTS.md, "Two CPU engines on
two cores"). So when the launcher starts two or more CPU engines it gives each its own contiguous
share of the cores this process may use. An engine whose replica ``placement`` names ``cpus``, or
whose pool ``env`` sets the variable, keeps what it was given; a single engine keeps vLLM's
``auto``; more engines than cores share them all (``nobind``), which beats stacking them on one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from gateway.config.pools import DeploymentSpec, PoolSpec

BIND_VARIABLE = "VLLM_CPU_OMP_THREADS_BIND"


def tensor_parallel(pool: PoolSpec) -> int:
    """The pool's ``--tensor-parallel-size`` (``-tp``), 1 when not given."""
    args = pool.vllm_args
    for i, arg in enumerate(args):
        if arg in ("--tensor-parallel-size", "-tp") and i + 1 < len(args):
            return int(args[i + 1])
        if arg.startswith("--tensor-parallel-size="):
            return int(arg.split("=", 1)[1])
    return 1


def _chunks(cores: Sequence[int], parts: int) -> list[list[int]]:
    """``cores`` cut into ``parts`` contiguous runs whose sizes differ by one at most."""
    size, extra = divmod(len(cores), parts)
    runs, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        runs.append(list(cores[start:end]))
        start = end
    return runs


def cpu_bindings(spec: DeploymentSpec, cores: Sequence[int] | None = None) -> dict[str, str]:
    """``VLLM_CPU_OMP_THREADS_BIND`` for each launched CPU vLLM engine (``served_name#replica``)."""
    cores = sorted(os.sched_getaffinity(0)) if cores is None else list(cores)
    bindings: dict[str, str] = {}
    unplaced: list[tuple[str, int]] = []  # (engine, tensor-parallel ranks)
    for pool in spec.pools:
        if not pool.launched or pool.engine != "vllm" or pool.device != "cpu":
            continue
        for replica in range(pool.replicas):
            name = f"{pool.served_name}#{replica}"
            cpus = pool.placement[replica].cpus if pool.placement else None
            if cpus:
                bindings[name] = cpus
            elif BIND_VARIABLE not in pool.env:
                unplaced.append((name, tensor_parallel(pool)))
    if len(unplaced) < 2:
        return bindings  # one engine: vLLM's own ``auto`` choice is right
    ranks = sum(r for _, r in unplaced)
    if len(cores) < ranks:
        return bindings | {name: "nobind" for name, _ in unplaced}
    runs = iter(_chunks(cores, ranks))  # one run of cores per tensor-parallel rank of each engine
    for name, rank_count in unplaced:
        # vLLM's syntax: a comma-separated list per rank, ranks joined by ``|``.
        bindings[name] = "|".join(",".join(str(c) for c in next(runs)) for _ in range(rank_count))
    return bindings
