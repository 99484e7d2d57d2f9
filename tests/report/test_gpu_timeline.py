"""The memory chart draws the zones of the pool that binds: GPU zones on the GPU line when the GPU fills, RAM
zones when RAM does, both when both come close; all in GiB, from stored runs analysed for real."""

from __future__ import annotations

import re
from typing import Any

from gpu_jobs import analysis_of, gpu_job, rising

from runlens.report import charts_memory
from runlens.report.context import build_context
from runlens.report.html import render_report
from runlens.store import Store

ZONE = re.compile(r'class="zone zone-(warning|critical)" data-resource="(\w+)"><title>([^<]*)</title>')


def zones_drawn(figure: str) -> list[tuple[str, str, str]]:
    return ZONE.findall(figure)


def chart(doc: dict[str, Any]) -> str:
    return str(build_context(doc)["memory_chart"])


def test_gpu_bound_run_shades_gpu_zones_and_labels_the_gpu_peak(store: Store) -> None:
    doc = analysis_of(store, gpu_job(store, gpu_used=rising(20.0, 135.0, 120), ram_used=40.0))
    figure = chart(doc)
    assert zones_drawn(figure) == [
        ("warning", "gpu", "GPU 0 warning zone ≥ 119.3 GiB (85% of 140.4 GiB)"),
        ("critical", "gpu", "GPU 0 critical zone ≥ 133.4 GiB (95% of 140.4 GiB)"),
    ]
    assert "GPU 0 total 140.4 GiB" in figure
    assert "peak 135.0 GiB" in figure   # the binding pool's peak, not RAM's 40
    assert "Zones are drawn for GPU memory" in figure
    assert " GB" not in figure


def test_host_bound_run_shades_ram_zones(store: Store) -> None:
    doc = analysis_of(store, gpu_job(store, gpu_used=30.0, ram_used=rising(40.0, 118.0, 120)))
    drawn = zones_drawn(chart(doc))
    assert [(cls, res) for cls, res, _ in drawn] == [("warning", "host"), ("critical", "host")]
    assert drawn[0][2] == "RAM warning zone ≥ 106.8 GiB (85% of 125.6 GiB)"
    assert "Zones are drawn for system RAM" in chart(doc)


def test_both_pools_close_to_full_shade_both(store: Store) -> None:
    doc = analysis_of(store, gpu_job(store, gpu_used=rising(60.0, 120.0, 120), ram_used=rising(50.0, 100.0, 120)))
    resources = {res for _, res, _ in zones_drawn(chart(doc))}
    assert resources == {"host", "gpu"}


def test_several_gpus_name_the_device_in_the_zones(store: Store) -> None:
    doc = analysis_of(store, gpu_job(store, devices=2, gpu_used=[50.0, rising(60.0, 130.0, 120)]))
    figure = chart(doc)
    assert [t for _, _, t in zones_drawn(figure)][0].startswith("GPU 1 warning zone")
    assert "Fullest GPU&#39;s memory used" in figure or "Fullest GPU's memory used" in figure


def test_the_page_renders_the_gpu_zones_and_the_gpu_finding(store: Store) -> None:
    doc = analysis_of(store, gpu_job(store, util=lambda i: 57.0 + 6.0 * (i % 2),
                                     gpu_used=rising(20.0, 135.0, 120), n_steps=500))
    html = render_report(doc)
    memory = html[html.index('id="memory"'): html.index('id="training"')]
    assert {res for _, res, _ in zones_drawn(memory)} == {"gpu"}
    recs = html[html.index('id="recommendations"'): html.index('id="memory"')]
    assert "GPU under-utilised (60% busy while training)" in recs
    summary = html[html.index('id="summary"'): html.index('id="recommendations"')]
    assert "135.0 / 140.4 GiB" in summary


def test_an_older_document_without_zones_keeps_its_ram_zones() -> None:
    timeline = {
        "start_time": 0.0,
        "memory": {"system_used_gb": {"x": [0, 600, 1200], "y": [50.0, 110.0, 118.0]},
                   "gpu_used_gb": {"x": [0, 600, 1200], "y": [10.0, 12.0, 12.0]}},
        "total_memory_gb": 120.0, "gpu_total_memory_gb": 80.0,
        "thresholds": {"warning_ratio": 0.85, "critical_ratio": 0.95},
    }
    drawn = zones_drawn(str(charts_memory.memory_timeline(timeline)))
    assert [(cls, res) for cls, res, _ in drawn] == [("warning", "host"), ("critical", "host")]


def test_an_empty_zone_list_draws_no_zones() -> None:
    """A CUDA OOM without GPU samples binds the GPU with nothing to zone: no RAM zones in its place."""
    timeline = {
        "memory": {"system_used_gb": {"x": [0, 60], "y": [100.0, 110.0]}},
        "total_memory_gb": 120.0,
        "thresholds": {"warning_ratio": 0.85, "critical_ratio": 0.95},
        "binding_resource": "gpu", "binding_reason": "CUDA out of memory", "zones": [],
    }
    figure = str(charts_memory.memory_timeline(timeline))
    assert zones_drawn(figure) == [] and "Zones are drawn for GPU memory" in figure
