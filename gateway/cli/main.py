"""The ``gateway`` command: run the gateway, manage tenants, keys and their limits, report usage.

Tenant, key and limit commands call the same ``TenancyService`` as the admin API, and ``usage report``
the same ``UsageReporter``, straight against the database named by ``GATEWAY_DATABASE_URL``.
A running gateway notices a revocation or suspension within ``GATEWAY_AUTH_CACHE_TTL_S``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from gateway.cli.datadir import MissingDatabaseError, locate, require_database
from gateway.cli.reconcile import add_reconcile_command
from gateway.config.limits import load_default_limits
from gateway.config.loader import ConfigError
from gateway.config.prices import load_prices
from gateway.errors import GatewayError, InvalidRequestError
from gateway.limit_spec import WRITTEN_NAMES, LimitSpec
from gateway.records import ApiKey, TenantStatus
from gateway.reporting.charts import render_usage_chart
from gateway.reporting.reports import ReportPeriod, UsageReporter, render_csv, render_json, render_table
from gateway.server import configure_logging, run_async
from gateway.settings import Settings
from gateway.store import Store, StoreError, create_store
from gateway.store.base import UNSET
from gateway.tenancy.service import TenancyService
from gateway.utc import format_timestamp, parse_timestamp

Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]
StoreCommand = Callable[[argparse.Namespace, Settings, Store], Awaitable[int]]
EVERY_MODEL = "*"
NEVER = "never"
CONFIG_ERROR_STATUS = 2  # like a usage error: the command cannot start with this configuration


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")


def expiry_arg(value: str) -> float | None:
    """``--expires``: an ISO date (00:00 UTC), an ISO date-time, or ``never``."""
    if value == NEVER:
        return None
    try:
        return parse_timestamp(value, "--expires")
    except GatewayError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def models_arg(value: str) -> frozenset[str] | None:
    """``--models``: a comma-separated allow-list, or ``*`` for every model."""
    if value.strip() == EVERY_MODEL:
        return None
    models = frozenset(m.strip() for m in value.split(",") if m.strip())
    if not models:
        raise argparse.ArgumentTypeError("--models needs at least one model name (or '*')")
    return models


def _store_command(command: StoreCommand, *, reads: bool = False) -> Handler:
    """Open the store for the command and close it after, whatever happens. A command that only
    ``reads`` refuses a database that does not exist rather than creating an empty one."""

    async def handler(args: argparse.Namespace, settings: Settings) -> int:
        if reads:
            require_database(settings)
        store = create_store(settings.database_url)
        await store.open()
        try:
            return await command(args, settings, store)
        finally:
            await store.close()

    return handler


def _tenancy(settings: Settings, store: Store) -> TenancyService:
    return TenancyService(store, rotation_grace_s=settings.key_rotation_grace_s)


def describe_key(key: ApiKey) -> str:
    """One line per key: never the secret, never the hash."""
    models = ",".join(sorted(key.models)) if key.models is not None else EVERY_MODEL
    expires = format_timestamp(key.expires_at) if key.expires_at is not None else NEVER
    state = f"revoked={format_timestamp(key.revoked_at)}" if key.revoked_at is not None else "active"
    return (
        f"{key.id}  tenant={key.tenant_name}  prefix={key.prefix}…  models={models}  "
        f"expires={expires}  {state}"
    )


async def _tenants_create(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    tenant = await _tenancy(settings, store).create_tenant(args.name)
    _out(f"created tenant {tenant.name} ({tenant.id})")
    return 0


async def _tenants_list(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    for tenant in await _tenancy(settings, store).list_tenants(args.all):
        _out(f"{tenant.id}  {tenant.name}  {tenant.status}  created={format_timestamp(tenant.created_at)}")
    return 0


def _set_status(status: TenantStatus, verb: str) -> StoreCommand:
    async def command(args: argparse.Namespace, settings: Settings, store: Store) -> int:
        tenant = await _tenancy(settings, store).set_tenant_status(args.name, status)
        _out(f"{verb} tenant {tenant.name}; status is now {tenant.status}")
        return 0

    return command


async def _keys_create(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    issued = await _tenancy(settings, store).create_key(args.tenant, args.models, args.expires)
    _out(describe_key(issued.key))
    _out("This key is shown once; store it now:")
    _out(issued.secret)
    return 0


async def _keys_list(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    for key in await _tenancy(settings, store).list_keys(args.tenant):
        _out(describe_key(key))
    return 0


async def _keys_revoke(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    key = await _tenancy(settings, store).revoke_key(args.key_id)
    _out(f"revoked {key.id}; it stops working within {settings.auth_cache_ttl_s:g} s")
    return 0


async def _keys_rotate(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    rotation = await _tenancy(settings, store).rotate_key(args.key_id, args.grace)
    old_expiry = rotation.old.expires_at
    assert old_expiry is not None  # rotation always sets one
    _out(f"{rotation.old.id} keeps working until {format_timestamp(old_expiry)}; its replacement:")
    _out(describe_key(rotation.new.key))
    _out("This key is shown once; store it now:")
    _out(rotation.new.secret)
    return 0


async def _keys_update(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    if args.models is UNSET and args.expires is UNSET:
        raise InvalidRequestError("keys update needs --models and/or --expires")
    key = await _tenancy(settings, store).update_key(args.key_id, args.models, args.expires)
    _out(describe_key(key))
    return 0


def describe_limits(limits: LimitSpec | None) -> str:
    """``rpm=60 tpm=10000 monthly_cost=25.00``, or ``unlimited``."""
    written = limits.written() if limits is not None else {}
    return " ".join(f"{name}={value}" for name, value in written.items()) or "unlimited"


def tenant_limits_line(name: str, limits: LimitSpec | None, settings: Settings) -> str:
    if limits is not None:
        return f"tenant {name}: {describe_limits(limits)}"
    path = settings.limits_path
    source = f"from {path}" if path is not None and path.exists() else f"no {path or 'limits file'}"
    return f"tenant {name}: defaults: {describe_limits(load_default_limits(path))} ({source})"


def key_limits_line(key: ApiKey) -> str:
    own = describe_limits(key.limits) if key.limits is not None else "none of its own"
    return f"key {key.id}: {own}"


async def _limits_apply(
    args: argparse.Namespace, settings: Settings, store: Store, limits: LimitSpec | None
) -> int:
    tenancy = _tenancy(settings, store)
    if args.tenant is not None:
        tenant = await tenancy.set_tenant_limits(args.tenant, limits)
        _out(tenant_limits_line(tenant.name, tenant.limits, settings))
    else:
        _out(key_limits_line(await tenancy.set_key_limits(args.key, limits)))
    _note(f"a running gateway applies this within {settings.auth_cache_ttl_s:g} s")
    return 0


async def _limits_set(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    written = {name: getattr(args, name) for name in WRITTEN_NAMES}
    return await _limits_apply(args, settings, store, LimitSpec.from_written(written))


async def _limits_clear(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    return await _limits_apply(args, settings, store, None)


async def _limits_show(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    tenancy = _tenancy(settings, store)
    if args.tenant is not None:
        tenant = await tenancy.get_tenant(args.tenant)
        _out(tenant_limits_line(tenant.name, tenant.limits, settings))
    else:
        key = await tenancy.get_key(args.key)
        _out(key_limits_line(key))
        _out(tenant_limits_line(key.tenant_name, key.tenant_limits, settings))
    return 0


_RENDERERS = {"json": render_json, "csv": render_csv, "table": render_table}


async def _usage_report(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    period = ReportPeriod.parse_or_month_to_date(args.from_, args.to, time.time())
    currency = load_prices(settings.prices_path).currency if settings.prices_path is not None else "USD"
    reporter = UsageReporter(store, currency)
    report = await reporter.report(args.tenant, period, args.group_by)
    sys.stdout.write(_RENDERERS[args.format](report).rstrip("\n") + "\n")
    if args.chart is not None:
        args.chart.write_text(render_usage_chart(await reporter.daily_by_model(args.tenant, period)))
        _note(f"wrote {args.chart}")
    return 0


async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.workers import serve

    return await serve(settings)


async def _up(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.cli.embedded import run_embedded

    if settings.workers > 1:
        raise ConfigError("gateway up runs one gateway process; several workers are for gateway serve")

    return await run_embedded(settings, demo_tenant=args.demo_tenant, engine_base_port=args.engine_base_port)


def _add_tenant_commands(commands: Any) -> None:
    tenants = commands.add_parser("tenants", help="create, list, suspend, activate, delete").add_subparsers(
        dest="action", required=True
    )
    create = tenants.add_parser("create")
    create.add_argument("name")
    create.set_defaults(handler=_store_command(_tenants_create))
    listing = tenants.add_parser("list")
    listing.add_argument("--all", action="store_true", help="include deleted tenants")
    listing.set_defaults(handler=_store_command(_tenants_list, reads=True))
    for action, status, verb, help_text in (
        ("suspend", TenantStatus.suspended, "suspended", "refuse its keys until activated"),
        ("activate", TenantStatus.active, "activated", "reactivate a suspended tenant"),
        ("delete", TenantStatus.deleted, "deleted", "soft delete: revoke its keys, keep its usage"),
    ):
        sub = tenants.add_parser(action, help=help_text)
        sub.add_argument("name")
        sub.set_defaults(handler=_store_command(_set_status(status, verb)))


def _add_key_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="create, list, revoke, rotate, update").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create")
    create.add_argument("--tenant", required=True)
    create.add_argument("--models", type=models_arg, help="comma-separated allow-list, or '*' (default)")
    create.add_argument("--expires", type=expiry_arg, help="ISO date or date-time (UTC), or 'never'")
    create.set_defaults(handler=_store_command(_keys_create))
    listing = keys.add_parser("list")
    listing.add_argument("--tenant")
    listing.set_defaults(handler=_store_command(_keys_list, reads=True))
    revoke = keys.add_parser("revoke")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_store_command(_keys_revoke))
    rotate = keys.add_parser("rotate", help="new key, same tenant/models/expiry; old one expires later")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", type=float, help="seconds the old key keeps working (default: settings)")
    rotate.set_defaults(handler=_store_command(_keys_rotate))
    update = keys.add_parser("update")
    update.add_argument("key_id")
    update.add_argument("--models", type=models_arg, default=UNSET, help="a,b or '*' for every model")
    update.add_argument("--expires", type=expiry_arg, default=UNSET, help="ISO date/date-time or 'never'")
    update.set_defaults(handler=_store_command(_keys_update))


def _add_limit_commands(commands: Any) -> None:
    limits = commands.add_parser("limits", help="set, clear, show a tenant's or a key's limits")
    actions = limits.add_subparsers(dest="action", required=True)
    for action, handler, help_text in (
        ("set", _limits_set, "replace the limits; a limit left out is unlimited at this level"),
        ("clear", _limits_clear, "a tenant back to the configured defaults; a key to none of its own"),
        ("show", _limits_show, "a tenant's limits (or the defaults it gets); a key's and its tenant's"),
    ):
        sub = actions.add_parser(action, help=help_text)
        target = sub.add_mutually_exclusive_group(required=True)
        target.add_argument("--tenant", help="tenant name")
        target.add_argument("--key", help="key id")
        sub.set_defaults(handler=_store_command(handler, reads=action == "show"))
        if action == "set":
            sub.add_argument("--rpm", type=int, help="requests per minute")
            sub.add_argument("--tpm", type=int, help="prompt + completion tokens per minute")
            sub.add_argument("--max-concurrent", type=int, help="requests in flight at once")
            sub.add_argument("--monthly-tokens", type=int, help="tokens per UTC calendar month")
            sub.add_argument("--monthly-cost", help="cost per UTC calendar month, e.g. 25.00")


def _add_usage_commands(commands: Any) -> None:
    usage = commands.add_parser("usage", help="usage reports").add_subparsers(dest="action", required=True)
    report = usage.add_parser("report", help="totals per day, model or key from the ledger")
    report.add_argument("--tenant", help="default: every tenant")
    report.add_argument(
        "--from", dest="from_", help="first UTC day (YYYY-MM-DD), included; default: 1st of the month"
    )
    report.add_argument("--to", help="last UTC day (YYYY-MM-DD), included; default: today")
    report.add_argument("--group-by", choices=("day", "model", "key"), default="day")
    report.add_argument("--format", choices=sorted(_RENDERERS), default="table")
    report.add_argument("--chart", type=Path, help="also write an HTML chart per day and model here")
    report.set_defaults(handler=_store_command(_usage_report, reads=True))
    add_reconcile_command(usage, lambda command: _store_command(command, reads=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--config", type=Path, help="pool spec YAML (default: GATEWAY_CONFIG_PATH)")
    parser.add_argument("--database-url", help="default: GATEWAY_DATABASE_URL")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="build the tiny model, start engines and the gateway")
    up.add_argument("--demo-tenant", default="demo")
    up.add_argument("--port", type=int, help="the gateway's port (default: GATEWAY_PORT, 8000)")
    up.add_argument("--engine-base-port", type=int, help="first engine port (default: the pool spec's)")
    up.set_defaults(handler=_up)
    serve = commands.add_parser("serve", help="start the gateway only")
    serve.add_argument(
        "--workers",
        type=int,
        help="gateway processes on the port (default: GATEWAY_WORKERS, 1); >1 needs Redis",
    )
    serve.set_defaults(handler=_serve)
    _add_tenant_commands(commands)
    _add_key_commands(commands)
    _add_limit_commands(commands)
    _add_usage_commands(commands)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if args.config:
        overrides["config_path"] = args.config
    if args.database_url:
        overrides["database_url"] = args.database_url
    for name in ("port", "workers"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    settings = Settings.load(**overrides)
    return settings if args.command in ("up", "serve") else locate(settings, **overrides)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure the user can fix is one ``error: …`` line on stderr: a bad
    setting or configuration file exits with 2, a refused operation or an unreachable store with 1."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        settings = _settings(args)
        configure_logging(settings.log_level)
        return run_async(handler(args, settings))
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return CONFIG_ERROR_STATUS
    except GatewayError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 1
    except (StoreError, MissingDatabaseError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
