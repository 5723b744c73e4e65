"""``gateway up``: the embedded default on one machine.

Checks that its ports are free, builds the tiny model if missing, starts the CPU vLLM engine(s)
of the pool spec, starts the gateway on SQLite, gives the demo tenant its key (the same one
across restarts) and prints how to call it.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import time

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from engines.launcher import EngineLauncher, EngineStartError
from engines.process import port_taken
from gateway.app import create_app
from gateway.cli.datadir import remember
from gateway.config.loader import ConfigError
from gateway.config.pools import DeploymentSpec, load_spec
from gateway.connections import raise_open_file_limit
from gateway.errors import ResourceConflictError
from gateway.server import freeze_startup_objects, uvicorn_config
from gateway.settings import Settings
from gateway.store import create_store
from gateway.tenancy.auth import hash_key
from gateway.tenancy.service import TenancyService

ENGINE_START_TIMEOUT_S = 900.0


def _progress(line: str) -> None:
    sys.stderr.write(f"  {line}\n")
    sys.stderr.flush()


class RouterDrain:
    """The launcher's drain hook for the gateway in this process: before an engine restarts on
    purpose (``kill -HUP``) or once it has died, no new request is routed to it (requests wait
    for it when it was a model's only one); once it serves again it is checked and back in
    service at once, not at the next health round."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    async def drain(self, url: str) -> None:
        state = getattr(self._app.state, "gateway", None)  # None until the lifespan has started
        if state is not None:
            state.router.set_draining(url, True)

    async def resume(self, url: str) -> None:
        state = getattr(self._app.state, "gateway", None)
        if state is not None:
            await state.health.check(state.router.set_draining(url, False))


DEMO_KEY_FILE = "demo-key"  # in the data directory: the demo tenant's key, reused across runs


async def demo_key(settings: Settings, tenant: str, models: frozenset[str]) -> tuple[str, bool]:
    """The demo tenant's key and whether it is the one of an earlier run.

    The secret is kept in ``data_dir/demo-key`` (mode 0600, like an SSH key): a restart prints
    the same key, so snippets pasted earlier keep working. When that key no longer works (revoked,
    expired, another database), the demo tenant's keys are revoked and one new key replaces them.
    """
    path = settings.data_dir / DEMO_KEY_FILE
    store = create_store(settings.database_url)
    await store.open()
    try:
        tenancy = TenancyService(store)
        try:
            await tenancy.create_tenant(tenant)
        except ResourceConflictError:
            pass  # exists from an earlier run
        saved = path.read_text().strip() if path.exists() else ""
        if saved:
            key = await store.get_key_by_hash(hash_key(saved))
            if key is not None and key.tenant_name == tenant and key.usable_at(time.time()):
                return saved, True
        for old in await tenancy.list_keys(tenant):
            if old.revoked_at is None:
                await tenancy.revoke_key(old.id)
        secret = (await tenancy.create_key(tenant, models)).secret
    finally:
        await store.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)  # the secret, readable by its owner only
    path.write_text(secret + "\n")
    return secret, False


def with_engine_base_port(spec: DeploymentSpec, base_port: int) -> DeploymentSpec:
    """The spec with its launched engines moved to start at ``base_port`` (their spacing kept)."""
    launched = [p for p in spec.pools if p.launched]
    if not launched:
        return spec
    shift = base_port - min(p.base_port for p in launched)
    pools = [p.model_copy(update={"base_port": p.base_port + shift}) if p.launched else p for p in spec.pools]
    return DeploymentSpec.model_validate({"pools": [p.model_dump() for p in pools]})


def check_ports(settings: Settings, spec: DeploymentSpec) -> None:
    """One ``ConfigError`` line naming a busy port and the flag that moves it, before anything starts."""
    if port_taken(settings.host, settings.port):
        raise ConfigError(
            f"port {settings.port} on {settings.host} is in use: start the gateway on another one with "
            f"`gateway up --port {settings.port + 1}` (or GATEWAY_PORT)"
        )
    for pool in (p for p in spec.pools if p.launched):
        for port in pool.ports():
            if port_taken(pool.host, port):
                raise ConfigError(
                    f"engine port {port} ({pool.served_name}) on {pool.host} is in use (an engine left by "
                    f"an earlier run, or another `gateway up`?): stop it (e.g. `fuser -k {port}/tcp`) or "
                    f"move the engines with `gateway up --engine-base-port {port + 100}`"
                )


