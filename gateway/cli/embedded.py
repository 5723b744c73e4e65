"""``gateway up``: the embedded default on one machine.

Builds the tiny model if missing, starts the CPU vLLM engine(s) of the pool spec, starts the
gateway on SQLite, creates a demo tenant and key, and prints how to call it.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from engines.launcher import EngineLauncher, EngineStartError
from gateway.app import create_app
from gateway.config.pools import DeploymentSpec, load_spec
from gateway.connections import raise_open_file_limit
from gateway.errors import ResourceConflictError
from gateway.server import freeze_startup_objects, uvicorn_config
from gateway.settings import Settings
from gateway.store import create_store
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


async def create_demo_key(settings: Settings, tenant: str, models: frozenset[str]) -> str:
    """A fresh key for the demo tenant (created on first use); returns the secret."""
    store = create_store(settings.database_url)
    await store.open()
    try:
        tenancy = TenancyService(store)
        try:
            await tenancy.create_tenant(tenant)
        except ResourceConflictError:
            pass  # exists from an earlier run
        return (await tenancy.create_key(tenant, models)).secret
    finally:
        await store.close()


def banner(settings: Settings, spec: DeploymentSpec, secret: str) -> str:
    base = f"http://{settings.host}:{settings.port}/v1"
    python = sys.executable  # the interpreter that has the openai SDK installed
    model = spec.pools[0].served_name
    return f"""
Gateway ready at {base}  (ledger: {settings.database_url}; metrics: /metrics)
Demo tenant key (shown once): {secret}

  curl {base}/chat/completions \\
    -H "Authorization: Bearer {secret}" -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 16}}'

  {python} -c "from openai import OpenAI; c = OpenAI(base_url='{base}', api_key='{secret}'); \\
print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hello!'}}], \\
max_tokens=16).choices[0].message.content)"

Press Ctrl-C to stop the gateway and its engines.
"""


async def run_embedded(settings: Settings, demo_tenant: str) -> int:
    spec = load_spec(settings.config_path)
    if settings.engine_api_key is None:  # a fresh key per run: only this gateway can use the engines
        settings = settings.model_copy(update={"engine_api_key": SecretStr(secrets.token_urlsafe(32))})
    assert settings.engine_api_key is not None
    app = create_app(settings, spec)  # every setting and file checked before an engine starts
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
        secret = await create_demo_key(settings, demo_tenant, frozenset(p.served_name for p in spec.pools))
        launcher.drain_hook = RouterDrain(app)
        launcher.restart_on_sighup()
        server = uvicorn.Server(uvicorn_config(app, settings, raise_open_file_limit()))
        freeze_startup_objects()
        _leave_signals_to_uvicorn()
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            sys.stdout.write(banner(settings, spec, secret))
            sys.stdout.flush()
        await serving
        return 0
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
