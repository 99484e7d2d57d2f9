"""The SVG kit the report's charts are drawn with: a plot frame that maps data to the viewBox, nice ticks and
their labels, series cleaned and downsampled for drawing, axes, polylines, legends and the ``<figure>`` around
them.

Why not a charting library: the report is one static file that must open offline, print, and stay small
however long the run was. Plotly inlined is ~4.8 MB; a downsampled SVG polyline of 2,000 points is ~30 KB,
needs no JavaScript, prints as vectors and scales with ``viewBox``.

Every function that returns markup escapes what came from the analysis (series names, labels) with
``escape``; everything else is a number this module formatted itself. Colours are the Okabe-Ito palette
(distinguishable with the common colour-vision deficiencies), and each series also differs in dash pattern so
the charts survive a black-and-white printer. Colours are presentation attributes (so a chart pasted
elsewhere still draws) with classes the page's stylesheet overrides for dark mode.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from markupsafe import Markup, escape

from runlens.analyze.downsample import minmax_downsample

MAX_DRAW_POINTS = 4000
"""A series longer than this is downsampled here, whatever the analyzer did: the report's size must not
depend on the run's length."""
DRAW_TARGET_POINTS = 2000
"""Points kept per series when the chart downsamples; more than the pixels across a printed chart."""

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"

# Okabe & Ito (2008), "Color Universal Design": https://jfly.uni-koeln.de/color/
OKABE_ITO = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "purple": "#CC79A7",
    "sky": "#56B4E9",
    "vermillion": "#D55E00",
    "black": "#000000",
}


@dataclass(frozen=True)
class LineStyle:
    colour: str  # a key of OKABE_ITO
    dash: str | None = None
    width: float = 1.8


@dataclass
class Series:
    """One drawable line; ``ys`` holds None where the line breaks."""

    key: str
    label: str
    xs: list[float]
    ys: list[float | None]
    style: LineStyle


@dataclass
class Frame:
    """The plot area inside the viewBox and the data domain it maps."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    x_lo: float = 0.0
    x_hi: float = 1.0
    y_lo: float = 0.0
    y_hi: float = 1.0
    x_ticks: list[float] = field(default_factory=list)
    x_step: float = 1.0
    y_ticks: list[float] = field(default_factory=list)
    y_step: float = 1.0

    @property
    def plot_left(self) -> float:
        return float(self.left)

    @property
    def plot_right(self) -> float:
        return float(self.width - self.right)

    @property
    def plot_top(self) -> float:
        return float(self.top)

    @property
    def plot_bottom(self) -> float:
        return float(self.height - self.bottom)

    def px(self, x: float) -> float:
        return self.plot_left + (x - self.x_lo) / (self.x_hi - self.x_lo) * (self.plot_right - self.plot_left)

    def py(self, y: float) -> float:
        return self.plot_bottom - (y - self.y_lo) / (self.y_hi - self.y_lo) * (
            self.plot_bottom - self.plot_top
        )


# --------------------------------------------------------------------------------------------------- ticks


def nice_ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], float]:
    """Tick positions covering ``[lo, hi]`` at a 1/2/2.5/5 step, and that step.

    The first tick is at or below ``lo`` and the last at or above ``hi``, so a chart can snap its domain to
    them.
    Among the candidate steps it picks the one that wastes least of the axis while staying near ``target``
    ticks: 0..122 GB gets 0, 25, ..., 125 rather than 0, 50, 100, 150.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0], 1.0
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    span = hi - lo
    exponent = math.floor(math.log10(span / max(1, target - 1)))
    best: tuple[float, float, float, int] | None = None  # (score, step, first, count)
    for e in (exponent - 1, exponent, exponent + 1):
        for mantissa in (1.0, 2.0, 2.5, 5.0):
            step = mantissa * 10.0**e
            first = math.floor(lo / step + 1e-9) * step
            last = math.ceil(hi / step - 1e-9) * step
            count = round((last - first) / step) + 1
            if not 3 <= count <= target + 2:
                continue
            score = ((last - first) - span) / span + 0.1 * abs(count - target)
            if best is None or score < best[0] - 1e-12:
                best = (score, step, first, count)
    if best is None:  # unreachable for target >= 2, kept so a bad target cannot crash a report
        return [lo, hi], span
    _, step, first, count = best
    # round() cleans 0.30000000000000004 so labels and snapped domains are exact.
    digits = max(0, 12 - math.floor(math.log10(step)))
    return [round(first + i * step, digits) for i in range(count)], step


