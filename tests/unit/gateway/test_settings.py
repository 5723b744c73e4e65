"""Settings: production refuses to start without a real admin token."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.config.loader import ConfigError
from gateway.config.pools import DeploymentSpec
from gateway.settings import MIN_ADMIN_TOKEN_BITS, Settings, admin_token_problem, estimated_bits

GOOD = "Xq3v9Lr0Tz7Kp2Wm5Bn8Cj4Hd6Fg1Ys0Ae"


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "   ",
        "changeme",
        "admin",
        "secret",
        "short-but-random-9fK2",
        "changeme-changeme-changeme-changeme",
        "adminadminadminadminadminadminadmin",
        "a" * 64,
        "please-replace-me-with-a-real-token-0000",
        "CHANGE_ME_3c1d9f0b27a84e6d9b5c4a3f2e1d0c9b",
        # Long and varied enough for the checks above, and all started a production gateway:
        "Password1Password1Password1Password1",
        "adminadminadminadmin12345678abcdefgh",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF",
        "Summer2024!Summer2024!Summer2024!",
        "zyxwvutsrqponmlkjihgfedcba9876543210",
    ],
)
def test_production_refuses_a_missing_or_placeholder_admin_token(token: str | None) -> None:
    settings = Settings(environment="production", admin_token=token)
    assert admin_token_problem(settings.admin_token) is not None
    with pytest.raises(ConfigError, match="GATEWAY_ADMIN_TOKEN"):
        create_app(settings, DeploymentSpec(pools=[]))


def test_production_starts_with_a_random_token_and_development_without_any() -> None:
    assert admin_token_problem(SecretStr(GOOD)) is None
    Settings(environment="production", admin_token=GOOD).check_startup()
    Settings(environment="development").check_startup()
    create_app(Settings(environment="production", admin_token=GOOD), DeploymentSpec(pools=[]))


def test_the_admin_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", GOOD)
    monkeypatch.setenv("GATEWAY_KEY_ROTATION_GRACE_S", "60")
    settings = Settings()
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == GOOD
    assert settings.key_rotation_grace_s == 60
    assert GOOD not in repr(settings)


@pytest.mark.parametrize(
    ("database_url", "redis_url", "missing"),
    [
        ("sqlite:///data/gateway.db", "redis://127.0.0.1:6379/0", "GATEWAY_DATABASE_URL"),
        ("postgresql://u@db:5432/gw", None, "GATEWAY_REDIS_URL"),
    ],
)
def test_replicated_refuses_state_that_is_not_shared(
    database_url: str, redis_url: str | None, missing: str
) -> None:
    settings = Settings(replicated=True, database_url=database_url, redis_url=redis_url)
    with pytest.raises(ConfigError, match=missing):
        settings.check_startup()
    Settings(replicated=False, database_url=database_url, redis_url=redis_url).check_startup()


def test_replicated_starts_on_postgres_and_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_REPLICATED", "true")
    settings = Settings(database_url="postgres://u@db:5432/gw", redis_url="redis://cache:6379/0")
    assert settings.replicated
    settings.check_startup()


def test_several_workers_need_redis_for_their_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_WORKERS", "4")
    settings = Settings.load()
    assert settings.workers == 4
    with pytest.raises(ConfigError) as refused:
        settings.check_startup()
    assert str(refused.value) == (
        "4 workers (--workers, GATEWAY_WORKERS) need GATEWAY_REDIS_URL=redis://…: without it each worker "
        "process would enforce every limit on its own (N workers, N times each tenant's limit) and keep "
        "its own engine drains"
    )
    Settings(workers=4, redis_url="redis://cache:6379/0").check_startup()  # SQLite is fine: one host
    Settings(workers=1).check_startup()


def test_the_number_of_workers_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_WORKERS", "0")
    with pytest.raises(ConfigError, match="^GATEWAY_WORKERS: Input should be greater than or equal to 1"):
        Settings.load()


def test_workers_metrics_files_default_to_one_folder_per_port() -> None:
    settings = Settings(data_dir=Path("/srv/gw"), port=8100)
    assert settings.metrics_path() == Path("/srv/gw/metrics/port-8100")
    assert settings.journal_path() == Path("/srv/gw/journal/port-8100")  # worker-<i> below, one each
    assert Settings(metrics_dir=Path("/run/gw-metrics")).metrics_path() == Path("/run/gw-metrics")


@pytest.mark.parametrize(
    ("url", "secret", "message"),
    [
        ("http://billing.internal/usage", None, "GATEWAY_USAGE_WEBHOOK_SECRET"),
        ("http://billing.internal/usage", "short", "GATEWAY_USAGE_WEBHOOK_SECRET"),
        ("billing.internal/usage", "s" * 32, "GATEWAY_USAGE_WEBHOOK_URL must be an http"),
    ],
)
def test_a_usage_webhook_needs_an_http_url_and_a_secret(url: str, secret: str | None, message: str) -> None:
    settings = Settings(usage_webhook_url=url, usage_webhook_secret=secret)
    with pytest.raises(ConfigError, match=message):
        settings.check_startup()


def test_a_usage_webhook_with_its_secret_is_accepted() -> None:
    settings = Settings(usage_webhook_url="https://billing.internal/usage", usage_webhook_secret="s" * 32)
    settings.check_startup()
    assert settings.usage_webhook_batch_size == 100 and settings.usage_webhook_name == "webhook"


@pytest.mark.parametrize(
    "make", [lambda: secrets.token_urlsafe(32), lambda: secrets.token_hex(16), lambda: secrets.token_hex(32)]
)
def test_generated_tokens_pass_the_randomness_check(make: Callable[[], str]) -> None:
    for _ in range(2000):
        token = make()
        assert admin_token_problem(SecretStr(token)) is None, token
        assert estimated_bits(token) >= MIN_ADMIN_TOKEN_BITS


def test_development_refuses_a_short_admin_token_but_takes_none() -> None:
    Settings(environment="development").check_startup()  # no token: the admin API is off
    Settings(environment="development", admin_token="x" * 32).check_startup()  # long enough here
    with pytest.raises(ConfigError, match="shorter than 32 characters") as refused:
        Settings(environment="development", admin_token="short-admin-token").check_startup()
    assert "secrets.token_urlsafe(32)" in str(refused.value)  # says how to make a good one
    with pytest.raises(ConfigError, match="guessable"):
        Settings(environment="production", admin_token="Password1" * 4).check_startup()
