"""The usage page for tenant owners and admins: this month against the plan's caps, spend and
tokens by day (inline SVG, server-rendered, no JavaScript), by model, top users and runs.

It renders the very report the API returns (`billing.api.usage_data`), so the page and
`GET /api/v1/usage/` always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts.pages import tenant_page
from accounts.roles import ADMINS
from billing.api import MICRO, UsageRangeSerializer, current_period_range, usage_data

# Chart geometry, in SVG user units (the SVG scales to the page's width).
WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 72, 8, 12, 30


def money(microdollars: int, places: int = 4) -> str:
    """ "$1.2346" (rounded half up) from micro-dollars."""
    amount = (Decimal(int(microdollars)) / MICRO).quantize(
        Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP
    )
    return f"${amount:,}"


def tokens(count: int) -> str:
    return f"{int(count):,}"


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times 10^n that is ≥ value (the top of the axis)."""
    if value <= 0:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover


FILLS = {"bar-spend": "#3b5bdb", "bar-input": "#3b5bdb", "bar-output": "#91a7ff"}


@dataclass
class Segment:
    y: float
    height: float
    css: str

    @property
    def fill(self) -> str:
        return FILLS.get(self.css, "#3b5bdb")


@dataclass
class Bar:
    x: float
    width: float
    title: str
    label: str  # under the bar ("" when skipped)
    label_x: float
    segments: list[Segment] = field(default_factory=list)


@dataclass
class Chart:
    title: str
    desc: str
    bars: list[Bar]
    ticks: list[dict[str, Any]]
    legend: list[dict[str, str]]
    width: int = WIDTH
    height: int = HEIGHT
    plot_left: int = LEFT
    plot_right: int = WIDTH - RIGHT
    baseline: int = HEIGHT - BOTTOM


def bar_chart(
    days: list[dict[str, Any]],
    *,
    title: str,
    desc: str,
    series: list[tuple[str, str, str]],  # (key in the day, css class, legend label)
    describe: Any,  # day -> the bar's tooltip
    tick_label: Any,  # (axis value, top of the axis) -> text
) -> Chart:
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    count = max(1, len(days))
    step = plot_width / count
    top_value = nice_ceiling(max((sum(d[k] for k, _, _ in series) for d in days), default=0))
    every = 1 if count <= 31 else math.ceil(count / 12)
    bars = []
    for index, day in enumerate(days):
        x = LEFT + index * step + step * 0.15
        bar = Bar(
            x=round(x, 2),
            width=round(step * 0.7, 2),
            title=describe(day),
            label=str(date.fromisoformat(day["date"]).day) if index % every == 0 else "",
            label_x=round(LEFT + index * step + step / 2, 2),
        )
        stacked = 0.0
        for key, css, _legend in series:
            height = plot_height * day[key] / top_value
            if day[key] > 0:
                height = max(height, 1.0)  # a day with any usage stays visible
                y = HEIGHT - BOTTOM - stacked - height
                bar.segments.append(Segment(y=round(y, 2), height=round(height, 2), css=css))
                stacked += height
        bars.append(bar)
    ticks = [
        {
            "y": round(HEIGHT - BOTTOM - plot_height * f, 2),
            "label": tick_label(top_value * f, top_value),
        }
        for f in (0, 0.5, 1)
    ]
    legend = [{"css": css, "label": label, "fill": FILLS[css]} for _key, css, label in series]
    return Chart(title=title, desc=desc, bars=bars, ticks=ticks, legend=legend)


