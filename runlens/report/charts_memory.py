"""The memory chart: GiB against time since start, with the threshold zones shaded, the machine's totals drawn,
events marked and the peak labelled.

The zones are drawn for the pool that binds the run (``metrics_timeline.zones``, chosen by the analyzer): the
GPU's zones on the GPU line when the GPU is what fills, RAM's when RAM does, both when both came close. A
document from before ``zones`` gets the RAM zones of its ``thresholds``, as it always did.

It reads ``metrics_timeline`` of the analysis document (see runlens.analyze.contract) and defends itself
against a partial one: a run that sampled nothing gets a "no data" placeholder, not an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from runlens.core.humanize import local_time
from runlens.report import svg
from runlens.report.svg import OKABE_ITO, Frame, LineStyle, Series, coord, finite

__all__ = ["MEMORY_SERIES", "memory_timeline"]

# A halo in the background colour keeps a label legible where it crosses a line (the page's CSS swaps the
# colour in dark mode through the ch-halo class).
HALO = ' paint-order="stroke" stroke="#fff" stroke-width="3" stroke-linejoin="round"'
SEVERITY_COLOURS = {"critical": "#C62828", "warning": "#B26A00", "info": "#5F6B7A"}
SEVERITY_DASH = {"critical": None, "warning": "5 3", "info": "2 3"}


@dataclass(frozen=True)
class Band:
    """A shaded horizontal zone between two y values (a memory threshold)."""

    lo: float
    hi: float
    cls: str  # "warning" | "critical"
    label: str
    resource: str = "host"  # host | gpu | unified: the pool whose limit the zone is a share of


@dataclass(frozen=True)
class Zone:
    """The warning and critical levels (GiB) on one memory pool, and the drawn series they apply to."""

    resource: str  # host | gpu | unified
    series: str
    name: str  # "RAM", "GPU 0", "Unified memory"
    limit: float | None
    warning: float | None
    critical: float | None
    warning_ratio: float | None
    critical_ratio: float | None


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


MEMORY_SERIES: dict[str, tuple[str, LineStyle]] = {
    "system_used_gb": ("System RAM used", LineStyle("blue", None, 2.4)),
    "container_used_gb": ("Container memory (working set)", LineStyle("sky", None, 2.4)),
    "main_process_gb": ("Main process", LineStyle("orange", None, 1.7)),
    "workers_gb": ("Data workers", LineStyle("green", "7 3", 1.7)),
    "gpu_used_gb": ("GPU memory used", LineStyle("purple", "2 2", 1.9)),
    "gpu_device_used_gb": ("Fullest GPU's memory used", LineStyle("purple", None, 1.9)),
    "gpu_job_gb": ("GPU memory of this job", LineStyle("purple", "6 3", 1.5)),
    "swap_used_gb": ("Swap used", LineStyle("vermillion", "1 3", 1.9)),
}
BINDING_TEXT = {
    "host": "system RAM",
    "gpu": "GPU memory",
    "both": "system RAM and GPU memory",
    "unified": "the unified memory pool",
}
_FALLBACK_STYLES = [
    LineStyle("sky", "8 2 2 2", 1.7),
    LineStyle("black", "4 2", 1.4),
    LineStyle("sky", "1 2", 1.7),
]


def memory_timeline(timeline: Mapping[str, Any] | None, *, width: int = 920, height: int = 320) -> Markup:
    """The memory chart: GiB against minutes since start, threshold zones shaded, events marked.

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
        xs, ys = svg.clean_series(memory.get(key))
        name, style = MEMORY_SERIES.get(key, (key, next(fallback)))
        raw_series.append((key, name, style, xs, ys))

    events_raw = tl.get("events") if isinstance(tl.get("events"), list) else []
    assert isinstance(events_raw, list)
    events = [e for e in events_raw if isinstance(e, Mapping) and finite(e.get("timestamp")) is not None]

    all_t = [x for _, _, _, xs, ys in raw_series for x, y in zip(xs, ys) if y is not None]
    if not all_t:
        return svg.figure(svg.placeholder(width, 160, label, "No memory samples recorded", "chart-memory"))

    start = finite(tl.get("start_time"))
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

    total = finite(tl.get("total_memory_gb"))
    gpu_total = finite(tl.get("gpu_total_memory_gb"))
    zones = _zones(tl, total)

    data_max = max(svg.values_of(drawable))
    notes: list[str] = []
    # The chart is about headroom, so the machine's total is on the scale, unless the run used so little of a
    # big machine that the lines would lie flat against the floor.
    show_total = total is not None and data_max >= 0.25 * total
    has_gpu = any(s.key in ("gpu_used_gb", "gpu_device_used_gb") for s in drawable)
    show_gpu_total = gpu_total is not None and has_gpu and data_max >= 0.25 * gpu_total
    # A zoned pool's limit is on the scale by the same rule, so its zones are where they belong.
    drawn_keys = {s.key for s in drawable}
    zone_limits = [z.limit for z in zones if z.limit and z.series in drawn_keys and data_max >= 0.25 * z.limit]
    y_top = max(
        [data_max]
        + ([total] if show_total and total else [])
        + ([gpu_total] if show_gpu_total and gpu_total else [])
        + zone_limits
    )
    if total is not None and not show_total:
        what = "The container's limit" if tl.get("memory_limit_source") == "cgroup" else "Total RAM"
        notes.append(f"{what} {total:.1f} GiB is off the scale (peak use was under a quarter of it).")

    minutes = [x for s in drawable for x in s.xs]
    markers: list[Marker] = []
    for e in events:
        t = float(e["timestamp"])
        minute = (t - start) / unit
        text = str(e.get("label") or e.get("type") or "event")
        severity = str(e.get("severity") or "info")
        tooltip = f"{text} ({e.get('type') or 'event'}, {severity}) at {minute:.1f} {unit_name}, {local_time(t)}"
        markers.append(Marker(minute, text, tooltip, severity if severity in SEVERITY_COLOURS else "info"))
    x_all = minutes + [m.x for m in markers]
    x_lo, x_hi = min(min(x_all), 0.0), max(x_all)

    frame = Frame(width, height, left=56, right=16, top=44, bottom=38)
    svg.set_domain(frame, x_lo, x_hi, 0.0, y_top * 1.02, x_target=8, y_target=6)

    bands = [band for zone in zones for band in _zone_bands(zone, frame.y_hi)]
    gpu_name = next((z.name for z in zones if z.resource == "gpu"), "GPU")
    hlines: list[HLine] = []
    if show_total and total is not None:
        what = "Container limit" if tl.get("memory_limit_source") == "cgroup" else "RAM total"
        hlines.append(HLine(total, f"{what} {total:.1f} GiB"))
    if show_gpu_total and gpu_total is not None:
        hlines.append(HLine(gpu_total, f"{gpu_name} total {gpu_total:.1f} GiB", OKABE_ITO["purple"]))

    desc = _memory_desc(drawable, total, [m * unit / 60.0 for m in minutes], len(markers))
    parts = svg.svg_open(frame, label, desc, "chart-memory")
    parts += _bands(frame, bands)
    parts += svg.axes(frame, "minutes since start" if unit == 60.0 else "seconds since start", "GiB")
    parts += _hlines(frame, hlines)
    parts += _markers(frame, markers)
    parts.append(svg.clip_def(frame, "clip-memory"))
    parts.append('<g clip-path="url(#clip-memory)">')
    for s in drawable:
        parts += svg.series_path(frame, s)
    parts.append("</g>")
    # The peak that matters is the binding pool's: the GPU's when the GPU is what fills.
    main = next((s for z in zones for s in drawable if s.key == z.series), drawable[0])
    parts += _peak(frame, main, _raw_peak(tl, main.key, start, unit))
    parts.append("</svg>")

    legend = svg.legend(svg.with_missing(series, drawable), [(f"zone-{b.cls}", b.label) for b in bands])
    binding = tl.get("binding_resource")
    if isinstance(binding, str) and binding in BINDING_TEXT:
        reason = tl.get("binding_reason")
        because = f" ({reason})" if isinstance(reason, str) and reason else ""
        text = BINDING_TEXT[binding]
        if tl.get("memory_limit_source") == "cgroup":
            text = text.replace("system RAM", "the container's memory")
        notes.append(f"Zones are drawn for {text}, the memory this run came closest to "
                     f"exhausting{because}.")
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
    return svg.figure(Markup("".join(parts)), legend, " ".join(notes), cls="chart-memory")


