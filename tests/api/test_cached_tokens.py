"""Cached prompt tokens end to end over the simulated engine: the client's usage, the ledger row,
the report, Prometheus and a cheaper cost.

The engine here runs as the launcher starts every engine (``--enable-prompt-tokens-details``) with
vLLM's CPU block size (``--block-size 128``): a repeated 300-token prompt has 256 tokens cached.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.money import format_amount
from gateway.settings import Settings
from gateway.utc import day_of
from tests.api.test_gateway import auth, ledger, sse_events
from tests.conftest import SIM_MODEL, Gateway, pool_spec
from tests.support.metrics import sample
from tests.support.processes import start_sim

# 3 template tokens + 297 words: 300 prompt tokens, two whole 128-token blocks.
WORDS = " ".join(f"w{i}" for i in range(297))
CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": WORDS}], "max_tokens": 4}
PROMPT, CACHED, COMPLETION = 300, 256, 4
PRICES = f"""
currency: USD
prices:
  - {{model: {SIM_MODEL}, effective: 2020-01-01, prompt_per_million: "0.15", completion_per_million: "0.6"}}
"""
# Picodollars per token: $0.15/M in, $0.015/M cached (the default 0.1 of the input price), $0.60/M out.
IN, CACHED_IN, OUT = 150_000, 15_000, 600_000


@pytest.fixture(scope="module")
def caching_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("sim-cached")
    proc, url = start_sim(tmp, SIM_MODEL, "--enable-prompt-tokens-details", "--block-size", "128")
    try:
        yield url
    finally:
        proc.stop()


async def test_a_repeated_prompt_is_reported_recorded_and_billed_as_cached(
    caching_engine: str, tmp_path: Path
) -> None:
    (tmp_path / "prices.yaml").write_text(PRICES)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'g.db'}", data_dir=tmp_path, prices_path=tmp_path / "prices.yaml"
    )
    app = create_app(settings, pool_spec(caching_engine))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
    ):
        gw = Gateway(app, client, app.state.gateway, caching_engine)
        await gw.sim()  # a fresh prefix cache
        secret, _ = await gw.new_key()
        bodies = [
            (await client.post("/v1/chat/completions", json=CHAT, headers=auth(secret))).json()
            for _ in range(2)
        ]
        streamed = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        stream = await client.post("/v1/chat/completions", json=streamed, headers=auth(secret))
        quiet = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth(secret))
        rows = await ledger(gw)
        day = day_of(rows[0].started_at)
        report = (await client.get(f"/v1/usage?from={day}&to={day}", headers=auth(secret))).json()
        metrics = (await client.get("/metrics")).text

    # The client: the first request fills the cache, the repeats hit it (JSON and the usage chunk).
    assert [b["usage"]["prompt_tokens_details"] for b in bodies] == [
        {"cached_tokens": 0},
        {"cached_tokens": CACHED},
    ]
    assert bodies[1]["usage"]["prompt_tokens"] == PROMPT
    usage_chunk = sse_events(stream.content)[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["prompt_tokens_details"] == {
        "cached_tokens": CACHED
    }
    assert all("usage" not in event for event in sse_events(quiet.content))  # not asked for: not sent
    # The ledger: every row, the unasked-for usage too; the cached ones cost less, exactly.
    assert [(r.prompt_tokens, r.cached_tokens, r.completion_tokens) for r in rows] == [
        (PROMPT, 0, COMPLETION),
        *[(PROMPT, CACHED, COMPLETION)] * 3,
    ]
    full = PROMPT * IN + COMPLETION * OUT
    cheaper = (PROMPT - CACHED) * IN + CACHED * CACHED_IN + COMPLETION * OUT
    assert [r.cost_pico for r in rows] == [full, cheaper, cheaper, cheaper]
    assert cheaper < full
    # The tenant's report and Prometheus.
    assert report["total"]["cached_tokens"] == 3 * CACHED and report["total"]["prompt_tokens"] == 4 * PROMPT
    assert report["total"]["cost"] == format_amount(full + 3 * cheaper)
    labels = {"tenant": "acme", "model": SIM_MODEL}
    assert sample(metrics, "gateway_tokens_total", **labels, kind="cached_prompt") == 3 * CACHED
    assert sample(metrics, "gateway_tokens_total", **labels, kind="prompt") == 4 * PROMPT
