"""Small charts drawn on the server as SVG: no JavaScript, nothing to download.

The CSP forbids inline styles, so colours are SVG presentation attributes
(`fill`, `stroke`), which the CSP does not govern. Each chart is an image to
assistive technology (`role="img"`) named by its `<title>` and described by a
`<desc>` that reads out every value; each bar has its own `<title>` as a
tooltip. The viewBox is 320 units wide, so at a phone's 360 px, inside the
page's padding, one unit is about one pixel; the stylesheet lets the chart
shrink or grow with its container (`.chart`).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from babel.dates import format_skeleton
from flask_babel import get_locale
from flask_babel import gettext as _
from markupsafe import Markup, escape

from .results import skip_reason_label, status_label

WIDTH = 320

# Match the stylesheet's --ok, --bad, --warn, --focus, --muted and --brand.
TONES = {
    "ok": "#1d6b35",
    "bad": "#a1221b",
    "warn": "#7a4a00",
    "info": "#1a5fb4",
    "muted": "#5c534d",
    "brand": "#6b3e26",
}
TRACK = "#ece6e1"


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    tone: str = "brand"


def _number(value: int | float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def _open_svg(width: int, height: int, title: str, desc: str, css_class: str) -> tuple[str, str]:
    ident = f"chart-{secrets.token_hex(4)}"
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css_class}" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-labelledby="{ident}-title {ident}-desc">'
        f'<title id="{ident}-title">{escape(title)}</title>'
        f'<desc id="{ident}-desc">{escape(desc)}</desc>'
    )
    return head, "</svg>"


def bar_chart(bars: Sequence[Bar], *, title: str, rtl: bool = False) -> Markup:
    """Horizontal bars, one per outcome, each with its label above it and its value after it.

    Bars scale to the largest value. With `rtl` the chart is mirrored: labels
    start at the right and bars grow leftwards, as a right-to-left reader expects.
    """
    row_height, bar_height, label_size = 34, 14, 13
    value_room = 56
    scale_width = WIDTH - value_room
    largest = max((b.value for b in bars), default=0) or 1
    height = max(row_height * len(bars), row_height)
    desc = "; ".join(f"{b.label}: {_number(b.value)}" for b in bars)
    head, tail = _open_svg(WIDTH, height, title, desc, "bar-chart")
    parts = [head]
    for index, bar in enumerate(bars):
        top = index * row_height
        length = round(scale_width * bar.value / largest, 1) if bar.value else 0
        colour = TONES.get(bar.tone, TONES["brand"])
        bar_y = top + label_size + 4
        if rtl:
            label_x, label_anchor = WIDTH, "end"
            bar_x = WIDTH - length
            value_x, value_anchor = WIDTH - length - 4, "end"
            track_x = value_room
        else:
            label_x, label_anchor = 0, "start"
            bar_x = 0
            value_x, value_anchor = length + 4, "start"
            track_x = 0
        parts.append(
            f'<g class="bar bar-{escape(bar.tone)}">'
            f"<title>{escape(bar.label)}: {_number(bar.value)}</title>"
            f'<text x="{label_x}" y="{top + label_size}" font-size="{label_size}" '
            f'fill="currentColor" text-anchor="{label_anchor}">{escape(bar.label)}</text>'
            f'<rect x="{track_x}" y="{bar_y}" width="{scale_width}" height="{bar_height}" '
            f'rx="3" fill="{TRACK}"/>'
            f'<rect x="{bar_x}" y="{bar_y}" width="{length}" height="{bar_height}" rx="3" '
            f'fill="{colour}"/>'
            f'<text x="{value_x}" y="{bar_y + bar_height - 2}" font-size="{label_size}" '
            f'font-weight="700" fill="currentColor" text-anchor="{value_anchor}">'
            f"{_number(bar.value)}</text>"
            "</g>"
        )
    parts.append(tail)
    return Markup("".join(parts))


def column_chart(
    columns: Sequence[tuple[str, int]],
    *,
    title: str,
    label_every: int = 3,
    tone: str = "brand",
) -> Markup:
    """Vertical columns over time (e.g. visits per week), oldest at the start.

    Every column carries its value above it; the time axis labels every
    `label_every`-th column counted back from the newest, so the latest week
    is always labelled and labels never overlap at phone width.
    """
    height, axis_room, value_room, gap = 170, 20, 16, 4
    count = max(len(columns), 1)
    slot = WIDTH / count
    plot_height = height - axis_room - value_room
    largest = max((value for _label, value in columns), default=0) or 1
    colour = TONES.get(tone, TONES["brand"])
    desc = "; ".join(f"{label}: {_number(value)}" for label, value in columns)
    head, tail = _open_svg(WIDTH, height, title, desc, "column-chart")
    baseline = height - axis_room
    parts = [head]
    for index, (label, value) in enumerate(columns):
        column_height = round(plot_height * value / largest, 1) if value else 0
        x = round(index * slot + gap / 2, 1)
        width = round(slot - gap, 1)
        middle = round(index * slot + slot / 2, 1)
        parts.append(
            f'<g class="column"><title>{escape(label)}: {_number(value)}</title>'
            f'<rect x="{x}" y="{round(baseline - column_height, 1)}" width="{width}" '
            f'height="{column_height}" rx="2" fill="{colour}"/>'
            f'<text x="{middle}" y="{round(baseline - column_height - 3, 1)}" font-size="10" '
            f'fill="currentColor" text-anchor="middle">{_number(value)}</text>'
        )
        if (len(columns) - 1 - index) % label_every == 0:
            # The newest label ends at the chart's edge instead of spilling past it.
            label_x, anchor = middle, "middle"
            if index == len(columns) - 1:
                label_x, anchor = round(index * slot + slot, 1), "end"
            parts.append(
                f'<text x="{label_x}" y="{height - 5}" font-size="10" fill="currentColor" '
                f'text-anchor="{anchor}">{escape(label)}</text>'
            )
        parts.append("</g>")
    parts.append(
        f'<line x1="0" y1="{baseline}" x2="{WIDTH}" y2="{baseline}" stroke="{TONES["muted"]}" '
        'stroke-width="1"/>'
    )
    parts.append(tail)
    return Markup("".join(parts))


# --- the charts the admin shows ---------------------------------------------------


def outcome_chart(results, *, rtl: bool = False) -> Markup:
    """What became of a campaign's messages: sent, failed, skipped per reason, …"""
    bars = [Bar(status_label("sent"), results.sent, "ok")]
    if results.waiting:
        bars.append(Bar(_("Not sent yet"), results.waiting, "info"))
    bars.append(Bar(status_label("failed"), results.failed, "bad"))
    if results.unknown:
        bars.append(Bar(status_label("unknown"), results.unknown, "warn"))
    for reason, count in results.skipped_by_reason.items():
        bars.append(Bar(_("Skipped: %(reason)s", reason=skip_reason_label(reason)), count,
                        "muted"))
    return bar_chart(bars, title=_("Messages by outcome"), rtl=rtl)


def response_chart(results, *, rtl: bool = False) -> Markup:
    """Customers reached, who came back, and the campaign's vouchers used."""
    bars = [
        Bar(_("Customers reached"), results.reached, "info"),
        Bar(_("Came back within %(days)s days", days=results.attribution_days),
            results.came_back, "ok"),
    ]
    if results.vouchers_issued:
        bars += [
            Bar(_("Vouchers issued"), results.vouchers_issued, "brand"),
            Bar(_("Vouchers redeemed"), results.vouchers_redeemed, "ok"),
        ]
    return bar_chart(bars, title=_("Customers who responded"), rtl=rtl)


def weekly_visits_chart(weeks) -> Markup:
    """Visits per week (`results.WeekCount`s), each column labelled by its Monday."""
    locale = get_locale()
    columns = [
        (format_skeleton("MMMd", week.starts_on, locale=locale), week.visits) for week in weeks
    ]
    return column_chart(columns, title=_("Visits per week (weeks start on Monday)"))