def _zones(tl: Mapping[str, Any], total: float | None) -> list[Zone]:
    """The zones to shade: the analyzer's ``zones`` (the binding pools), else RAM's from ``thresholds``."""
    given = tl.get("zones")
    if isinstance(given, list):
        out: list[Zone] = []
        for z in given:
            if not isinstance(z, Mapping):
                continue
            resource = str(z.get("resource") or "host")
            device = finite(z.get("device_index"))
            name = {"host": "RAM", "unified": "Unified memory"}.get(
                resource, "GPU" if device is None else f"GPU {device:.0f}"
            )
            if resource == "host" and z.get("limit_source") == "cgroup":
                name = "Container"
            out.append(Zone(resource, str(z.get("series") or ""), name, finite(z.get("limit_gb")),
                            finite(z.get("warning_gb")), finite(z.get("critical_gb")),
                            finite(z.get("warning_ratio")), finite(z.get("critical_ratio"))))
        return out
    thresholds = tl.get("thresholds") if isinstance(tl.get("thresholds"), Mapping) else {}
    assert isinstance(thresholds, Mapping)
    warn_ratio = finite(thresholds.get("warning_ratio"))
    crit_ratio = finite(thresholds.get("critical_ratio"))
    warn_gb = finite(thresholds.get("warning_gb")) or (warn_ratio * total if warn_ratio and total else None)
    crit_gb = finite(thresholds.get("critical_gb")) or (crit_ratio * total if crit_ratio and total else None)
    return [Zone("host", "system_used_gb", "RAM", total, warn_gb, crit_gb, warn_ratio, crit_ratio)]


