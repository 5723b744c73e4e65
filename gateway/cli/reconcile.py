"""``gateway usage reconcile``: the engines' token counters against the ledger, per engine and hour."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.reconcile.report import reconcile_report, render_reconcile_table
from gateway.settings import Settings
from gateway.store import Store

StoreCommand = Callable[[argparse.Namespace, Settings, Store], Awaitable[int]]
Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


async def _reconcile(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    report = await reconcile_report(store, args.from_, args.to)
    if args.json:
        text = report.model_dump_json(by_alias=True, indent=2)
    else:
        text = render_reconcile_table(report)
    sys.stdout.write(text.rstrip("\n") + "\n")
    return 0


def add_reconcile_command(usage: Any, store_command: Callable[[StoreCommand], Handler]) -> None:
    """Add ``reconcile`` to the ``usage`` subcommands (``store_command`` opens the store for it)."""
    reconcile = usage.add_parser(
        "reconcile", help="engine token counters against the ledger, per engine and UTC hour"
    )
    reconcile.add_argument(
        "--from", dest="from_", required=True, help="UTC date or date-time (its hour is included)"
    )
    reconcile.add_argument(
        "--to", required=True, help="UTC date (included) or date-time (up to its hour's end)"
    )
    reconcile.add_argument("--json", action="store_true", help="JSON instead of a table")
    reconcile.set_defaults(handler=store_command(_reconcile))