def format_tick(value: float, step: float) -> str:
    """A tick label with as many decimals as the step needs: ``0.25``, ``1.5k``, ``3e-4``, ``120``."""
    if value == 0:
        return "0"
    magnitude = max(abs(value), step)
    if magnitude >= 1e9:   # a diverged loss: "3e12", not a 10-character label cut off by the margin
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{_trim(mantissa)}e{int(exponent)}"
    if magnitude >= 1e6:
        return _trim(f"{value / 1e6:.{_decimals(step / 1e6)}f}") + "M"
    if magnitude >= 1e4:
        return _trim(f"{value / 1e3:.{_decimals(step / 1e3)}f}") + "k"
    if magnitude < 1e-2:
        digits = _decimals(step / 10.0 ** math.floor(math.log10(abs(value))))
        mantissa, exponent = f"{value:.{digits}e}".split("e")
        return f"{_trim(mantissa)}e{int(exponent)}"
    return _trim(f"{value:.{_decimals(step)}f}")


def _decimals(step: float) -> int:
    """The fewest decimals that write ``step`` exactly (0.25 needs 2, 0.5 needs 1, 20 needs 0)."""
    for digits in range(12):
        if abs(round(step, digits) - step) <= abs(step) * 1e-6:
            return digits
    return 12


def _trim(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def coord(v: float) -> str:
    """A coordinate: one decimal is 1/10 of a viewBox unit, below any screen's resolution."""
    text = f"{v:.1f}"
    return text.removesuffix(".0")


# --------------------------------------------------------------------------------------------------- data


def finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def clean_series(raw: Any, max_points: int = MAX_DRAW_POINTS) -> tuple[list[float], list[float | None]]:
    """``{"x": [...], "y": [...]}`` to drawable lists: non-numbers become gaps, long series are downsampled.

    The analyzer already downsamples, but the chart defends itself: a document from an older analyzer, or one
    assembled by hand, must not produce a 50 MB report.
    """
    if not isinstance(raw, Mapping):
        return [], []
    x_raw, y_raw = raw.get("x"), raw.get("y")
    if not isinstance(x_raw, Sequence) or not isinstance(y_raw, Sequence):
        return [], []
    n = min(len(x_raw), len(y_raw))
    if n > max_points:
        # Long: hand numpy the whole thing (None becomes NaN); a stray string sends it down the slow path.
        try:
            xa = np.asarray(x_raw[:n], dtype=np.float64)
            ya = np.asarray(y_raw[:n], dtype=np.float64)
        except (TypeError, ValueError):
            pass
        else:
            xa[~np.isfinite(xa)] = np.nan
            ya[~np.isfinite(ya)] = np.nan
            return minmax_downsample(xa, ya, DRAW_TARGET_POINTS)
    xs: list[float] = []
    ys: list[float | None] = []
    for x, y in zip(x_raw, y_raw):
        fx = finite(x)
        if fx is None:
            continue
        xs.append(fx)
        ys.append(finite(y))
    if len(xs) > max_points:
        xs, ys = minmax_downsample(xs, ys, DRAW_TARGET_POINTS)
    return xs, ys


def values_of(series: Iterable[Series]) -> list[float]:
    return [y for s in series for y in s.ys if y is not None]


# --------------------------------------------------------------------------------------------------- drawing


def svg_open(frame: Frame, label: str, desc: str, cls: str) -> list[str]:
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {frame.width} {frame.height}" width="100%" '
        f'class="chart-svg {cls}" role="img" aria-label="{escape(label)}" font-family="{FONT}" '
        'preserveAspectRatio="xMidYMid meet">'
    )
    return [svg, f"<desc>{escape(desc)}</desc>"]