def charts(report: dict[str, Any]) -> tuple[Chart, Chart]:
    days = report["by_day"]
    first, last = report["period"]["from"], report["period"]["to"]
    busiest = max(days, key=lambda d: d["cost_microdollars"], default=None)
    total = report["totals"]
    spend_desc = (
        f"Spend per day (UTC) from {first} to {last}: {money(total['cost_microdollars'])} in all"
    )
    if busiest and busiest["cost_microdollars"]:
        spend_desc += f"; the highest, {money(busiest['cost_microdollars'])}, on {busiest['date']}"
    spend = bar_chart(
        days,
        title="Spend by day",
        desc=spend_desc + ". The table below lists every day.",
        series=[("cost_microdollars", "bar-spend", "Spend")],
        describe=lambda d: f"{d['date']}: ${d['cost_dollars']}, {plural(d['calls'], 'call')}",
        # Cents when the axis' middle is at least a cent, else hundredths of a cent.
        tick_label=lambda v, top: money(round(v), 2 if top >= 20_000 else 4),
    )
    token_chart = bar_chart(
        days,
        title="Tokens by day",
        desc=(
            f"Input and output tokens per day (UTC) from {first} to {last}: "
            f"{tokens(total['input_tokens'])} input and {tokens(total['output_tokens'])} "
            "output tokens in all. The table below lists every day."
        ),
        series=[
            ("input_tokens", "bar-input", "Input tokens"),
            ("output_tokens", "bar-output", "Output tokens"),
        ],
        describe=lambda d: (
            f"{d['date']}: {tokens(d['input_tokens'])} input, "
            f"{tokens(d['output_tokens'])} output tokens"
        ),
        tick_label=lambda v, top: tokens(round(v)),
    )
    return spend, token_chart


def cap_view(caps: dict[str, Any]) -> dict[str, Any]:
    """What the progress bar needs: percentages of the scale (the hard cap, else the soft)."""
    spend, soft, hard = (
        caps["spend_microdollars"],
        caps["soft_microdollars"],
        caps["hard_microdollars"],
    )
    scale = hard or soft
    return {
        **caps,
        "spend": money(spend, 2),
        "soft": money(soft, 2),
        "hard": money(hard, 2),
        "scale": money(scale, 2) if scale else "",
        "percent": min(100, round(100 * spend / scale, 1)) if scale else 0,
        "soft_percent": round(100 * soft / scale, 1) if scale and soft else None,
        "left_before_hard": money(max(0, hard - spend), 2) if hard else "",
        "resets": datetime.fromisoformat(caps["resets_at"]).strftime("%-d %B %Y, %H:%M UTC"),
        "month": datetime.fromisoformat(caps["period_start"]).strftime("%B %Y"),
        "level": "over-hard"
        if caps["hard_cap_reached"]
        else "over-soft"
        if caps["soft_cap_reached"]
        else "",
    }


def _display(row: dict[str, Any]) -> dict[str, Any]:
    """A row of the report with its amounts formatted for people ($0.0123, 12,345)."""
    return {
        **row,
        "cost": money(row["cost_microdollars"]),
        "input": tokens(row["input_tokens"]),
        "output": tokens(row["output_tokens"]),
        "call_count": tokens(row["calls"]),
    }


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_display(row) for row in rows]


@tenant_page(ADMINS, message="Only your organisation's owners and admins see its usage.")
@require_GET
def usage_page(request: HttpRequest) -> HttpResponse:
    params = UsageRangeSerializer(data=request.GET)
    errors: dict[str, Any] = {}
    if params.is_valid():
        start, end = params.validated_data["start"], params.validated_data["end"]
    else:
        errors = dict(params.errors)
        start, end = current_period_range()
    report = usage_data(start, end)
    spend_chart, token_chart = charts(report)
    this_start, this_end = current_period_range()
    previous_end = this_start - timedelta(days=1)
    return render(
        request,
        "billing/usage.html",
        {
            "report": report,
            "caps": cap_view(report["caps"]),
            "totals": _display(report["totals"]),
            "days": _rows(report["by_day"]),
            "models": _rows(report["by_model"]),
            "users": _rows(report["top_users"]),
            "runs": _rows(report["top_runs"]),
            "spend_chart": spend_chart,
            "token_chart": token_chart,
            "errors": errors,
            "filters": {"from": report["period"]["from"], "to": report["period"]["to"]},
            "this_month": {"from": this_start.isoformat(), "to": this_end.isoformat()},
            "previous_month": {
                "from": previous_end.replace(day=1).isoformat(),
                "to": previous_end.isoformat(),
            },
            "empty": report["totals"]["calls"] == 0,
        },
    )
