"""The newcomer's frictions around ``gateway up`` and the CLI: a busy port is one line and creates
no key, the demo key is the same across restarts, every command finds ``gateway up``'s database,
and a command that only reads never creates an empty one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.datadir import remember
from gateway.cli.embedded import check_ports, demo_key, with_engine_base_port
from gateway.config.loader import ConfigError
from gateway.config.pools import DeploymentSpec, PoolSpec
from gateway.settings import Settings
from gateway.store import create_store
from gateway.tenancy.service import TenancyService

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_up_on_a_busy_port_is_one_line_naming_the_port_and_creates_no_key(
    tmp_path: Path, listening: int
) -> None:
    data = tmp_path / "data"
    env = {"GATEWAY_DATA_DIR": str(data), "XDG_STATE_HOME": str(tmp_path / "state")}
    done = cli("up", "--port", str(listening), cwd=ROOT, env=env)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: port {listening} on 127.0.0.1 is in use")
    assert f"--port {listening + 1}" in line
    assert not (data / "gateway.db").exists() and not (data / "demo-key").exists()


def test_a_busy_engine_port_names_the_engine_base_port_flag(listening: int, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    spec = DeploymentSpec(pools=[PoolSpec(served_name="tiny", base_port=listening)])
    with pytest.raises(ConfigError) as raised:
        check_ports(Settings(port=free, data_dir=tmp_path), spec)
    assert f"engine port {listening} (tiny)" in str(raised.value)
    assert "--engine-base-port" in str(raised.value)
    moved = with_engine_base_port(spec, free)
    assert moved.pools[0].ports() == [free]
    check_ports(Settings(port=0, data_dir=tmp_path), moved)


async def test_the_demo_key_is_the_same_across_restarts_and_replaced_when_it_stops_working(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    models = frozenset({"tiny"})
    first, reused = await demo_key(settings, "demo", models)
    assert not reused
    assert (tmp_path / "demo-key").read_text().strip() == first
    assert (tmp_path / "demo-key").stat().st_mode & 0o777 == 0o600
    again, reused = await demo_key(settings, "demo", models)
    assert (again, reused) == (first, True)

    store = create_store(settings.database_url)
    await store.open()
    try:
        tenancy = TenancyService(store)
        [key] = await tenancy.list_keys("demo")
        await tenancy.revoke_key(key.id)
    finally:
        await store.close()
    replaced, reused = await demo_key(settings, "demo", models)
    assert replaced != first and not reused
    store = create_store(settings.database_url)
    await store.open()
    try:
        keys = await store.list_keys("demo")
    finally:
        await store.close()
    assert [k.revoked_at is None for k in keys].count(True) == 1  # never a pile of demo keys


def test_commands_elsewhere_find_gateway_ups_database(tmp_path: Path, state_home: Path) -> None:
    data = tmp_path / "up-data"
    env = {"GATEWAY_DATA_DIR": str(data), "XDG_STATE_HOME": str(state_home)}
    assert cli("tenants", "create", "acme", cwd=ROOT, env=env).returncode == 0
    remember(data)  # what `gateway up` does
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = cli("tenants", "list", cwd=elsewhere, env={"XDG_STATE_HOME": str(state_home)})
    assert found.returncode == 0, found.stderr
    assert " acme " in found.stdout
    assert f"using the database of `gateway up` in {data}" in found.stderr
    assert not (elsewhere / "data").exists()


def test_read_commands_never_create_an_empty_database(tmp_path: Path, state_home: Path) -> None:
    empty = tmp_path / "empty"
    for command in (
        ["tenants", "list"],
        ["keys", "list"],
        ["usage", "report"],
        ["limits", "show", "--tenant", "a"],
    ):
        done = cli(
            *command, cwd=ROOT, env={"GATEWAY_DATA_DIR": str(empty), "XDG_STATE_HOME": str(state_home)}
        )
        assert done.returncode == 1, command
        assert done.stderr.startswith(f"error: no database at {empty / 'gateway.db'}"), done.stderr
    assert not (empty / "gateway.db").exists()
