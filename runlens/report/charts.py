"""Inline SVG charts for the HTML report, drawn in Python.

Why not a charting library: the report is one static file that must open offline, print, and stay small
however long the run was (research/analysis.md §4). Plotly inlined is ~4.8 MB; a downsampled SVG polyline of
2,000 points is ~30 KB, needs no JavaScript, prints as vectors and scales with ``viewBox``.

Every function returns ``markupsafe.Markup``: the only text that reaches the markup from the analysis (series
names, event labels) goes through ``escape``; everything else is a number this module formatted itself.
Colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies), and each
series also differs in dash pattern so the charts survive a black-and-white printer. Colours are presentation
attributes (so a chart pasted elsewhere still draws) with classes the page's stylesheet overrides for dark
mode.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from markupsafe import Markup, escape

from runlens.analyze.downsample import minmax_downsample

__all__ = [
    "MAX_DRAW_POINTS",
    "format_tick",
    "line_chart",
    "memory_timeline",
    "nice_ticks",
    "training_charts",
]

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
# A halo in the background colour keeps a label legible where it crosses a line (the page's CSS swaps the
# colour in dark mode through the ch-halo class).
HALO = ' paint-order="stroke" stroke="#fff" stroke-width="3" stroke-linejoin="round"'
SEVERITY_COLOURS = {"critical": "#C62828", "warning": "#B26A00", "info": "#5F6B7A"}
SEVERITY_DASH = {"critical": None, "warning": "5 3", "info": "2 3"}


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


@dataclass(frozen=True)
class Band:
    """A shaded horizontal zone between two y values (a memory threshold)."""

    lo: float
    hi: float
    cls: str  # "warning" | "critical"
    label: str


@dataclass(frozen=True)
class HLine:
    y: float
    label: str
    colour: str = "#5F6B7A"


@dataclass(frozen=True)
class Marker:
    """A vertical event marker with a short label and a tooltip."""

    x: float
    label: str
    tooltip: str
    severity: str


@dataclass
class _Frame:
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


def _fmt(v: float) -> str:
    """A coordinate: one decimal is 1/10 of a viewBox unit, below any screen's resolution."""
    text = f"{v:.1f}"
    return text.removesuffix(".0")


# --------------------------------------------------------------------------------------------------- data


def _finite(value: Any) -> float | None:
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
        fx = _finite(x)
        if fx is None:
            continue
        xs.append(fx)
        ys.append(_finite(y))
    if len(xs) > max_points:
        xs, ys = minmax_downsample(xs, ys, DRAW_TARGET_POINTS)
    return xs, ys


def _values(series: Iterable[Series]) -> list[float]:
    return [y for s in series for y in s.ys if y is not None]


# --------------------------------------------------------------------------------------------------- drawing


def _svg_open(frame: _Frame, label: str, desc: str, cls: str) -> list[str]:
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {frame.width} {frame.height}" width="100%" '
        f'class="chart-svg {cls}" role="img" aria-label="{escape(label)}" font-family="{FONT}" '
        'preserveAspectRatio="xMidYMid meet">'
    )
    return [svg, f"<desc>{escape(desc)}</desc>"]


def _placeholder(width: int, height: int, label: str, message: str, cls: str) -> Markup:
    frame = _Frame(width, height, 0, 0, 0, 0)
    parts = _svg_open(frame, label, message, f"{cls} chart-empty")
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


