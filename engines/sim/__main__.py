"""``python -m engines.sim``: serve one simulated engine with uvicorn (uvloop + httptools)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from engines.sim.app import create_sim_app
from engines.sim.config import DEFAULT_MODEL, SimConfig
from engines.sim.errors import SimulatedCrash

logger = logging.getLogger("engines.sim")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line flags (names follow vLLM's where vLLM has one)."""
    parser = argparse.ArgumentParser(prog="python -m engines.sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", action="append", dest="models", help="served model name (repeatable)")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="wait before the first token")
    parser.add_argument("--itl-ms", type=float, default=0.0, help="wait between tokens (0: just yield)")
    parser.add_argument("--output-tokens", type=int, default=16, help="tokens the model wants to say")
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--failure-status", type=int, default=500)
    parser.add_argument("--fail-after-tokens", type=int, default=None, help="cut streams after N tokens")
    parser.add_argument("--embedding-dim", type=int, default=384)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=16, help="prefix cache block, in tokens")
    parser.add_argument(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="report prompt_tokens_details.cached_tokens in usage",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VLLM_API_KEY") or None,
        help="required on /v1/* as a bearer token (default: VLLM_API_KEY, as vLLM)",
    )
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The ``SimConfig`` the flags describe (validated: a bad value exits with the field named)."""
    return SimConfig(
        models=args.models or [DEFAULT_MODEL],
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        output_tokens=args.output_tokens,
        failure_rate=args.failure_rate,
        failure_status=args.failure_status,
        fail_after_tokens=args.fail_after_tokens,
        embedding_dim=args.embedding_dim,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        prefix_block_size=args.block_size,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        seed=args.seed,
    )


class _DropSimulatedCrashes(logging.Filter):
    """A cut stream is the requested behaviour, not an error worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SimulatedCrash))


class _SimServer(uvicorn.Server):
    """Logs one line once the socket is accepting connections."""

    def __init__(self, config: uvicorn.Config, models: list[str]) -> None:
        super().__init__(config)
        self._models = models

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port, models = self.config.host, self.config.port, ",".join(self._models)
            logger.info("sim engine ready on http://%s:%d models=%s", host, port, models)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit status."""
    args = parse_args(argv)
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=log_format)
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        logger.error("invalid simulator settings: %s", exc)
        return 2
    logging.getLogger("uvicorn.error").addFilter(_DropSimulatedCrashes())
    server_config = uvicorn.Config(
        create_sim_app(config, args.api_key),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        # Per-request work the simulator does not need (measured: a few percent of a request).
        proxy_headers=False,
        server_header=False,
        log_config=None,
        log_level="warning",
        backlog=4096,
        # Streams with pacing would otherwise hold SIGTERM until they finish.
        timeout_graceful_shutdown=1,
    )
    server = _SimServer(server_config, config.models)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal against whatever
    # handler it restores; a no-op handler there turns that into a plain exit with status 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
