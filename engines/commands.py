"""The command line and environment of each engine replica a pool spec describes.

Each replica of a launched pool is one vLLM OpenAI server (``python -m
vllm.entrypoints.openai.api_server``; the ``vllm`` console script trips over the CPU wheel's
package metadata) or, for ``engine: sim``, one ``python -m engines.sim``, bound to loopback, with
the API key only the gateway knows in its environment (``VLLM_API_KEY``), never its argv.
"""

from __future__ import annotations

import logging
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from engines.models import resolve_model_source
from engines.placement import BIND_VARIABLE, cpu_bindings
from gateway.config.pools import ENGINE_KEY_VARIABLE, DeploymentSpec, PoolSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineCommand:
    """Everything needed to (re)start one engine replica."""

    name: str  # ``served_name#replica``
    argv: list[str]
    env: dict[str, str]
    url: str

    @property
    def address(self) -> tuple[str, int]:
        parts = urllib.parse.urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80


# Usage then carries ``prompt_tokens_details.cached_tokens``: the prompt tokens served from the
# prefix cache, which the ledger records and the price table bills at the cached-input price.
PROMPT_TOKENS_DETAILS = "--enable-prompt-tokens-details"


def _with_prompt_tokens_details(args: list[str]) -> list[str]:
    """``args`` with cached-token reporting on, added once (a pool may already list it)."""
    return args if PROMPT_TOKENS_DETAILS in args else [*args, PROMPT_TOKENS_DETAILS]


def vllm_argv(pool: PoolSpec, model: str, port: int, python: str = sys.executable) -> list[str]:
    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        pool.served_name,
        "--host",
        pool.host,
        "--port",
        str(port),
    ]
    if pool.kind == "embed" and "--runner" not in pool.vllm_args:
        argv += ["--runner", "pooling"]
    return argv + pool.tool_call_flags() + _with_prompt_tokens_details(pool.vllm_args)


def sim_argv(pool: PoolSpec, port: int, python: str = sys.executable) -> list[str]:
    argv = [python, "-m", "engines.sim", "--host", pool.host, "--port", str(port)]
    return argv + ["--model", pool.served_name, *_with_prompt_tokens_details(pool.vllm_args)]


def engine_env(
    pool: PoolSpec, replica: int, cpu_bind: str | None = None, api_key: str | None = None
) -> dict[str, str]:
    """The replica's environment additions: offline hub, GPU or CPU placement, the API key the
    gateway sends (in the environment, not on the command line where ``ps`` shows it), the
    pool's own ``env``."""
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if pool.device == "gpu" and pool.placement:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in pool.placement[replica].gpu_ids)
    if cpu_bind is not None:
        env[BIND_VARIABLE] = cpu_bind
    if api_key:
        env[ENGINE_KEY_VARIABLE] = api_key
    return env | pool.env


def build_commands(
    spec: DeploymentSpec, data_dir: Path, python: str = sys.executable, api_key: str | None = None
) -> list[EngineCommand]:
    """One command per launched replica; resolves (and builds if needed) each pool's model once.
    ``api_key``: what each engine requires on /v1 (None: nothing, and a warning)."""
    commands = []
    cpu_binds = cpu_bindings(spec)
    if api_key is None and any(pool.launched for pool in spec.pools):
        logger.warning("engines start without an API key: anything reaching their ports bypasses the gateway")
    for pool in spec.pools:
        if not pool.launched:
            continue
        if pool.overrides_host:
            logger.warning(
                "%s: vllm_args override --host (allow_host_override): its engines may "
                "be reachable beyond loopback",
                pool.served_name,
            )
        model = resolve_model_source(pool.model, data_dir) if pool.engine == "vllm" else pool.model
        for replica, (port, url) in enumerate(zip(pool.ports(), pool.endpoint_urls(), strict=True)):
            argv = (
                vllm_argv(pool, model, port, python)
                if pool.engine == "vllm"
                else sim_argv(pool, port, python)
            )
            name = f"{pool.served_name}#{replica}"
            env = engine_env(pool, replica, cpu_binds.get(name), api_key)
            commands.append(EngineCommand(name, argv, env, url))
    return commands
