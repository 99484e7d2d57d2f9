"""The comparison of runs (runlens.report.compare) and ``runlens compare`` in the terminal."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from runlens.cli import cli
from runlens.report.compare import RunFacts, compare_runs, comparison_charts, format_comparison
from runlens.store import Store

from sample_jobs import make_job  # type: ignore[import-not-found]


def _run(job_id: str, config: Any, peak: float, loss: list[float], health: str, goodput: float) -> RunFacts:
    analysis = {"summary": {"health_score": health, "peak_memory_gb": peak, "steps_completed": len(loss),
                            "duration_minutes": 10.0, "goodput": {"ratio": goodput}},
                "metrics_timeline": {"start_time": 100.0,
                                     "training": {"loss": {"x": list(range(len(loss))), "y": loss}},
                                     "memory": {"system_used_gb": {"x": [100.0, 160.0], "y": [1.0, peak]}}}}
    return RunFacts({"job_id": job_id, "name": job_id, "status": "succeeded", "config": config}, analysis, 0.5)


def test_config_differences_sit_beside_the_results() -> None:
    a = _run("a", {"opt": {"lr": 0.1, "name": "sgd"}, "bs": 8, "tags": ["x"]}, 10.0, [3.0, 2.0, 1.0], "good", 0.8)
    b = _run("b", {"opt": {"lr": 0.2, "name": "sgd"}, "bs": 8, "seed": 1}, 12.0, [3.0, 2.5, None], "warning", 0.6)
    doc = compare_runs([a, b])
    diffs = {d["path"]: (d["values"], d["present"]) for d in doc["config"]["differences"]}
    assert diffs == {"opt.lr": ([0.1, 0.2], [True, True]), "tags[0]": (["x", None], [True, False]),
                     "seed": ([None, 1], [False, True])}
    assert doc["config"]["same"] == 2
    m = {x["key"]: x for x in doc["metrics"]}
    assert m["peak_memory_gb"]["values"] == [10.0, 12.0] and m["peak_memory_gb"]["changes"][1] == 0.2
    assert m["final_loss"]["values"] == [1.0, 2.5]          # the last recorded loss, not the gap after it
    assert m["health"]["values"] == ["good", "warning"] and m["health"]["differs"]
    assert not m["steps_completed"]["differs"]
    assert doc["curves"]["memory_gb"][1]["x"] == [0.0, 1.0]   # minutes since each run's own start
    json.dumps(doc, allow_nan=False)
    titles = [t for t, _ in comparison_charts(doc)]
    assert titles == ["Loss", "Step time", "Memory (RAM used)"]   # no GPU chart for CPU runs
    text = format_comparison(doc)
    assert "Peak memory *" in text and "(+20.0%)" in text and "opt.lr" in text and "(absent)" in text


def test_runlens_compare_prints_the_comparison_and_its_json(store: Store, db_url: str) -> None:
    a = make_job(store, config={"lr": 0.001, "batch_size": 4}, peak_gb=20.0)
    b = make_job(store, config={"lr": 0.01, "batch_size": 4}, peak_gb=28.0, n_steps=150)
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", a, b, "--db", db_url])
    assert result.exit_code == 0, result.output
    assert a in result.output and b in result.output and "lr" in result.output
    assert "config: 1 key differs" in result.output
    result = runner.invoke(cli, ["compare", a, b, "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [r["job_id"] for r in doc["runs"]] == [a, b]
    steps = {m["key"]: m["values"] for m in doc["metrics"]}["steps_completed"]
    assert steps == [200, 150]


def test_runlens_compare_needs_two_known_jobs(store: Store, db_url: str) -> None:
    a = make_job(store)
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", a, "--db", db_url])
    assert result.exit_code == 2 and "2 to 8 job ids" in result.output
    result = runner.invoke(cli, ["compare", a, "no-such-job", "--db", db_url])
    assert result.exit_code == 2 and "no-such-job" in result.output