def _axes(frame: _Frame, x_label: str, y_label: str, x_ticks_inside_only: bool = True) -> list[str]:
    parts: list[str] = ['<g class="ch-axes">']
    left, right, top, bottom = frame.plot_left, frame.plot_right, frame.plot_top, frame.plot_bottom
    for tick in frame.y_ticks:
        y = frame.py(tick)
        parts.append(
            f'<line x1="{_fmt(left)}" x2="{_fmt(right)}" y1="{_fmt(y)}" y2="{_fmt(y)}" class="ch-grid" '
            'stroke="#E3E6EA" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{_fmt(left - 6)}" y="{_fmt(y)}" text-anchor="end" dominant-baseline="middle" '
            f'class="ch-muted" fill="#5F6B7A" font-size="11">{escape(format_tick(tick, frame.y_step))}</text>'
        )
    for tick in frame.x_ticks:
        if x_ticks_inside_only and not (frame.x_lo - 1e-9 <= tick <= frame.x_hi + 1e-9):
            continue
        x = frame.px(tick)
        parts.append(
            f'<line x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{_fmt(bottom)}" y2="{_fmt(bottom + 4)}" '
            'class="ch-axis" '
            'stroke="#9AA3AE"/>'
        )
        parts.append(
            f'<text x="{_fmt(x)}" y="{_fmt(bottom + 16)}" text-anchor="middle" class="ch-muted" '
            'fill="#5F6B7A" '
            f'font-size="11">{escape(format_tick(tick, frame.x_step))}</text>'
        )
    parts.append(
        f'<line x1="{_fmt(left)}" x2="{_fmt(right)}" y1="{_fmt(bottom)}" y2="{_fmt(bottom)}" class="ch-axis" '
        'stroke="#9AA3AE"/>'
    )
    parts.append(
        f'<text x="{_fmt((left + right) / 2)}" y="{frame.height - 4}" text-anchor="middle" class="ch-muted" '
        f'fill="#5F6B7A" font-size="11">{escape(x_label)}</text>'
    )
    if y_label:
        mid = (top + bottom) / 2
        parts.append(
            f'<text x="12" y="{_fmt(mid)}" text-anchor="middle" transform="rotate(-90 12 {_fmt(mid)})" '
            f'class="ch-muted" fill="#5F6B7A" font-size="11">{escape(y_label)}</text>'
        )
    parts.append("</g>")
    return parts


def _series_path(frame: _Frame, series: Series) -> list[str]:
    """One ``<path>`` per series, with a new ``M`` after every gap; isolated points become dots."""
    commands: list[str] = []
    dots: list[tuple[float, float]] = []
    segment: list[tuple[float, float]] = []

    def flush() -> None:
        if len(segment) == 1:
            dots.append(segment[0])
        elif segment:
            coords = [f"{_fmt(x)} {_fmt(y)}" for x, y in segment]
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
        parts.append(f'<circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="2.6" fill="{colour}" class="ch-dot"/>')
    parts.append("</g>")
    return parts


def _legend(series: Sequence[Series], extra: Sequence[tuple[str, str]] = ()) -> str:
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


def _figure(svg: Markup | str, legend: str = "", note: str = "", cls: str = "") -> Markup:
    note_html = f'<figcaption class="chart-note">{escape(note)}</figcaption>' if note else ""
    return Markup(
        f'<figure class="chart {escape(cls)}"><div class="chart-scroll">{svg}</div>{legend}{note_html}'
        "</figure>"
    )


