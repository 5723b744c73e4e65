"""The HTML usage chart: round axis ticks, one bar segment per (day, model), escaped names."""

from __future__ import annotations

import re
from html import escape

import pytest

from gateway.reporting.charts import PALETTE, nice_ticks, render_usage_chart
from gateway.reporting.reports import DailyUsage, ReportPeriod


def test_nice_ticks_are_round_and_cover_the_maximum() -> None:
    assert nice_ticks(71_500, integer=True) == [0, 20_000, 40_000, 60_000, 80_000]
    assert nice_ticks(0.0193) == [0, 0.005, 0.01, 0.015, 0.02]
    assert nice_ticks(3, integer=True) == [0, 1, 2, 3]
    assert nice_ticks(1, integer=True) == [0, 1]  # never a fractional token
    assert nice_ticks(0) == [0, 1]


def test_chart_draws_a_segment_per_day_and_model_and_escapes_names() -> None:
    name = "<script>m</script>"
    usage = DailyUsage(
        tenant="a<b",
        period=ReportPeriod.parse("2026-11-01", "2026-11-03"),
        currency="EUR",
        models=[name, "m2"],
        tokens={("2026-11-01", name): 300, ("2026-11-01", "m2"): 100, ("2026-11-03", "m2"): 50},
        cost_pico={("2026-11-01", name): 3, ("2026-11-01", "m2"): 10**12, ("2026-11-03", "m2"): 0},
        cached_tokens={("2026-11-01", "m2"): 64, ("2026-11-03", "m2"): 32},
    )
    page = render_usage_chart(usage)
    assert "<script>" not in page and "&lt;script&gt;m&lt;/script&gt;" in page and "Usage of a&lt;b" in page
    tokens_svg, cost_svg = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert tokens_svg.count("<rect") == 3 and cost_svg.count("<rect") == 2  # a zero cost draws nothing
    assert f'fill="{PALETTE[0]}"' in tokens_svg and f'fill="{PALETTE[1]}"' in tokens_svg
    assert "2026-11-01 m2: 100 tokens (64 cached prompt)" in tokens_svg
    assert f"2026-11-01 {escape(name)}: 300 tokens<" in tokens_svg  # no cached tokens, nothing said
    assert "2026-11-01 m2: 1.000000000000 EUR" in cost_svg
    assert ">11-01<" in tokens_svg and ">11-02<" in tokens_svg and ">11-03<" in tokens_svg
    assert "<th>tokens</th><th>of which cached prompt</th><th>cost (EUR)</th>" in page
    assert "<tr><td>m2</td><td>150</td><td>96</td><td>1.000000000000</td></tr>" in page
    assert '<tr class="total"><td>total</td><td>450</td><td>96</td><td>1.000000000003</td></tr>' in page
    heights = [float(h) for h in re.findall(r'height="([\d.]+)" fill="[^"]+"><title>2026-11-01', tokens_svg)]
    assert heights[0] == pytest.approx(
        3 * heights[1], abs=0.2
    )  # stacked segments in proportion: 300 vs 100 tokens