def _zone_bands(zone: Zone, y_hi: float) -> list[Band]:
    """A zone's warning band (up to its critical level) and critical band, where they fall inside the plot."""
    def share(ratio: float | None) -> str:
        if ratio is None:
            return ""
        return f" ({ratio:.0%} of {zone.limit:.1f} GiB)" if zone.limit else f" ({ratio:.0%} of {zone.name})"

    bands: list[Band] = []
    warn, crit = zone.warning, zone.critical
    # A zone ends at its pool's limit: above it lies nothing of that pool (and, with two pools, the other's).
    top = min(zone.limit, y_hi) if zone.limit and zone.limit > (crit or warn or 0.0) else y_hi
    if warn is not None and warn < y_hi:
        upper = crit if crit is not None and crit > warn else top
        label = f"{zone.name} warning zone ≥ {warn:.1f} GiB{share(zone.warning_ratio)}"
        bands.append(Band(warn, min(upper, top), "warning", label, zone.resource))
    if crit is not None and crit < y_hi:
        label = f"{zone.name} critical zone ≥ {crit:.1f} GiB{share(zone.critical_ratio)}"
        bands.append(Band(crit, top, "critical", label, zone.resource))
    return bands


def _raw_peak(
    timeline: Mapping[str, Any], key: str, start: float, unit: float = 60.0
) -> tuple[float, float] | None:
    """The analyzer's raw maximum for a series (``metrics_timeline.peaks``, optional), in chart units."""
    peaks = timeline.get("peaks")
    peak = peaks.get(key) if isinstance(peaks, Mapping) else None
    if not isinstance(peak, Mapping):
        return None
    value, t = finite(peak.get("value")), finite(peak.get("timestamp"))
    return None if value is None or t is None else ((t - start) / unit, value)


def _memory_desc(
    series: Sequence[Series], total: float | None, minutes: Sequence[float], n_events: int
) -> str:
    bits = [f"Memory in GiB over {max(minutes) - min(minutes):.1f} minutes."]
    for s in series:
        vals = [y for y in s.ys if y is not None]
        bits.append(f"{s.label}: peak {max(vals):.1f} GiB.")
    if total is not None:
        bits.append(f"Total RAM {total:.1f} GiB.")
    if n_events:
        bits.append(f"{n_events} events marked.")
    return " ".join(bits)


def _bands(frame: Frame, bands: Sequence[Band]) -> list[str]:
    fills = {"warning": "#F5A623", "critical": "#D32F2F"}
    parts: list[str] = []
    for band in bands:
        y_top, y_bottom = frame.py(band.hi), frame.py(max(band.lo, frame.y_lo))
        if y_bottom - y_top <= 0:
            continue
        parts.append(
            f'<rect x="{coord(frame.plot_left)}" y="{coord(y_top)}" '
            f'width="{coord(frame.plot_right - frame.plot_left)}" '
            f'height="{coord(y_bottom - y_top)}" fill="{fills[band.cls]}" fill-opacity="0.13" '
            f'class="zone zone-{band.cls}" data-resource="{escape(band.resource)}"><title>{escape(band.label)}</title></rect>'
        )
        parts.append(
            f'<line x1="{coord(frame.plot_left)}" x2="{coord(frame.plot_right)}" y1="{coord(y_bottom)}" '
            f'y2="{coord(y_bottom)}" stroke="{fills[band.cls]}" stroke-opacity="0.55" stroke-width="1" '
            'stroke-dasharray="3 3"/>'
        )
    return parts


