"""The ``gateway`` CLI in a subprocess against a temporary SQLite database."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.records import UsageRecord
from gateway.reporting.reports import ReportPeriod, UsageReporter, render_json
from gateway.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
NOV_1 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "cli.db"
        self.env = {
            **os.environ,
            "GATEWAY_DATABASE_URL": f"sqlite:///{self.db}",
            "GATEWAY_DATA_DIR": str(tmp_path),
            "GATEWAY_KEY_ROTATION_GRACE_S": "7200",
        }

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode == 0) == ok, done.stderr
        return done

    def store(self) -> SqliteStore:
        return SqliteStore(self.db)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def secret_of(output: str) -> str:
    lines = output.splitlines()
    return lines[lines.index("This key is shown once; store it now:") + 1]


def test_tenants_and_keys_lifecycle(cli: Cli) -> None:
    assert cli.run("tenants", "create", "acme").stdout.startswith("created tenant acme (ten_")
    assert cli.run("tenants", "create", "acme", ok=False).stderr == "error: tenant 'acme' exists already\n"
    created = cli.run(
        "keys", "create", "--tenant", "acme", "--models", "m1,m2", "--expires", "2099-01-31"
    ).stdout
    secret = secret_of(created)
    assert "models=m1,m2  expires=2099-01-31T00:00:00Z  active" in created and secret.startswith("sk-gw-")
    key_id = created.split()[0]
    listed = cli.run("keys", "list", "--tenant", "acme").stdout
    assert key_id in listed and secret not in listed and secret[:12] in listed

    updated = cli.run("keys", "update", key_id, "--models", "*", "--expires", "never").stdout
    assert "models=*  expires=never  active" in updated
    assert cli.run("keys", "update", key_id, ok=False).stderr.startswith("error: keys update needs")
    assert "not an ISO-8601 date" in cli.run("keys", "update", key_id, "--expires", "soon", ok=False).stderr

    rotated = cli.run("keys", "rotate", key_id).stdout
    new_secret = secret_of(rotated)
    assert new_secret != secret and rotated.startswith(f"{key_id} keeps working until ")
    old, new = asyncio.run(_keys(cli))
    assert old.id == key_id and new.id != key_id and new.models is None and new.expires_at is None
    assert (
        old.expires_at is not None and abs(old.expires_at - (new.created_at + 7200)) < 60
    )  # settings' grace
    grace = cli.run("keys", "rotate", new.id, "--grace", "60").stdout
    assert "keeps working until" in grace

    assert "revoked " in cli.run("keys", "revoke", key_id).stdout
    assert cli.run("keys", "rotate", key_id, ok=False).stderr.startswith(f"error: key '{key_id}' is revoked")
    assert "suspended" in cli.run("tenants", "suspend", "acme").stdout
    assert "acme  suspended" in cli.run("tenants", "list").stdout
    assert "status is now active" in cli.run("tenants", "activate", "acme").stdout
    cli.run("tenants", "delete", "acme")
    assert "acme" not in cli.run("tenants", "list").stdout
    assert "acme  deleted" in cli.run("tenants", "list", "--all").stdout
    assert all("revoked=" in line for line in cli.run("keys", "list").stdout.splitlines())
    assert (
        cli.run("keys", "create", "--tenant", "nobody", ok=False).stderr
        == "error: no tenant named 'nobody'\n"
    )


async def _keys(cli: Cli) -> list[object]:
    store = cli.store()
    await store.open()
    try:
        return list(await store.list_keys("acme"))
    finally:
        await store.close()


async def _seed(cli: Cli) -> str:
    """Two days of usage for acme (two models), one row for another tenant; the JSON report."""
    store = cli.store()
    await store.open()
    try:
        key = await store.create_key(
            (await store.create_tenant("acme")).name, "a" * 64, "sk-gw-a", None, None
        )
        other = await store.create_key(
            (await store.create_tenant("other")).name, "b" * 64, "sk-gw-b", None, None
        )
        chat = "chat.completions"
        rows = [
            UsageRecord(
                "r1",
                key.tenant_id,
                key.id,
                "m1",
                chat,
                NOV_1 + 10,
                prompt_tokens=10,
                completion_tokens=5,
                cost_pico=1_500_000,
                cached_tokens=6,
            ),
            UsageRecord(
                "r2",
                key.tenant_id,
                key.id,
                "m2",
                chat,
                NOV_1 + 86_400,
                prompt_tokens=7,
                completion_tokens=3,
                cost_pico=333_333_333_333,
            ),
            UsageRecord("r3", other.tenant_id, other.id, "m1", chat, NOV_1, prompt_tokens=99),
        ]
        await store.insert_usage(rows)
        period = ReportPeriod.parse("2026-11-01", "2026-11-02")
        return render_json(await UsageReporter(store, "USD").report("acme", period, "model"))
    finally:
        await store.close()


def test_usage_report_formats_and_chart(cli: Cli, tmp_path: Path) -> None:
    expected = json.loads(asyncio.run(_seed(cli)))
    period = ["--tenant", "acme", "--from", "2026-11-01", "--to", "2026-11-02"]
    as_json = cli.run("usage", "report", *period, "--group-by", "model", "--format", "json").stdout
    assert json.loads(as_json) == expected  # the same data as the API's JSON
    assert expected["total"]["cost"] == "0.333334833333" and expected["total"]["total_tokens"] == 25
    as_csv = cli.run("usage", "report", *period, "--format", "csv").stdout
    assert as_csv == (
        "day,requests,prompt_tokens,completion_tokens,total_tokens,cost,currency,cached_tokens\n"
        "2026-11-01,1,10,5,15,0.000001500000,USD,6\n"
        "2026-11-02,1,7,3,10,0.333333333333,USD,0\n"
        "total,2,17,8,25,0.333334833333,USD,6\n"
    )
    chart = tmp_path / "usage.html"
    table = cli.run("usage", "report", *period, "--group-by", "key", "--chart", str(chart))
    assert table.stdout.splitlines()[-1].split() == ["total", "2", "17", "6", "8", "25", "0.333334833333"]
    assert table.stderr == f"wrote {chart}\n"
    page = chart.read_text()
    assert page.count("<svg") == 2 and "<script" not in page and "0.333334833333" in page
    first_day_only = cli.run("usage", "report", *period[:4], "--to", "2026-11-01", "--format", "csv").stdout
    assert first_day_only.splitlines()[-1] == "total,1,10,5,15,0.000001500000,USD,6"
    everyone = json.loads(
        cli.run("usage", "report", "--from", "2026-11-01", "--to", "2026-11-01", "--format", "json").stdout
    )
    assert everyone["tenant"] is None and everyone["total"]["prompt_tokens"] == 10 + 99
    bad = cli.run("usage", "report", "--from", "2026-11-02", "--to", "2026-11-01", ok=False)
    assert bad.stderr == "error: 'to' is before 'from'.\n"


def test_limits_set_show_and_clear(cli: Cli, tmp_path: Path) -> None:
    defaults = tmp_path / "limits.yaml"
    defaults.write_text('defaults: {rpm: 7, monthly_cost: "1.5"}\n')
    cli.env["GATEWAY_LIMITS_PATH"] = str(defaults)
    cli.run("tenants", "create", "acme")
    key_id = cli.run("keys", "create", "--tenant", "acme").stdout.split()[0]
    from_defaults = f"tenant acme: defaults: rpm=7 monthly_cost=1.50 (from {defaults})\n"
    assert cli.run("limits", "show", "--tenant", "acme").stdout == from_defaults

    every = ["--rpm", "60", "--tpm", "10000", "--max-concurrent", "4", "--monthly-tokens", "1000000"]
    done = cli.run("limits", "set", "--tenant", "acme", *every, "--monthly-cost", "25.00")
    own = "tenant acme: rpm=60 tpm=10000 max_concurrent=4 monthly_tokens=1000000 monthly_cost=25.00\n"
    assert done.stdout == own and done.stderr == "a running gateway applies this within 5 s\n"
    assert cli.run("limits", "show", "--tenant", "acme").stdout == own
    assert cli.run("limits", "set", "--key", key_id, "--monthly-cost", "0.29").stdout == (
        f"key {key_id}: monthly_cost=0.29\n"
    )
    assert cli.run("limits", "show", "--key", key_id).stdout == f"key {key_id}: monthly_cost=0.29\n{own}"
    tenant, key = asyncio.run(_limits_of(cli, key_id))
    assert tenant == {
        "rpm": 60,
        "tpm": 10000,
        "max_concurrent": 4,
        "monthly_tokens": 1000000,
        "monthly_cost_pico": 25 * 10**12,
    }
    assert key == {"monthly_cost_pico": 290_000_000_000}  # exact: never through a float

    assert cli.run("limits", "clear", "--tenant", "acme").stdout == from_defaults
    assert cli.run("limits", "clear", "--key", key_id).stdout == f"key {key_id}: none of its own\n"
    assert asyncio.run(_limits_of(cli, key_id)) == (None, None)
    assert cli.run("limits", "set", "--tenant", "acme").stdout == "tenant acme: unlimited\n"
    assert asyncio.run(_limits_of(cli, key_id)) == ({}, None)

    refused = cli.run("limits", "set", "--tenant", "acme", "--rpm", "-1", ok=False).stderr
    assert (
        refused == "error: Invalid limit rpm: must be a whole number from 0 to 9223372036854775807, not -1\n"
    )
    refused = cli.run("limits", "set", "--key", key_id, "--monthly-cost", "1.0000000000001", ok=False).stderr
    assert (
        refused == "error: Invalid limit monthly_cost: must have at most 12 decimals, not '1.0000000000001'\n"
    )
    assert (
        "not allowed with argument"
        in cli.run("limits", "set", "--tenant", "acme", "--key", key_id, ok=False).stderr
    )
    assert (
        cli.run("limits", "show", "--tenant", "nobody", ok=False).stderr
        == "error: no tenant named 'nobody'\n"
    )
    assert asyncio.run(_limits_of(cli, key_id)) == ({}, None)  # the refusals changed nothing

    cli.run("limits", "clear", "--tenant", "acme")
    defaults.write_text("defaults: {rpm: -1}\n")
    assert cli.run("limits", "show", "--tenant", "acme", ok=False).stderr == (
        f"error: {defaults}: defaults.rpm: must be a whole number from 0 to 9223372036854775807, not -1\n"
    )


async def _limits_of(cli: Cli, key_id: str) -> tuple[object, object]:
    """The tenant's and the key's limits in their stored form (None: not set)."""
    store = cli.store()
    await store.open()
    try:
        tenant, key = (await store.get_tenant("acme")).limits, (await store.get_key(key_id)).limits
    finally:
        await store.close()
    return (tenant.stored() if tenant else None), (key.stored() if key else None)


def test_serve_in_production_refuses_a_placeholder_admin_token(cli: Cli) -> None:
    cli.env.update(GATEWAY_ENVIRONMENT="production", GATEWAY_ADMIN_TOKEN="changeme", GATEWAY_PORT="0")
    refused = cli.run("serve", ok=False)
    assert refused.stderr.startswith("error: GATEWAY_ADMIN_TOKEN is shorter than 32 characters; production")


POOLS = 'pools:\n  - served_name: m\n    endpoints: ["http://127.0.0.1:9"]\n'
PRICES = 'prices:\n  - model: m\n    effective: 2026-01-01\n    prompt_per_million: "0.10"\n'


@pytest.mark.parametrize(
    ("command", "name", "text", "where", "expected"),
    [
        (
            "serve",
            "pools",
            POOLS + "    queue: {max_wait_s: -1}\n",
            "pools[0].queue.max_wait_s",
            "Input should be greater than 0 (got -1)",
        ),
        (
            "serve",
            "pools",
            POOLS + "    qeue: {}\n",
            "pools[0].qeue",
            "unknown key; expected one of served_name,",
        ),
        (
            "serve",
            "pools",
            POOLS + "    replicas: two\n",
            "pools[0].replicas",
            "Input should be a valid integer",
        ),
        (
            "serve",
            "prices",
            PRICES + "    completion_per_million: 0.4\n",
            "prices[0].completion_per_million",
            "must be quoted (a YAML float would lose digits)",
        ),
        (
            "serve",
            "prices",
            PRICES + "    per_token: '1'\n",
            "prices[0].per_token",
            "unknown key; expected one of",
        ),
        ("serve", "limits", "defaults: {rpm: lots}\n", "defaults.rpm", "must be a whole number from 0 to"),
        ("up", "pools", POOLS + "    engine: tgi\n", "pools[0].engine", "Input should be 'vllm' or 'sim'"),
        ("up", "prices", "prices: {}\n", "prices", "Input should be a valid list"),
    ],
)
def test_a_bad_config_file_fails_at_start_with_one_line_naming_file_and_key(
    cli: Cli, tmp_path: Path, command: str, name: str, text: str, where: str, expected: str
) -> None:
    files = {"pools": POOLS, "prices": PRICES, "limits": "defaults: {rpm: 60}\n", name: text}
    for file, content in files.items():
        (tmp_path / f"{file}.yaml").write_text(content)
    cli.env.update(
        GATEWAY_CONFIG_PATH=str(tmp_path / "pools.yaml"),
        GATEWAY_PRICES_PATH=str(tmp_path / "prices.yaml"),
        GATEWAY_LIMITS_PATH=str(tmp_path / "limits.yaml"),
        GATEWAY_PORT="0",
    )
    refused = cli.run(command, ok=False)
    assert refused.returncode == 2 and refused.stdout == "" and "Traceback" not in refused.stderr
    [line] = refused.stderr.splitlines()
    assert line.startswith(f"error: {tmp_path / name}.yaml: {where}: {expected}"), line


def test_a_bad_setting_or_limits_file_is_one_line_and_status_2(cli: Cli, tmp_path: Path) -> None:
    cli.env["GATEWAY_PORT"] = "eighty"
    refused = cli.run("tenants", "list", ok=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: GATEWAY_PORT: Input should be a valid integer")
    assert len(refused.stderr.splitlines()) == 1
    del cli.env["GATEWAY_PORT"]
    cli.run("tenants", "create", "acme")
    limits = tmp_path / "limits.yaml"
    limits.write_text("defaults: {tmp: 5}\n")
    cli.env["GATEWAY_LIMITS_PATH"] = str(limits)
    refused = cli.run("limits", "show", "--tenant", "acme", ok=False)
    assert refused.returncode == 2 and refused.stderr == (
        f"error: {limits}: defaults.tmp: unknown limit; the limits are rpm, tpm, max_concurrent, "
        "monthly_tokens, monthly_cost\n"
    )
    prices = tmp_path / "prices.yaml"
    prices.write_text("currency: USD\nprices: []\nextra: 1\n")
    cli.env["GATEWAY_PRICES_PATH"] = str(prices)
    refused = cli.run("usage", "report", "--from", "2026-11-01", "--to", "2026-11-01", ok=False)
    assert refused.returncode == 2
    expected = "unknown key; expected one of currency, cached_prompt_factor, prices"
    assert refused.stderr == f"error: {prices}: extra: {expected}\n"