def banner(settings: Settings, spec: DeploymentSpec, secret: str, reused: bool = False) -> str:
    base = f"http://{settings.host}:{settings.port}/v1"
    python = sys.executable  # the interpreter that has the openai SDK installed
    model = spec.pools[0].served_name
    data = settings.data_dir.resolve()
    kept = "the same key as last time" if reused else "a new key"
    admin = (
        "Admin API: on (GATEWAY_ADMIN_TOKEN is set)"
        if settings.admin_token is not None
        else "Admin API: off; start with GATEWAY_ADMIN_TOKEN=<a random 32+ character token> to turn it on"
    )
    return f"""
Gateway ready at {base}  (metrics: http://{settings.host}:{settings.port}/metrics)
Data: {data}  (ledger: {settings.database_url}; engine logs: {data / "logs"})
{admin}
Demo tenant key ({kept}, kept in {data / DEMO_KEY_FILE}): {secret}

  curl {base}/chat/completions \\
    -H "Authorization: Bearer {secret}" -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 16}}'

  {python} -c "from openai import OpenAI; c = OpenAI(base_url='{base}', api_key='{secret}'); \\
print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hello!'}}], \\
max_tokens=16).choices[0].message.content)"

Other commands (gateway keys list, gateway usage report, ...) use this data directory too.
Press Ctrl-C to stop the gateway and its engines.
"""


async def run_embedded(settings: Settings, demo_tenant: str, engine_base_port: int | None = None) -> int:
    spec = load_spec(settings.config_path)
    if engine_base_port is not None:
        spec = with_engine_base_port(spec, engine_base_port)
    if settings.engine_api_key is None:  # a fresh key per run: only this gateway can use the engines
        settings = settings.model_copy(update={"engine_api_key": SecretStr(secrets.token_urlsafe(32))})
    assert settings.engine_api_key is not None
    app = create_app(settings, spec)  # every setting and file checked before an engine starts
    # A busy port is one line now, not a traceback after the engines (the launcher's own
    # PortTakenError stays as the backstop for a port taken between this check and the start).
    check_ports(settings, spec)
    remember(settings.data_dir)
    launcher = EngineLauncher(
        spec,
        settings.data_dir,
        settings.data_dir / "logs",
        api_key=settings.engine_api_key.get_secret_value(),
    )
    engines = sum(p.replicas for p in spec.pools if p.launched)
    _progress(f"starting {engines} engine(s) from {settings.config_path}")
    supervisor: asyncio.Task[None] | None = None
    stopping = _cancel_on_signals()
    try:
        await launcher.start()
        await launcher.wait_ready(ENGINE_START_TIMEOUT_S, _progress)
        supervisor = asyncio.create_task(launcher.supervise())
        launcher.drain_hook = RouterDrain(app)
        launcher.restart_on_sighup()
        server = uvicorn.Server(uvicorn_config(app, settings, raise_open_file_limit()))
        freeze_startup_objects()
        _leave_signals_to_uvicorn()
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:  # only a gateway that serves gets a key
            models = frozenset(p.served_name for p in spec.pools)
            secret, reused = await demo_key(settings, demo_tenant, models)
            sys.stdout.write(banner(settings, spec, secret, reused))
            sys.stdout.flush()
        await serving
        return 0 if server.started else 1
    except asyncio.CancelledError:
        if not stopping.is_set():
            raise
        return 130  # interrupted while the engines were loading
    except EngineStartError as exc:  # e.g. a port taken by an engine an earlier run left behind
        sys.stderr.write(f"error: {exc}\n")
        return 1
    finally:
        if supervisor is not None:
            supervisor.cancel()
        _progress("stopping engines")
        await launcher.stop()


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _cancel_on_signals() -> asyncio.Event:
    """Until uvicorn takes over, Ctrl-C or SIGTERM cancels start-up (engines are then stopped)."""
    loop, task, stopping = asyncio.get_running_loop(), asyncio.current_task(), asyncio.Event()

    def cancel() -> None:
        stopping.set()
        if task is not None:
            task.cancel()

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, cancel)
    return stopping


def _leave_signals_to_uvicorn() -> None:
    """uvicorn shuts down on SIGINT/SIGTERM and then re-raises the signal against the handler it
    found; a no-op there lets ``serve()`` return normally so the engines are stopped after it."""
    loop = asyncio.get_running_loop()
    for signum in _SIGNALS:
        loop.remove_signal_handler(signum)
        signal.signal(signum, lambda *_: None)
