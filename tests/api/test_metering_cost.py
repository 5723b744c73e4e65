"""Each ledger row carries its exact cost at the price in force when the request started."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx

from gateway.app import create_app
from gateway.money import to_decimal
from gateway.settings import Settings
from tests.api.test_gateway import CHAT, auth, ledger
from tests.conftest import SIM_MODEL, Gateway, pool_spec

PRICES = f"""
currency: USD
prices:
  - {{model: {SIM_MODEL}, effective: 2020-01-01, prompt_per_million: "0.150000",
      completion_per_million: "0.6"}}
  - {{model: {SIM_MODEL}, effective: 2999-01-01, prompt_per_million: "9", completion_per_million: "9"}}
"""


async def test_rows_are_priced_exactly_and_never_retroactively(sim_engine: str, tmp_path: Path) -> None:
    (tmp_path / "prices.yaml").write_text(PRICES)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'g.db'}", data_dir=tmp_path, prices_path=tmp_path / "prices.yaml"
    )
    app = create_app(settings, pool_spec(sim_engine))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
    ):
        gw = Gateway(app, client, app.state.gateway, sim_engine)
        await gw.sim(output_tokens=16)
        secret, _ = await gw.new_key()
        for max_tokens in (5, 11):
            response = await client.post(
                "/v1/chat/completions", json={**CHAT, "max_tokens": max_tokens}, headers=auth(secret)
            )
            assert response.status_code == 200
        rows = await ledger(gw)
    assert [r.price_version for r in rows] == [f"{SIM_MODEL}@2020-01-01"] * 2
    # 7 prompt tokens at $0.15/M and 5 (then 11) completion tokens at $0.60/M, to the picodollar.
    assert [to_decimal(r.cost_pico) for r in rows] == [
        Decimal("7") * Decimal("0.15") / 10**6 + Decimal("5") * Decimal("0.6") / 10**6,
        Decimal("7") * Decimal("0.15") / 10**6 + Decimal("11") * Decimal("0.6") / 10**6,
    ]
    assert rows[0].cost_pico == 7 * 150_000 + 5 * 600_000


async def test_unpriced_models_are_metered_with_zero_cost(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key()
    await gateway.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3}, headers=auth(secret))
    [row] = await ledger(gateway)
    assert (row.completion_tokens, row.cost_pico, row.price_version) == (3, 0, None)