def _hlines(frame: Frame, lines: Sequence[HLine]) -> list[str]:
    parts: list[str] = []
    for line in lines:
        if not (frame.y_lo <= line.y <= frame.y_hi):
            continue
        y = frame.py(line.y)
        ref = " ch-ref" if line.colour == HLine.colour else ""
        parts.append(
            f'<line x1="{coord(frame.plot_left)}" x2="{coord(frame.plot_right)}" '
            f'y1="{coord(y)}" y2="{coord(y)}" '
            f'stroke="{line.colour}" stroke-width="1.2" stroke-dasharray="6 4" class="ch-hline{ref}"/>'
        )
        parts.append(
            f'<text x="{coord(frame.plot_left + 6)}" y="{coord(y - 4)}" text-anchor="start" font-size="11" '
            f'fill="{line.colour}"{HALO} class="ch-hline-label ch-halo{ref}">{escape(line.label)}</text>'
        )
    return parts


_LABEL_CHARS = 22
_CHAR_WIDTH = 6.2  # at font-size 11, a generous average so labels never collide


def _markers(frame: Frame, markers: Sequence[Marker]) -> list[str]:
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
        x_attr = coord(frame.px(m.x))
        colour = SEVERITY_COLOURS[m.severity]
        dash = SEVERITY_DASH[m.severity]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        top = frame.plot_top if i not in labelled else (18.0 if labelled[i][0] == 0 else 32.0)
        parts.append(f'<g class="ch-event sev-{m.severity}"><title>{escape(m.tooltip)}</title>')
        # A wide transparent twin makes a 1 px line easy to hover.
        parts.append(
            f'<line x1="{x_attr}" x2="{x_attr}" y1="{coord(top)}" y2="{coord(frame.plot_bottom)}" '
            'stroke="transparent" '
            'stroke-width="9"/>'
        )
        parts.append(
            f'<line x1="{x_attr}" x2="{x_attr}" y1="{coord(top)}" y2="{coord(frame.plot_bottom)}" '
            f'stroke="{colour}" '
            f'stroke-width="1.3"{dash_attr} class="ev-line"/>'
        )
        if i in labelled:
            row, short = labelled[i]
            w = len(short) * _CHAR_WIDTH
            cx = min(max(frame.px(m.x), w / 2), frame.width - w / 2)
            y = 14 if row == 0 else 28
            parts.append(
                f'<text x="{coord(cx)}" y="{y}" text-anchor="middle" font-size="11" fill="{colour}" '
                f'class="ev-label">{escape(short)}</text>'
            )
        parts.append("</g>")
    parts.append("</g>")
    return parts


def _peak(frame: Frame, series: Series, raw_peak: tuple[float, float] | None = None) -> list[str]:
    """Mark the highest point of the main series: the number the reader came for.

    ``raw_peak`` (x in chart units, GiB) is the analyzer's maximum from the raw rows when it sent one; the
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
    text = f"peak {best[1]:.1f} GiB"
    near_right = px > frame.plot_right - 90
    anchor = "end" if near_right else "start"
    tx = px - 7 if near_right else px + 7
    ty = max(py - 7, frame.plot_top + 10)
    colour = OKABE_ITO.get(series.style.colour, series.style.colour)
    dot = (
        f'<circle cx="{coord(px)}" cy="{coord(py)}" r="4" fill="#fff" stroke="{colour}" stroke-width="2" '
        f'class="c-{escape(series.style.colour)} ch-peak-dot"/>'
    )
    label = (
        f'<text x="{coord(tx)}" y="{coord(ty)}" text-anchor="{anchor}" font-size="12" font-weight="600" '
        f'class="ch-strong ch-halo" fill="#1F2933"{HALO}>{escape(text)}</text>'
    )
    return [f'<g class="ch-peak">{dot}{label}</g>']
