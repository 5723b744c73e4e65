"""``python -m engines --config configs/local.yaml``: run a pool spec's engines without a gateway.

``kill -HUP`` restarts them one at a time, each once its requests have finished. Gateways named
with ``--gateway`` are told through their admin API to route nothing new to an engine before it
restarts (``gateway up`` does the same in-process). Each engine requires the API key in
``GATEWAY_ENGINE_API_KEY``, which the gateways are given too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from engines.launcher import EngineLauncher, GatewayAdminDrain
from gateway.config.loader import ConfigError
from gateway.config.pools import load_spec


async def _run(config: Path, data_dir: Path, timeout_s: float, gateways: list[str]) -> None:
    hook = GatewayAdminDrain(gateways, os.environ.get("GATEWAY_ADMIN_TOKEN", "")) if gateways else None
    api_key = os.environ.get("GATEWAY_ENGINE_API_KEY") or None  # the gateways send the same
    launcher = EngineLauncher(load_spec(config), data_dir, data_dir / "logs", hook, api_key)
    await launcher.start()
    try:
        await launcher.wait_ready(timeout_s, lambda line: logging.getLogger("engines").info("%s", line))
        launcher.restart_on_sighup()
        await launcher.supervise()
    finally:
        await launcher.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("configs/local.yaml"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for /health")
    parser.add_argument(
        "--gateway",
        action="append",
        default=[],
        metavar="URL",
        help="a gateway to drain engines on before a planned restart (repeatable; admin token "
        "from GATEWAY_ADMIN_TOKEN)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(args.config, args.data_dir, args.timeout, args.gateway))
    except ConfigError as exc:  # one line naming the file and the key path, as ``gateway`` does
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
