"""What a rule returns: a Finding, turned into a recommendation of the analysis document."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from runlens.analyze.contract import SEVERITY_ORDER


@dataclass
class Finding:
    """One diagnosis with the change that addresses it.

    ``impact`` is a sentence quantified from this run's measurements; ``impact_value``/``impact_unit`` carry
    the number behind it, in its own unit. ``expected_effect`` is the prediction the ranking reads
    (runlens.analyze.effects): the measured figure and the figure predicted for ``recommended_value``.
    ``config_key`` is a runlens concept
    ("num_workers", "batch_size", "learning_rate", ...) that the dialect turns into ``config_path``;
    rules that already know the exact path set ``config_path`` directly.
    """

    id: str
    severity: str
    title: str
    action: str
    impact: str
    category: str
    evidence: dict[str, Any] = field(default_factory=dict)
    impact_value: float | None = None
    impact_unit: str | None = None
    config_key: str | None = None
    config_path: str | None = None
    current_value: Any = None
    current_value_source: str = "unknown"
    recommended_value: Any = None
    memory_lever: bool = False      # competes for the one primary memory lever of the run
    primary: bool = False
    alternatives: list[str] = field(default_factory=list)
    confidence: float = 1.0
    expected_effect: dict[str, Any] | None = None
    config_value: Any = None        # the config snapshot's value, when the run measurably used another

    def sort_key(self) -> tuple[int, float, float]:
        """Severity, then the raw impact: only for findings of one rule, whose impacts share a unit (the
        analysis ranks by ``runlens.analyze.effects.rank_key``)."""
        value = self.impact_value if self.impact_value is not None and math.isfinite(self.impact_value) else 0.0
        return (SEVERITY_ORDER.get(self.severity, 3), -value, -self.confidence)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "severity": self.severity, "title": self.title, "action": self.action,
            "impact": self.impact, "impact_value": self.impact_value, "impact_unit": self.impact_unit,
            "config_path": self.config_path, "current_value": self.current_value,
            "current_value_source": self.current_value_source, "recommended_value": self.recommended_value,
            "expected_effect": self.expected_effect,
            "evidence": self.evidence, "primary": self.primary, "alternatives": list(self.alternatives),
            "category": self.category,
        } | ({"config_value": self.config_value} if self.config_value is not None else {})
