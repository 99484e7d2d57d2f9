"""The doctor's verdicts: one ``CheckResult`` per check (PASS, WARN, FAIL or SKIP, why, and the fix), and the
table ``runlens doctor`` prints them as."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CHECKS", "FAIL", "PASS", "SKIP", "WARN", "CheckResult", "format_counts", "format_table"]

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
CHECKS = ("threads", "shm", "tmpdir", "nofile", "disk", "store", "pyspy", "torch", "dataloader", "cuda",
          "nccl")


@dataclass
class CheckResult:
    """One row of the doctor's table: what was checked, the verdict, why, and what to do about it."""

    name: str
    status: str
    detail: str
    fix: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_table(results: Sequence[CheckResult]) -> str:
    """CHECK / STATUS / DETAIL columns, with the fix on its own line under each row that is not a PASS."""
    width = max([len("CHECK")] + [len(r.name) for r in results])
    lines = [f"{'CHECK'.ljust(width)}  STATUS  DETAIL"]
    for r in results:
        lines.append(f"{r.name.ljust(width)}  {r.status.ljust(6)}  {r.detail}")
        if r.fix and r.status != PASS:
            lines.append(f"{''.ljust(width)}          fix: {r.fix}")
    return "\n".join(lines)


def format_counts(results: Sequence[CheckResult]) -> str:
    """``9 PASS, 1 WARN, 1 SKIP``: the line under the table."""
    counts = {s: sum(r.status == s for r in results) for s in (PASS, WARN, FAIL, SKIP)}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)
