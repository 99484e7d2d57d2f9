"""The log parser scored on the corpus of real logs in ``tests/data/logs``: per category, how many failures it
puts in the right category, the wrong one, or misses, and how many errors it reports on healthy logs.

Each fixture is named ``<expected category>_<n>.log`` (``clean_<n>.log``: a healthy run, decoys included) and
cited in ``SOURCES.md``. A failure counts as *right* when its primary finding (the error with the highest
precedence, ``runlens.analyze.logcategories.PRECEDENCE``; a warning only for the few failures that are warnings)
has the expected category; *wrong* when the primary finding has another category; *missed* when there is no
finding at the expected level. Run this module as a script to print the table.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from typing import Any

import pandas as pd
import pytest

from runlens.analyze import logcategories
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.logfindings import LogFinding
from runlens.analyze.logparse import parse_log
from runlens.analyze.registry import all_rules, run_rules

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"
_NAME = re.compile(r"^(?P<category>[a-z0-9_]+?)_(?P<n>\d+)\.log$")

# Failures whose expected primary finding is a warning: the run coped (apex skipped overflowing steps, a
# trainer skipped the batches that ran out of memory).
WARNING_FIXTURES = {"fp16_overflow_1.log", "cuda_oom_6.log"}


def expected_of(name: str) -> tuple[str, str]:
    """(category, level) a fixture must yield, from its name; ("clean", "") for a healthy log."""
    m = _NAME.match(name)
    assert m, f"fixture name {name!r} is not <category>_<n>.log"
    category = m.group("category")
    if category == "clean":
        return "clean", ""
    return category, "warning" if name in WARNING_FIXTURES else "error"


def primary(findings: list[LogFinding], level: str) -> LogFinding | None:
    """The finding a reader should see first at ``level``: the highest-precedence category, then the earliest."""
    at_level = [f for f in findings if f.level == level]
    if not at_level:
        return None
    return min(at_level, key=lambda f: (logcategories.PRECEDENCE.get(f.category, 99), f.line_number))


@dataclass
class Score:
    """The corpus score: per expected category (right, wrong, missed), what the wrong ones became, and the errors
    reported on healthy logs."""

    by_category: dict[str, Counter[str]] = field(default_factory=dict)
    mistakes: dict[str, str] = field(default_factory=dict)  # fixture -> category it got (or "missed")
    clean_logs: int = 0
    clean_logs_with_errors: int = 0
    false_errors: int = 0

    def total(self, outcome: str) -> int:
        return sum(c[outcome] for c in self.by_category.values())

    def table(self) -> str:
        rows = [f"{'category':<24} right wrong missed"]
        for cat in sorted(self.by_category):
            c = self.by_category[cat]
            rows.append(f"{cat:<24} {c['right']:>5} {c['wrong']:>5} {c['missed']:>6}")
        rows.append(
            f"{'all failures':<24} {self.total('right'):>5} {self.total('wrong'):>5} {self.total('missed'):>6}"
        )
        rows.append(
            f"clean logs: {self.clean_logs}, with an error: {self.clean_logs_with_errors}, "
            f"false errors: {self.false_errors}"
        )
        rows += [f"  {name}: {got}" for name, got in sorted(self.mistakes.items())]
        return "\n".join(rows)


def score_corpus(logs: Path = LOGS) -> Score:
    """Parse every fixture and score it (see the module docstring)."""
    score = Score()
    for path in sorted(logs.glob("*.log")):
        category, level = expected_of(path.name)
        findings = parse_log(path)
        if category == "clean":
            errors = [f for f in findings if f.level == "error"]
            score.clean_logs += 1
            score.clean_logs_with_errors += bool(errors)
            score.false_errors += len(errors)
            if errors:
                score.mistakes[path.name] = ", ".join(sorted({f.category for f in errors}))
            continue
        counts = score.by_category.setdefault(category, Counter())
        top = primary(findings, level)
        if top is None:
            counts["missed"] += 1
            score.mistakes[path.name] = "missed"
        elif top.category == category:
            counts["right"] += 1
        else:
            counts["wrong"] += 1
            score.mistakes[path.name] = top.category
    return score


def test_corpus_score_floor() -> None:
    """Every failure in the corpus gets its category as the primary finding, and no healthy log gets an error."""
    score = score_corpus()
    assert score.total("right") >= 80, score.table()
    assert score.mistakes == {}, score.table()
    assert (score.clean_logs_with_errors, score.false_errors) == (0, 0), score.table()


def test_every_category_of_the_table_has_real_logs() -> None:
    """Each category the parser declares is exercised by at least one real log."""
    have = {expected_of(p.name)[0] for p in LOGS.glob("*.log")}
    declared = {c.id for c in logcategories.CATEGORIES}
    assert declared - have == set()


# -- what the log rules make of real logs --------------------------------------------------------------------


def _log_rules(name: str, **job: Any) -> dict[str, Finding]:
    """The logs family's findings for one fixture, in a failed job with no steps or samples."""
    row = {"job_id": "j1", "name": "j", "status": "failed", "started_at": 0.0, "ended_at": 60.0, "exit_code": 1,
           "environment": {"cpu_count": 8, "env": {}}, **job}
    data = JobData(job=row, steps=pd.DataFrame(), samples=pd.DataFrame(), events=pd.DataFrame(),
                   log_findings=parse_log(LOGS / name))
    out, notes = run_rules(data, [r for r in all_rules() if r.family == "logs"])
    assert notes == []
    return {f.id: f for f in out}


@pytest.mark.parametrize(
    "name, rule, severity, says",
    [
        ("nan_loss_3.log", "logs.nan_loss", "critical", "diverged"),
        ("nan_loss_5.log", "logs.nan_loss", "critical", "diverged"),
        ("segfault_5.log", "logs.segfault", "critical", "DataLoader worker"),
        ("address_in_use_1.log", "logs.address_in_use", "critical", "Port 47531"),
        ("hub_access_1.log", "logs.hub_access", "critical", "repo meta-llama/Llama-2-7b is gated"),
        ("scheduler_kill_1.log", "logs.scheduler_kill", "critical", "time limit"),
        ("scheduler_kill_2.log", "logs.scheduler_kill", "critical", "preempted"),
        ("scheduler_kill_4.log", "logs.scheduler_kill", "warning", "cancelled"),
        ("sighup_1.log", "logs.sighup", "critical", "tmux"),
        ("terminated_1.log", "logs.terminated", "warning", "SIGTERM"),
    ],
)
def test_log_rules_name_the_failure_and_its_fix(name: str, rule: str, severity: str, says: str) -> None:
    """Real logs through the parser and the log rules: the failure, a severity that matches what it did to the
    run (a cancellation or SIGTERM from outside is not a failure of the run), and an action about it."""
    f = _log_rules(name)[rule]
    assert f.severity == severity
    assert says in f"{f.title} {f.action}", (f.title, f.action)


def test_nan_loss_in_progress_lines_is_a_training_failure() -> None:
    """A NaN loss only the log shows is reported as a diverged run, ranked with the run's failures; a NaN
    gradient norm beside a finite loss (fp16 loss scaling) is information."""
    f = _log_rules("nan_loss_4.log", dialect="generic")["logs.nan_loss"]
    assert (f.category, f.expected_effect["metric"], f.expected_effect["current"]) == ("training", "failure", True)
    assert _log_rules("clean_5.log")["logs.nan_loss"].severity == "info"


if __name__ == "__main__":
    print(score_corpus().table())
