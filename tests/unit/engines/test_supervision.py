"""The launcher's decisions, without processes: a taken port refuses the start, a dead engine is
drained, restarted with backoff until it serves, then resumed; the parent-death hook exists."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engines.launcher import EngineLauncher, ManagedEngine, build_commands, restart_backoff_s
from engines.process import EngineStartError, PortTakenError, die_with_parent
from gateway.config.pools import DeploymentSpec, PoolSpec


def sim_spec(replicas: int = 2, base_port: int = 8300) -> DeploymentSpec:
    pool = PoolSpec(served_name="sim", engine="sim", replicas=replicas, base_port=base_port)
    return DeploymentSpec(pools=[pool])


async def test_a_taken_port_refuses_the_start_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    asked: list[tuple[str, int]] = []

    def taken(host: str, port: int) -> bool:
        asked.append((host, port))
        return port == 8301

    launcher = EngineLauncher(sim_spec(), tmp_path, tmp_path / "logs", is_port_taken=taken)
    with pytest.raises(PortTakenError) as refused:
        await launcher.start()
    assert asked == [("127.0.0.1", 8300), ("127.0.0.1", 8301)]  # every port, before any start
    assert launcher.engines == [] and not (tmp_path / "logs").exists()
    message = str(refused.value)
    assert "\n" not in message and message.startswith("sim#1: port 8301 on 127.0.0.1 is taken")


def test_restart_backoff_doubles_up_to_30_s() -> None:
    assert [restart_backoff_s(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


class Hook:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def drain(self, url: str) -> None:
        self.calls.append(f"drain {url}")

    async def resume(self, url: str) -> None:
        self.calls.append(f"resume {url}")


async def test_a_dead_engine_is_kept_out_of_routing_until_a_restart_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = Hook()
    launcher = EngineLauncher(sim_spec(replicas=1), tmp_path, tmp_path / "logs", hook)
    [command] = build_commands(sim_spec(replicas=1), tmp_path)
    engine = ManagedEngine(command, tmp_path / "sim-0.log")
    script = ["port taken", "exits while starting", "serves"]
    attempt = ""

    async def restart(engine: ManagedEngine) -> None:
        nonlocal attempt
        attempt = script.pop(0)
        hook.calls.append(attempt)
        if attempt == "port taken":
            raise PortTakenError("sim#0", "127.0.0.1", 8300)

    async def wait_ready(engine: ManagedEngine, timeout_s: float) -> None:
        if attempt == "exits while starting":
            raise EngineStartError("sim#0 did not come back")
        engine.ready = True

    monkeypatch.setattr(launcher, "_restart", restart)
    monkeypatch.setattr(launcher, "_wait_one_ready", wait_ready)
    await launcher._recover(engine)
    url = command.url
    assert hook.calls == [f"drain {url}", "port taken", "exits while starting", "serves", f"resume {url}"]
    assert engine.ready


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_engines_ask_the_kernel_to_stop_them_with_their_launcher() -> None:
    assert callable(die_with_parent())
