"""Real processes: vLLM CPU engines started by our launcher, the gateway as a process, the CLI."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from engines.launcher import EngineLauncher
from gateway.config.pools import DeploymentSpec, PoolSpec
from gateway.records import UsageRecord
from gateway.store import create_store
from tests.support.metrics import total
from tests.support.postgres import require_postgres, temporary_schema
from tests.support.processes import REPO, Process, free_port, gateway_cli

TINY = "tiny-llama"
MINILM = "minilm"
ENGINE_READY_TIMEOUT_S = 900.0
# Shared with the developer's `gateway up` (./data) so the tiny model is built once per machine.
DATA_DIR = Path(os.environ.get("GATEWAY_TEST_DATA_DIR", REPO / "data"))


@dataclass
class Engine:
    url: str
    model: str

    def counters(self) -> tuple[float, float]:
        """The engine's own (prompt, generation) token counters: ground truth for metering."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return total(text, "vllm:prompt_tokens_total"), total(text, "vllm:generation_tokens_total")

    def wait_idle(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
            if total(text, "vllm:num_requests_running") + total(text, "vllm:num_requests_waiting") == 0:
                return
            time.sleep(0.1)
        raise TimeoutError("engine still busy")


async def _launch(pool: PoolSpec, log_dir: Path) -> tuple[EngineLauncher, Engine]:
    launcher = EngineLauncher(DeploymentSpec(pools=[pool]), DATA_DIR, log_dir)
    await launcher.start()
    try:
        await launcher.wait_ready(ENGINE_READY_TIMEOUT_S, lambda line: sys.stderr.write(line + "\n"))
    except BaseException:
        await launcher.stop()
        raise
    return launcher, Engine(pool.endpoint_urls()[0], pool.served_name)


@pytest.fixture(scope="session")
async def vllm_engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Engine]:
    pool = PoolSpec(
        served_name=TINY,
        model="builtin:tiny-llama",
        base_port=free_port(),
        vllm_args=["--max-model-len", "16384", "--max-num-seqs", "8", "--dtype", "float32"],
        tool_call_parser="pythonic",  # as configs/local.yaml (the tiny tokenizer lacks llama3_json's token)
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    launcher, engine = await _launch(pool, tmp_path_factory.mktemp("vllm-logs"))
    try:
        yield engine
    finally:
        await launcher.stop()


@pytest.fixture(scope="session")
async def embedding_engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Engine]:
    pool = PoolSpec(
        served_name=MINILM,
        model="builtin:all-minilm-l6-v2",
        kind="embed",
        base_port=free_port(),
        vllm_args=["--max-model-len", "256", "--dtype", "float32"],
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    launcher, engine = await _launch(pool, tmp_path_factory.mktemp("minilm-logs"))
    try:
        yield engine
    finally:
        await launcher.stop()


@dataclass
class GatewayProcess:
    url: str
    env: dict[str, str]
    database: Path
    log: Path

    def cli(self, *args: str) -> str:
        """Run the ``gateway`` CLI against this gateway's database; returns stdout."""
        return gateway_cli(self.env, *args)

    def new_key(self, tenant: str, *flags: str) -> str:
        self.cli("tenants", "create", tenant)
        return self.cli("keys", "create", "--tenant", tenant, *flags).strip().splitlines()[-1]

    def ledger(self, tenant: str, expected_rows: int, timeout_s: float = 10) -> list[UsageRecord]:
        """The tenant's ledger rows once ``expected_rows`` are there (the writer batches)."""

        async def read() -> list[UsageRecord]:
            store = create_store(self.env["GATEWAY_DATABASE_URL"])  # SQLite or PostgreSQL
            await store.open()
            try:
                tenant_id = (await store.get_tenant(tenant)).id
                return await store.list_usage(tenant_id)
            finally:
                await store.close()

        deadline = time.monotonic() + timeout_s
        while True:
            rows = asyncio.run(read())
            if len(rows) >= expected_rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text


def start_gateway(
    tmp: Path, pools: list[PoolSpec], extra_env: dict[str, str] | None = None
) -> tuple[Process, GatewayProcess]:
    spec_path = tmp / "pools.yaml"
    spec_path.write_text(yaml.safe_dump({"pools": [p.model_dump(mode="json") for p in pools]}))
    port = free_port()
    database = tmp / "gateway.db"
    env = {
        "GATEWAY_CONFIG_PATH": str(spec_path),
        "GATEWAY_DATABASE_URL": f"sqlite:///{database}",
        "GATEWAY_PORT": str(port),
        "GATEWAY_AUTH_CACHE_TTL_S": "0.5",
        "GATEWAY_LOG_LEVEL": "info",
        "GATEWAY_JOURNAL_DIR": str(tmp / "journal"),
        **(extra_env or {}),
    }
    log = tmp / f"gateway-{port}.log"
    proc = Process([sys.executable, "-m", "gateway.cli", "serve"], log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/health", 60)
    except BaseException:
        proc.stop()
        raise
    return proc, GatewayProcess(url, env, database, log)


@pytest.fixture(scope="session")
def gateway_proc(vllm_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    pool = PoolSpec(served_name=TINY, endpoints=[vllm_engine.url])
    proc, gateway = start_gateway(tmp_path_factory.mktemp("gateway"), [pool])
    try:
        yield gateway
    finally:
        proc.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The ledger of a test that must hold on both backends: a SQLite file or a fresh PG schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    require_postgres()
    # One loop for both ends: ``asyncio.run`` would finalise the generator (dropping the schema)
    # as soon as it returned.
    loop = asyncio.new_event_loop()
    schema = temporary_schema("e2e")
    try:
        yield loop.run_until_complete(schema.__aenter__())
    finally:
        loop.run_until_complete(schema.__aexit__(None, None, None))
        loop.close()