def placeholder(width: int, height: int, label: str, message: str, cls: str) -> Markup:
    frame = Frame(width, height, 0, 0, 0, 0)
    parts = svg_open(frame, label, message, f"{cls} chart-empty")
    parts.append(
        f'<rect x="1" y="1" width="{width - 2}" height="{height - 2}" rx="6" fill="none" '
        'class="ch-empty-box" '
        'stroke="#C9CED6" stroke-dasharray="4 4"/>'
    )
    parts.append(
        f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" dominant-baseline="middle" '
        f'class="ch-muted" fill="#5F6B7A" font-size="14">{escape(message)}</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def axes(frame: Frame, x_label: str, y_label: str, x_ticks_inside_only: bool = True) -> list[str]:
    parts: list[str] = ['<g class="ch-axes">']
    left, right, top, bottom = frame.plot_left, frame.plot_right, frame.plot_top, frame.plot_bottom
    for tick in frame.y_ticks:
        y = frame.py(tick)
        parts.append(
            f'<line x1="{coord(left)}" x2="{coord(right)}" y1="{coord(y)}" y2="{coord(y)}" class="ch-grid" '
            'stroke="#E3E6EA" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{coord(left - 6)}" y="{coord(y)}" text-anchor="end" dominant-baseline="middle" '
            f'class="ch-muted" fill="#5F6B7A" font-size="11">{escape(format_tick(tick, frame.y_step))}</text>'
        )
    for tick in frame.x_ticks:
        if x_ticks_inside_only and not (frame.x_lo - 1e-9 <= tick <= frame.x_hi + 1e-9):
            continue
        x = frame.px(tick)
        parts.append(
            f'<line x1="{coord(x)}" x2="{coord(x)}" y1="{coord(bottom)}" y2="{coord(bottom + 4)}" '
            'class="ch-axis" '
            'stroke="#9AA3AE"/>'
        )
        parts.append(
            f'<text x="{coord(x)}" y="{coord(bottom + 16)}" text-anchor="middle" class="ch-muted" '
            'fill="#5F6B7A" '
            f'font-size="11">{escape(format_tick(tick, frame.x_step))}</text>'
        )
    parts.append(
        f'<line x1="{coord(left)}" x2="{coord(right)}" y1="{coord(bottom)}" y2="{coord(bottom)}" '
        'class="ch-axis" '
        'stroke="#9AA3AE"/>'
    )
    parts.append(
        f'<text x="{coord((left + right) / 2)}" y="{frame.height - 4}" text-anchor="middle" class="ch-muted" '
        f'fill="#5F6B7A" font-size="11">{escape(x_label)}</text>'
    )
    if y_label:
        mid = (top + bottom) / 2
        parts.append(
            f'<text x="12" y="{coord(mid)}" text-anchor="middle" transform="rotate(-90 12 {coord(mid)})" '
            f'class="ch-muted" fill="#5F6B7A" font-size="11">{escape(y_label)}</text>'
        )
    parts.append("</g>")
    return parts


def series_path(frame: Frame, series: Series) -> list[str]:
    """One ``<path>`` per series, with a new ``M`` after every gap; isolated points become dots."""
    commands: list[str] = []
    dots: list[tuple[float, float]] = []
    segment: list[tuple[float, float]] = []

    def flush() -> None:
        if len(segment) == 1:
            dots.append(segment[0])
        elif segment:
            coords = [f"{coord(x)} {coord(y)}" for x, y in segment]
            # Consecutive points that land on the same tenth of a unit draw nothing new: drop them.
            kept = [coords[0]] + [c for prev, c in itertools.pairwise(coords) if c != prev]
            commands.append("M" + "L".join(kept))
        segment.clear()

    for x, y in zip(series.xs, series.ys):
        if y is None:
            flush()
            continue
        segment.append((frame.px(x), frame.py(y)))
    flush()

    style = series.style
    colour = OKABE_ITO.get(style.colour, style.colour)
    dash = f' stroke-dasharray="{style.dash}"' if style.dash else ""
    parts = [f'<g class="ch-series c-{escape(style.colour)}"><title>{escape(series.label)}</title>']
    if commands:
        parts.append(
            f'<path d="{"".join(commands)}" fill="none" stroke="{colour}" stroke-width="{style.width}"{dash} '
            'stroke-linejoin="round" stroke-linecap="round" class="ch-line"/>'
        )
    for x, y in dots:
        parts.append(f'<circle cx="{coord(x)}" cy="{coord(y)}" r="2.6" fill="{colour}" class="ch-dot"/>')
    parts.append("</g>")
    return parts


def legend(series: Sequence[Series], extra: Sequence[tuple[str, str]] = ()) -> str:
    """An HTML legend (it wraps on a phone, SVG text does not); swatches use the series' own dash pattern."""
    items = []
    for s in series:
        colour = OKABE_ITO.get(s.style.colour, s.style.colour)
        dash = f' stroke-dasharray="{s.style.dash}"' if s.style.dash else ""
        items.append(
            '<li><svg class="swatch" viewBox="0 0 26 10" width="26" height="10" aria-hidden="true">'
            f'<line x1="1" y1="5" x2="25" y2="5" stroke="{colour}" stroke-width="{max(2.0, s.style.width)}"'
            f'{dash} class="c-{escape(s.style.colour)}"/></svg>{escape(s.label)}</li>'
        )
    for cls, label in extra:
        items.append(
            f'<li><span class="swatch-box {escape(cls)}" aria-hidden="true"></span>{escape(label)}</li>'
        )
    return f'<ul class="legend">{"".join(items)}</ul>' if items else ""


def figure(svg: Markup | str, legend: str = "", note: str = "", cls: str = "") -> Markup:
    note_html = f'<figcaption class="chart-note">{escape(note)}</figcaption>' if note else ""
    return Markup(
        f'<figure class="chart {escape(cls)}"><div class="chart-scroll">{svg}</div>{legend}{note_html}'
        "</figure>"
    )


def set_domain(
    frame: Frame,
    x_lo: float,
    x_hi: float,
    y_lo: float,
    y_hi: float,
    *,
    x_target: int = 6,
    y_target: int = 5,
) -> None:
    """Snap y to nice ticks (a grid line at the top looks deliberate); keep x to the data's own extent."""
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    frame.x_lo, frame.x_hi = x_lo, x_hi
    frame.x_ticks, frame.x_step = nice_ticks(x_lo, x_hi, x_target)
    frame.y_ticks, frame.y_step = nice_ticks(y_lo, y_hi, y_target)
    frame.y_lo, frame.y_hi = frame.y_ticks[0], frame.y_ticks[-1]


def with_missing(series: Sequence[Series], drawable: Sequence[Series]) -> list[Series]:
    """Drawn series first, then the ones with no numbers, named as such so their absence is visible."""
    drawn = {id(s) for s in drawable}
    missing = [Series(s.key, f"{s.label} (no data)", [], [], s.style) for s in series if id(s) not in drawn]
    return list(drawable) + missing


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "chart"


def clip_def(frame: Frame, clip_id: str) -> str:
    # A slightly padded clip so a line at the domain's edge is not cut in half.
    return (
        f'<defs><clipPath id="{escape(clip_id)}">'
        f'<rect x="{coord(frame.plot_left - 3)}" y="{coord(frame.plot_top - 3)}" '
        f'width="{coord(frame.plot_right - frame.plot_left + 6)}" '
        f'height="{coord(frame.plot_bottom - frame.plot_top + 6)}"/>'
        "</clipPath></defs>"
    )
