"""The rule registry: each rule is a function ``JobData -> Iterable[Finding]`` registered by a decorator.

Adding a rule touches one file (its family's module under ``runlens/analyze/rules/``). A rule that raises
is reported as an internal note and never stops the analysis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable

from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData

log = logging.getLogger(__name__)

RuleFn = Callable[[JobData], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    id: str
    family: str
    fn: RuleFn


_RULES: dict[str, Rule] = {}


def rule(rule_id: str, family: str) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as rule ``rule_id`` of ``family`` (memory, throughput, training, logs, hangs)."""

    def register(fn: RuleFn) -> RuleFn:
        if rule_id in _RULES and _RULES[rule_id].fn is not fn:
            raise ValueError(f"duplicate rule id {rule_id}")
        _RULES[rule_id] = Rule(rule_id, family, fn)
        return fn

    return register


def all_rules() -> list[Rule]:
    _load_builtin_rules()
    return list(_RULES.values())


def _load_builtin_rules() -> None:
    import importlib
    import pkgutil

    import runlens.analyze.rules as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")


def run_rules(job: JobData, rules: Iterable[Rule] | None = None) -> tuple[list[Finding], list[str]]:
    """Run every rule; returns the findings and notes about rules that failed."""
    findings: list[Finding] = []
    notes: list[str] = []
    for r in rules if rules is not None else all_rules():
        try:
            findings.extend(r.fn(job))
        except Exception as exc:  # one broken rule must not hide the others' findings
            log.warning("rule %s failed: %s", r.id, exc, exc_info=True)
            notes.append(f"rule {r.id} failed: {type(exc).__name__}: {exc}")
    return findings, notes
