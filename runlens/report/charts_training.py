"""The training charts: small line charts against step (loss, learning rate, gradient norm, step time), drawn
as a 2x2 grid in the report.

Each chart keeps a readable axis when a run diverges: rare extremes run off the top and the note says how high
they went.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from runlens.report import svg
from runlens.report.svg import LineStyle, Series

__all__ = ["TRAINING_CHARTS", "line_chart", "training_charts"]


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
        empty = svg.placeholder(width, height, label, empty_message, "chart-small")
        return svg.figure(empty, cls="chart-small")
    frame = svg.Frame(width, height, left=58, right=14, top=14, bottom=34)
    values = svg.values_of(drawable)
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
    svg.set_domain(frame, min(xs), max(xs), y_lo, y_hi, x_target=5, y_target=5)
    lo_val, hi_val = min(values), max(values)
    desc = (
        f"{label}: {len(xs):,} points from {x_label} {svg.format_tick(min(xs), frame.x_step)} to "
        f"{svg.format_tick(max(xs), frame.x_step)}; min {lo_val:.4g}, max {hi_val:.4g}."
    )
    parts = svg.svg_open(frame, label, desc, "chart-small")
    parts += svg.axes(frame, x_label, y_label)
    parts.append(svg.clip_def(frame, f"clip-{svg.slug(label)}"))
    parts.append(f'<g clip-path="url(#clip-{svg.slug(label)})">')
    for s in drawable:
        parts += svg.series_path(frame, s)
    parts.append("</g></svg>")
    legend = svg.legend(svg.with_missing(series, drawable)) if len(series) > 1 else ""
    return svg.figure(Markup("".join(parts)), legend, " ".join(notes), cls="chart-small")


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
            xs, ys = svg.clean_series(training.get(key))
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
