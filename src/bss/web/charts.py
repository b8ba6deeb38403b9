"""Charts as inline SVG, rendered on the server: no script, no inline style (the CSP holds),
and every chart has a text alternative (its <title> and a data table beside it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 960, 240
LEFT, BOTTOM, TOP = 56, 28, 12


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]
    css_class: str


def _fmt(value: float, percent: bool) -> str:
    if percent:
        return f"{value * 100:.1f}%"
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:g}"


def _axis_top(value: float) -> float:
    """The y axis' top: the smallest of 1, 2, 2.5 and 5 times a power of ten that holds
    `value`, so that its half is a round number too."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value * (1 - 1e-12))


def _axis_labels(ticks: Sequence[float], percent: bool) -> list[str]:
    """Labels for the y ticks: percentages with as many decimals as it takes to show each
    tick exactly (0.0%, 0.1%, 0.2%, not 0.0%, 0.1%, 0.1%)."""
    if not percent:
        return [_fmt(t, False) for t in ticks]
    for decimals in range(1, 9):
        labels = [f"{t * 100:.{decimals}f}%" for t in ticks]
        if all(
            abs(float(lb[:-1]) - t * 100) <= 1e-9 * max(ticks) * 100
            for lb, t in zip(labels, ticks, strict=True)
        ):
            return labels
    return labels


def bars(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    percent: bool = False,
    stacked: bool = True,
) -> Markup:
    """A (stacked) bar chart; each bar has a <title> tooltip with its exact value."""
    n = max(len(labels), 1)
    totals = [
        sum(s.values[i] for s in series)
        if stacked
        else max((s.values[i] for s in series), default=0)
        for i in range(len(labels))
    ]
    top = _axis_top(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    slot = plot_w / n
    bar_w = max(slot * 0.7, 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    fracs = (0, 0.5, 1)
    for frac, label in zip(fracs, _axis_labels([top * f for f in fracs], percent), strict=True):
        y = TOP + plot_h * (1 - frac)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{label}</text>"
        )
    step = max(1, n // 8)
    for i, label in enumerate(labels):
        x = LEFT + i * slot + (slot - bar_w) / 2
        base: float = TOP + plot_h  # moves up to each stacked bar's top
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            h = plot_h * value / top
            y = base - h if stacked else TOP + plot_h - h
            parts.append(
                f'<rect class="{s.css_class}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                f'height="{max(h, 0.5):.1f}"><title>{escape(label)} · {escape(s.name)}: '
                f"{_fmt(value, percent) if percent else f'{value:,.0f}'}</title></rect>"
            )
            if stacked:
                base = y
        if i % step == 0:
            parts.append(
                f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{HEIGHT - 8}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def hbars(title: str, rows: Sequence[tuple[str, float]], css_class: str = "s0") -> Markup:
    """Horizontal bars, one per row (label, value): members per segment, per member totals."""
    rows = list(rows)
    row_h, label_w = 22, 170
    height = max(len(rows), 1) * row_h + 8
    top = max((v for _, v in rows), default=0) or 1
    plot_w = WIDTH - label_w - 70
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (label, value) in enumerate(rows):
        y = 4 + i * row_h
        w = plot_w * value / top
        short = label if len(label) <= 24 else label[:23] + "…"
        parts.append(
            f'<text class="axis" x="{label_w - 6}" y="{y + 15}" text-anchor="end">'
            f"{escape(short)}</text>"
            f'<rect class="{css_class}" x="{label_w}" y="{y + 3}" width="{max(w, 0.5):.1f}" '
            f'height="{row_h - 6}"><title>{escape(label)}: {value:,.0f}</title></rect>'
            f'<text class="axis" x="{label_w + w + 4:.1f}" y="{y + 15}">{value:,.0f}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
