"""A self-contained HTML page charting a tenant's tokens and cost per day per model.

Inline SVG drawn here, no JavaScript and nothing fetched: it opens offline and can be mailed as a
file. Floats are used only for pixel geometry; every amount printed is the exact ``Decimal``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from html import escape

from gateway.money import format_amount, to_decimal
from gateway.reporting.reports import DailyUsage

# Tableau 10: distinguishable, also in greyscale print.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
WIDTH, HEIGHT = 960, 320
LEFT, RIGHT, TOP, BOTTOM = 96, 16, 16, 72
_MAX_X_LABELS = 16

Cells = dict[tuple[str, str], float]
Tooltip = Callable[[str, str], str]  # (day, model) → the exact amount, for the bar's tooltip

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 24px 0 4px; }
.legend span { display: inline-block; margin-right: 16px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; }
svg text { font-size: 11px; fill: #444; } svg .axis { stroke: #888; } svg .grid { stroke: #e5e5e5; }
table { border-collapse: collapse; margin-top: 8px; }
td, th { padding: 3px 12px; text-align: right; border-bottom: 1px solid #eee; }
td:first-child, th:first-child { text-align: left; } tr.total td { font-weight: 600; }
"""


def nice_ticks(top: float, integer: bool = False, count: int = 5) -> list[float]:
    """Evenly spaced round tick values (steps of 1, 2, 2.5 or 5 × 10^k) from 0 up to ≥ ``top``."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(step, 1.0)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _tick_label(value: float, step: float) -> str:
    decimals = len(f"{step:.12f}".rstrip("0").partition(".")[2])
    return f"{value:,.{decimals}f}"


def _x_labels(days: list[str]) -> list[tuple[int, str]]:
    every = max(1, math.ceil(len(days) / _MAX_X_LABELS))
    same_year = days[0][:4] == days[-1][:4]
    return [(i, day[5:] if same_year else day) for i, day in enumerate(days) if i % every == 0]


def _bars(days: list[str], models: list[str], values: Cells, scale: float, tooltip: Tooltip) -> list[str]:
    """One stacked bar per day, one segment per model (in legend order, bottom up)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(days)
    bar_w = max(1.0, slot * 0.7)
    rects = []
    for i, day in enumerate(days):
        x, top = LEFT + i * slot + (slot - bar_w) / 2, float(TOP + plot_h)
        for index, model in enumerate(models):
            height = values.get((day, model), 0.0) * scale
            if height <= 0:
                continue
            top -= height
            rects.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar_w:.1f}" height="{height:.1f}" '
                f'fill="{PALETTE[index % len(PALETTE)]}"><title>{day} {escape(model)}: '
                f"{escape(tooltip(day, model))}</title></rect>"
            )
    return rects


def _axes(days: list[str], ticks: list[float], y_label: str) -> list[str]:
    """Grid lines with y tick labels, the two axes, day labels and axis titles."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    scale, step, bottom = plot_h / ticks[-1], ticks[1] - ticks[0], TOP + plot_h
    parts = []
    for tick in ticks:
        y = bottom - tick * scale
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
        label = _tick_label(tick, step)
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    slot = plot_w / len(days)
    for i, label in _x_labels(days):
        x, y = LEFT + (i + 0.5) * slot, bottom + 14
        rotate = f"rotate(-40 {x:.1f} {y})"
        parts.append(f'<text x="{x:.1f}" y="{y}" text-anchor="end" transform="{rotate}">{label}</text>')
    middle = TOP + plot_h / 2
    return parts + [
        f'<line class="axis" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{bottom}" y2="{bottom}"/>',
        f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}"/>',
        f'<text x="16" y="{middle}" text-anchor="middle" transform="rotate(-90 16 {middle})">'
        f"{escape(y_label)}</text>",
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">day (UTC)</text>',
    ]


def _panel(
    days: list[str], models: list[str], values: Cells, y_label: str, integer: bool, tooltip: Tooltip
) -> str:
    """One SVG: stacked bars per day over a y axis with round ticks."""
    day_totals = [sum(values.get((day, m), 0.0) for m in models) for day in days]
    ticks = nice_ticks(max(day_totals, default=0.0), integer)
    scale = (HEIGHT - TOP - BOTTOM) / ticks[-1]
    body = _axes(days, ticks, y_label) + _bars(days, models, values, scale, tooltip)
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img">'
    return "\n".join([svg, *body, "</svg>"])


def _legend(models: list[str]) -> str:
    items = [
        f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{escape(m)}</span>'
        for i, m in enumerate(models)
    ]
    return f'<p class="legend">{"".join(items) or "No usage in this period."}</p>'


def _per_model(cells: dict[tuple[str, str], int]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for (_, model), value in cells.items():
        totals[model] += value
    return totals


def _totals_table(usage: DailyUsage) -> str:
    """Tokens (of which cached prompt tokens) and exact cost per model and in total: the numbers
    the report also gives."""
    tokens, cached, cost = (
        _per_model(usage.tokens),
        _per_model(usage.cached_tokens),
        _per_model(usage.cost_pico),
    )

    def row(name: str, count: int, hits: int, pico: int, css: str = "") -> str:
        cells = f"<td>{count:,}</td><td>{hits:,}</td><td>{format_amount(pico)}</td>"
        return f"<tr{css}><td>{escape(name)}</td>{cells}</tr>"

    rows = [row(m, tokens[m], cached[m], cost[m]) for m in usage.models]
    totals = (sum(tokens.values()), sum(cached.values()), sum(cost.values()))
    rows.append(row("total", *totals, ' class="total"'))
    header = (
        "<tr><th>model</th><th>tokens</th><th>of which cached prompt</th>"
        f"<th>cost ({escape(usage.currency)})</th></tr>"
    )
    return f"<table>{header}{''.join(rows)}</table>"


def _tokens_tip(usage: DailyUsage, day: str, model: str) -> str:
    tip = f"{usage.tokens.get((day, model), 0):,} tokens"
    cached = usage.cached_tokens.get((day, model), 0)
    return f"{tip} ({cached:,} cached prompt)" if cached else tip


def render_usage_chart(usage: DailyUsage) -> str:
    """The whole page: title, legend, tokens panel, cost panel, per-model totals."""
    days = usage.period.days()
    tokens: Cells = {cell: float(v) for cell, v in usage.tokens.items()}
    cost: Cells = {cell: float(to_decimal(v)) for cell, v in usage.cost_pico.items()}
    tokens_panel = _panel(days, usage.models, tokens, "tokens", True, lambda d, m: _tokens_tip(usage, d, m))
    cost_panel = _panel(
        days,
        usage.models,
        cost,
        f"cost ({usage.currency})",
        False,
        lambda d, m: f"{format_amount(usage.cost_pico.get((d, m), 0))} {usage.currency}",
    )
    who = escape(usage.tenant or "all tenants")
    span = f"{usage.period.first} to {usage.period.last} (UTC)"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Usage of {who}, {span}</title>
<style>{_STYLE}</style></head>
<body>
<h1>Usage of {who}</h1>
<p>{span}, per day and model.</p>
{_legend(usage.models)}
<h2>Tokens per day (prompt + completion)</h2>
{tokens_panel}
<h2>Cost per day ({escape(usage.currency)})</h2>
{cost_panel}
<h2>Totals</h2>
{_totals_table(usage)}
</body></html>
"""