def _set_domain(
    frame: _Frame,
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


def line_chart(
    series: Sequence[Series],
    *,
    label: str,
    x_label: str = "step",
    y_label: str = "",
    zero_based: bool = False,
    width: int = 440,
    height: int = 230,
    empty_message: str = "No data recorded",
    note: str = "",
    clip_outliers: bool = False,
    unit: str = "",
) -> Markup:
    """A small chart of one or more series against step, as a ``<figure>`` with an SVG and a legend.

    Args:
        series: the lines; empty ones are left out of the drawing (and named in the legend as "no data").
        label: the chart's accessible name.
        zero_based: start the y axis at 0 (times, learning rate) rather than at the data's minimum (loss).
        clip_outliers: let rare extremes run off the top (a 40 s compile step, checkpoint stalls) so the
            typical value stays readable; the note says how high they went.
        unit: appended to numbers in the note and description ("s").
    """
    drawable = [s for s in series if any(y is not None for y in s.ys)]
    if not drawable:
        return _figure(_placeholder(width, height, label, empty_message, "chart-small"), cls="chart-small")
    frame = _Frame(width, height, left=58, right=14, top=14, bottom=34)
    values = _values(drawable)
    xs = [x for s in drawable for x, y in zip(s.xs, s.ys) if y is not None]
    y_lo, y_hi = min(values), max(values)
    notes = [note] if note else []
    if clip_outliers and len(values) >= 20:
        ordered = sorted(values)
        typical = ordered[int(0.99 * (len(values) - 1))]
        p90 = ordered[int(0.90 * (len(values) - 1))]
        if p90 > 0 and typical > 100 * p90:
            typical = p90   # a divergence: the last few percent of the run climb by orders of magnitude
        if typical > 0 and y_hi > 4 * typical:
            notes.append(f"Peaks up to {y_hi:.3g}{unit} run off the top; the axis shows the typical range.")
            y_hi = typical * 1.6
    if zero_based and y_lo >= 0:
        y_lo = 0.0
    elif y_hi > y_lo:
        pad = (y_hi - y_lo) * 0.05
        y_lo, y_hi = y_lo - pad, y_hi + pad
    _set_domain(frame, min(xs), max(xs), y_lo, y_hi, x_target=5, y_target=5)
    lo_val, hi_val = min(values), max(values)
    desc = (
        f"{label}: {len(xs):,} points from {x_label} {format_tick(min(xs), frame.x_step)} to "
        f"{format_tick(max(xs), frame.x_step)}; min {lo_val:.4g}, max {hi_val:.4g}."
    )
    parts = _svg_open(frame, label, desc, "chart-small")
    parts += _axes(frame, x_label, y_label)
    parts.append(_clip_def(frame, f"clip-{_slug(label)}"))
    parts.append(f'<g clip-path="url(#clip-{_slug(label)})">')
    for s in drawable:
        parts += _series_path(frame, s)
    parts.append("</g></svg>")
    legend = _legend(_with_missing(series, drawable)) if len(series) > 1 else ""
    return _figure(Markup("".join(parts)), legend, " ".join(notes), cls="chart-small")


def _with_missing(series: Sequence[Series], drawable: Sequence[Series]) -> list[Series]:
    """Drawn series first, then the ones with no numbers, named as such so their absence is visible."""
    drawn = {id(s) for s in drawable}
    missing = [Series(s.key, f"{s.label} (no data)", [], [], s.style) for s in series if id(s) not in drawn]
    return list(drawable) + missing


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "chart"


def _clip_def(frame: _Frame, clip_id: str) -> str:
    # A slightly padded clip so a line at the domain's edge is not cut in half.
    return (
        f'<defs><clipPath id="{escape(clip_id)}">'
        f'<rect x="{_fmt(frame.plot_left - 3)}" y="{_fmt(frame.plot_top - 3)}" '
        f'width="{_fmt(frame.plot_right - frame.plot_left + 6)}" '
        f'height="{_fmt(frame.plot_bottom - frame.plot_top + 6)}"/>'
        "</clipPath></defs>"
    )


# --------------------------------------------------------------------------------------------------- memory

MEMORY_SERIES: dict[str, tuple[str, LineStyle]] = {
    "system_used_gb": ("System RAM used", LineStyle("blue", None, 2.4)),
    "main_process_gb": ("Main process", LineStyle("orange", None, 1.7)),
    "workers_gb": ("Data workers", LineStyle("green", "7 3", 1.7)),
    "gpu_used_gb": ("GPU memory used", LineStyle("purple", "2 2", 1.9)),
    "swap_used_gb": ("Swap used", LineStyle("vermillion", "1 3", 1.9)),
}
_FALLBACK_STYLES = [
    LineStyle("sky", "8 2 2 2", 1.7),
    LineStyle("black", "4 2", 1.4),
    LineStyle("sky", "1 2", 1.7),
]


def memory_timeline(timeline: Mapping[str, Any] | None, *, width: int = 920, height: int = 320) -> Markup:
    """The memory chart: GB against minutes since start, threshold zones shaded, events marked.

    Args:
        timeline: the analysis document's ``metrics_timeline`` (see runlens.analyze.contract).

    Returns:
        A ``<figure>`` with the SVG, an HTML legend and a note; a "no data" placeholder when nothing was
        sampled.
    """
    tl: Mapping[str, Any] = timeline if isinstance(timeline, Mapping) else {}
    memory = tl.get("memory") if isinstance(tl.get("memory"), Mapping) else {}
    assert isinstance(memory, Mapping)
    label = "Memory over time"

    raw_series: list[tuple[str, str, LineStyle, list[float], list[float | None]]] = []
    ordered = [k for k in MEMORY_SERIES if k in memory] + sorted(
        str(k) for k in memory if k not in MEMORY_SERIES
    )
    fallback = iter(_FALLBACK_STYLES * 10)
    for key in ordered:
        xs, ys = clean_series(memory.get(key))
        name, style = MEMORY_SERIES.get(key, (key, next(fallback)))
        raw_series.append((key, name, style, xs, ys))

    events_raw = tl.get("events") if isinstance(tl.get("events"), list) else []
    assert isinstance(events_raw, list)
    events = [e for e in events_raw if isinstance(e, Mapping) and _finite(e.get("timestamp")) is not None]

    all_t = [x for _, _, _, xs, ys in raw_series for x, y in zip(xs, ys) if y is not None]
    if not all_t:
        return _figure(_placeholder(width, 160, label, "No memory samples recorded", "chart-memory"))

    start = _finite(tl.get("start_time"))
    if start is None:
        start = min(all_t)
    # Minutes for real runs; seconds for one that lasted under three minutes, so its axis reads 0, 10, 20.
    unit = 60.0 if max(all_t) - start >= 180 else 1.0
    unit_name = "min" if unit == 60.0 else "s"
    series = [
        Series(key, name, [(x - start) / unit for x in xs], ys, style)
        for key, name, style, xs, ys in raw_series
    ]
    drawable = [s for s in series if any(y is not None for y in s.ys)]

    total = _finite(tl.get("total_memory_gb"))
    gpu_total = _finite(tl.get("gpu_total_memory_gb"))
    thresholds = tl.get("thresholds") if isinstance(tl.get("thresholds"), Mapping) else {}
    assert isinstance(thresholds, Mapping)
    warn_ratio = _finite(thresholds.get("warning_ratio"))
    crit_ratio = _finite(thresholds.get("critical_ratio"))
    warn_gb = _finite(thresholds.get("warning_gb")) or (warn_ratio * total if warn_ratio and total else None)
    crit_gb = _finite(thresholds.get("critical_gb")) or (crit_ratio * total if crit_ratio and total else None)

    data_max = max(_values(drawable))
    notes: list[str] = []
    # The chart is about headroom, so the machine's total is on the scale, unless the run used so little of a
    # big machine that the lines would lie flat against the floor.
    show_total = total is not None and data_max >= 0.25 * total
    has_gpu = any(s.key == "gpu_used_gb" for s in drawable)
    show_gpu_total = gpu_total is not None and has_gpu and data_max >= 0.25 * gpu_total
    y_top = max(
        [data_max]
        + ([total] if show_total and total else [])
        + ([gpu_total] if show_gpu_total and gpu_total else [])
    )
    if total is not None and not show_total:
        notes.append(f"Total RAM {total:.1f} GB is off the scale (peak use was under a quarter of it).")

    minutes = [x for s in drawable for x in s.xs]
    markers: list[Marker] = []
    for e in events:
        t = float(e["timestamp"])
        minute = (t - start) / unit
        text = str(e.get("label") or e.get("type") or "event")
        severity = str(e.get("severity") or "info")
        tooltip = f"{text} ({e.get('type') or 'event'}, {severity}) at {minute:.1f} {unit_name}, {_clock(t)}"
        markers.append(Marker(minute, text, tooltip, severity if severity in SEVERITY_COLOURS else "info"))
    x_all = minutes + [m.x for m in markers]
    x_lo, x_hi = min(min(x_all), 0.0), max(x_all)

    frame = _Frame(width, height, left=56, right=16, top=44, bottom=38)
    _set_domain(frame, x_lo, x_hi, 0.0, y_top * 1.02, x_target=8, y_target=6)

    bands: list[Band] = []
    if warn_gb is not None and warn_gb < frame.y_hi:
        upper = crit_gb if crit_gb is not None and crit_gb > warn_gb else frame.y_hi
        pct = f" ({warn_ratio:.0%} of RAM)" if warn_ratio else ""
        bands.append(
            Band(warn_gb, min(upper, frame.y_hi), "warning", f"Warning zone ≥ {warn_gb:.1f} GB{pct}")
        )
    if crit_gb is not None and crit_gb < frame.y_hi:
        pct = f" ({crit_ratio:.0%} of RAM)" if crit_ratio else ""
        bands.append(Band(crit_gb, frame.y_hi, "critical", f"Critical zone ≥ {crit_gb:.1f} GB{pct}"))
    hlines: list[HLine] = []
    if show_total and total is not None:
        hlines.append(HLine(total, f"RAM total {total:.1f} GB"))
    if show_gpu_total and gpu_total is not None:
        hlines.append(HLine(gpu_total, f"GPU total {gpu_total:.1f} GB", OKABE_ITO["purple"]))

    desc = _memory_desc(drawable, total, [m * unit / 60.0 for m in minutes], len(markers))
    parts = _svg_open(frame, label, desc, "chart-memory")
    parts += _bands(frame, bands)
    parts += _axes(frame, "minutes since start" if unit == 60.0 else "seconds since start", "GB")
    parts += _hlines(frame, hlines)
    parts += _markers(frame, markers)
    parts.append(_clip_def(frame, "clip-memory"))
    parts.append('<g clip-path="url(#clip-memory)">')
    for s in drawable:
        parts += _series_path(frame, s)
    parts.append("</g>")
    parts += _peak(frame, drawable[0], _raw_peak(tl, drawable[0].key, start, unit))
    parts.append("</svg>")

    legend = _legend(_with_missing(series, drawable), [(f"zone-{b.cls}", b.label) for b in bands])
    raw_counts = tl.get("raw_counts") if isinstance(tl.get("raw_counts"), Mapping) else {}
    assert isinstance(raw_counts, Mapping)
    samples = raw_counts.get("samples")
    drawn = max((len(s.xs) for s in drawable), default=0)
    if isinstance(samples, int) and samples > drawn:
        notes.append(
            f"Drawn from {samples:,} samples, reduced to {drawn:,} points per line keeping every peak."
        )
    if markers:
        notes.append(
            f"{len(markers)} event marker{'s' if len(markers) != 1 else ''}; hover a marker for details."
        )
    return _figure(Markup("".join(parts)), legend, " ".join(notes), cls="chart-memory")


def _raw_peak(
    timeline: Mapping[str, Any], key: str, start: float, unit: float = 60.0
) -> tuple[float, float] | None:
    """The analyzer's raw maximum for a series (``metrics_timeline.peaks``, optional), in chart units."""
    peaks = timeline.get("peaks")
    peak = peaks.get(key) if isinstance(peaks, Mapping) else None
    if not isinstance(peak, Mapping):
        return None
    value, t = _finite(peak.get("value")), _finite(peak.get("timestamp"))
    return None if value is None or t is None else ((t - start) / unit, value)


def _memory_desc(
    series: Sequence[Series], total: float | None, minutes: Sequence[float], n_events: int
) -> str:
    bits = [f"Memory in GB over {max(minutes) - min(minutes):.1f} minutes."]
    for s in series:
        vals = [y for y in s.ys if y is not None]
        bits.append(f"{s.label}: peak {max(vals):.1f} GB.")
    if total is not None:
        bits.append(f"Total RAM {total:.1f} GB.")
    if n_events:
        bits.append(f"{n_events} events marked.")
    return " ".join(bits)


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _bands(frame: _Frame, bands: Sequence[Band]) -> list[str]:
    fills = {"warning": "#F5A623", "critical": "#D32F2F"}
    parts: list[str] = []
    for band in bands:
        y_top, y_bottom = frame.py(band.hi), frame.py(max(band.lo, frame.y_lo))
        if y_bottom - y_top <= 0:
            continue
        parts.append(
            f'<rect x="{_fmt(frame.plot_left)}" y="{_fmt(y_top)}" '
            f'width="{_fmt(frame.plot_right - frame.plot_left)}" '
            f'height="{_fmt(y_bottom - y_top)}" fill="{fills[band.cls]}" fill-opacity="0.13" '
            f'class="zone zone-{band.cls}"><title>{escape(band.label)}</title></rect>'
        )
        parts.append(
            f'<line x1="{_fmt(frame.plot_left)}" x2="{_fmt(frame.plot_right)}" y1="{_fmt(y_bottom)}" '
            f'y2="{_fmt(y_bottom)}" stroke="{fills[band.cls]}" stroke-opacity="0.55" stroke-width="1" '
            'stroke-dasharray="3 3"/>'
        )
    return parts


def _hlines(frame: _Frame, lines: Sequence[HLine]) -> list[str]:
    parts: list[str] = []
    for line in lines:
        if not (frame.y_lo <= line.y <= frame.y_hi):
            continue
        y = frame.py(line.y)
        ref = " ch-ref" if line.colour == HLine.colour else ""
        parts.append(
            f'<line x1="{_fmt(frame.plot_left)}" x2="{_fmt(frame.plot_right)}" y1="{_fmt(y)}" y2="{_fmt(y)}" '
            f'stroke="{line.colour}" stroke-width="1.2" stroke-dasharray="6 4" class="ch-hline{ref}"/>'
        )
        parts.append(
            f'<text x="{_fmt(frame.plot_left + 6)}" y="{_fmt(y - 4)}" text-anchor="start" font-size="11" '
            f'fill="{line.colour}"{HALO} class="ch-hline-label ch-halo{ref}">{escape(line.label)}</text>'
        )
    return parts


_LABEL_CHARS = 22
_CHAR_WIDTH = 6.2  # at font-size 11, a generous average so labels never collide


def _markers(frame: _Frame, markers: Sequence[Marker]) -> list[str]:
    """Vertical lines for events; short labels above the plot where they fit, all with a tooltip.

    Up to 200 events can arrive, so labels go in two rows and a label that would overlap its row's neighbour
    is left off (the line and its tooltip stay). Critical events claim label space first, the latest first.
    """
    rank = {"critical": 0, "warning": 1, "info": 2}
    in_range = [m for m in markers if frame.x_lo <= m.x <= frame.x_hi]
    labelled: dict[int, tuple[int, str]] = {}
    rows: list[list[tuple[float, float]]] = [[], []]
    # A top-row label's line runs down through the second row, so it must miss the second row's labels.
    top_row_lines: list[float] = []

    def free(row: list[tuple[float, float]], span: tuple[float, float]) -> bool:
        return all(span[1] <= a or span[0] >= b for a, b in row)

    # Most severe first; within a severity, latest first: the last critical event usually ended the run.
    for i in sorted(range(len(in_range)), key=lambda i: (rank.get(in_range[i].severity, 3), -in_range[i].x)):
        m = in_range[i]
        short = m.label if len(m.label) <= _LABEL_CHARS else m.label[: _LABEL_CHARS - 1] + "…"
        w = len(short) * _CHAR_WIDTH
        x = frame.px(m.x)
        lo = min(max(x - w / 2, 0.0), frame.width - w)
        span = (lo - 4, lo + w + 4)
        if free(rows[0], span) and all(not (a - 2 <= x <= b + 2) for a, b in rows[1]):
            rows[0].append(span)
            top_row_lines.append(x)
            labelled[i] = (0, short)
        elif free(rows[1], span) and all(not (span[0] <= lx <= span[1]) for lx in top_row_lines):
            rows[1].append(span)
            labelled[i] = (1, short)
    parts: list[str] = ['<g class="ch-events">']
    for i, m in enumerate(in_range):
        x_attr = _fmt(frame.px(m.x))
        colour = SEVERITY_COLOURS[m.severity]
        dash = SEVERITY_DASH[m.severity]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        top = frame.plot_top if i not in labelled else (18.0 if labelled[i][0] == 0 else 32.0)
        parts.append(f'<g class="ch-event sev-{m.severity}"><title>{escape(m.tooltip)}</title>')
        # A wide transparent twin makes a 1 px line easy to hover.
        parts.append(
            f'<line x1="{x_attr}" x2="{x_attr}" y1="{_fmt(top)}" y2="{_fmt(frame.plot_bottom)}" '
            'stroke="transparent" '
            'stroke-width="9"/>'
        )
        parts.append(
            f'<line x1="{x_attr}" x2="{x_attr}" y1="{_fmt(top)}" y2="{_fmt(frame.plot_bottom)}" '
            f'stroke="{colour}" '
            f'stroke-width="1.3"{dash_attr} class="ev-line"/>'
        )
        if i in labelled:
            row, short = labelled[i]
            w = len(short) * _CHAR_WIDTH
            cx = min(max(frame.px(m.x), w / 2), frame.width - w / 2)
            y = 14 if row == 0 else 28
            parts.append(
                f'<text x="{_fmt(cx)}" y="{y}" text-anchor="middle" font-size="11" fill="{colour}" '
                f'class="ev-label">{escape(short)}</text>'
            )
        parts.append("</g>")
    parts.append("</g>")
    return parts


def _peak(frame: _Frame, series: Series, raw_peak: tuple[float, float] | None = None) -> list[str]:
    """Mark the highest point of the main series: the number the reader came for.

    ``raw_peak`` (x in chart units, GB) is the analyzer's maximum from the raw rows when it sent one; the
    drawn points hold the same maximum (the downsampler keeps it), so either way the label is the true peak.
    """
    best: tuple[float, float] | None = raw_peak
    if best is None:
        for x, y in zip(series.xs, series.ys):
            if y is not None and (best is None or y > best[1]):
                best = (x, y)
    if best is None or not (frame.x_lo <= best[0] <= frame.x_hi and frame.y_lo <= best[1] <= frame.y_hi):
        return []
    px, py = frame.px(best[0]), frame.py(best[1])
    text = f"peak {best[1]:.1f} GB"
    near_right = px > frame.plot_right - 90
    anchor = "end" if near_right else "start"
    tx = px - 7 if near_right else px + 7
    ty = max(py - 7, frame.plot_top + 10)
    colour = OKABE_ITO.get(series.style.colour, series.style.colour)
    dot = (
        f'<circle cx="{_fmt(px)}" cy="{_fmt(py)}" r="4" fill="#fff" stroke="{colour}" stroke-width="2" '
        f'class="c-{escape(series.style.colour)} ch-peak-dot"/>'
    )
    label = (
        f'<text x="{_fmt(tx)}" y="{_fmt(ty)}" text-anchor="{anchor}" font-size="12" font-weight="600" '
        f'class="ch-strong ch-halo" fill="#1F2933"{HALO}>{escape(text)}</text>'
    )
    return [f'<g class="ch-peak">{dot}{label}</g>']


# --------------------------------------------------------------------------------------------------- training

# (title, y label, zero-based, clip outliers, [(key, legend label, style), ...])
TRAINING_CHARTS: list[tuple[str, str, bool, bool, list[tuple[str, str, LineStyle]]]] = [
    ("Loss", "loss", False, True, [("loss", "Loss", LineStyle("blue", None, 1.6))]),
    (
        "Learning rate",
        "learning rate",
        True,
        False,
        [("learning_rate", "Learning rate", LineStyle("orange", None, 1.8))],
    ),
    (
        "Gradient norm",
        "norm",
        False,
        True,
        [("gradient_norm", "Gradient norm", LineStyle("green", None, 1.6))],
    ),
    (
        "Step time",
        "seconds",
        True,
        True,
        [
            ("step_time_seconds", "Step time", LineStyle("purple", None, 1.6)),
            ("data_time_seconds", "Data wait", LineStyle("vermillion", "4 2", 1.6)),
        ],
    ),
]


def training_charts(timeline: Mapping[str, Any] | None) -> list[tuple[str, Markup]]:
    """The 2x2 grid of training curves against step: ``[(title, figure), ...]`` in display order.

    Every chart is returned even without data (as a placeholder), so the grid keeps its shape and the reader
    sees that a curve was not recorded rather than wondering where it went.
    """
    tl: Mapping[str, Any] = timeline if isinstance(timeline, Mapping) else {}
    training = tl.get("training") if isinstance(tl.get("training"), Mapping) else {}
    assert isinstance(training, Mapping)
    charts: list[tuple[str, Markup]] = []
    for title, y_label, zero_based, clip, spec in TRAINING_CHARTS:
        series = []
        for key, name, style in spec:
            if key not in training and len(spec) > 1 and key != spec[0][0]:
                continue  # an optional companion line (data wait) that was never recorded: no legend entry
            xs, ys = clean_series(training.get(key))
            series.append(Series(key, name, xs, ys, style))
        charts.append(
            (
                title,
                line_chart(
                    series,
                    label=title,
                    y_label=y_label,
                    zero_based=zero_based,
                    clip_outliers=clip,
                    unit=" s" if y_label == "seconds" else "",
                    empty_message=f"No {title.lower()} recorded",
                ),
            )
        )
    return charts
