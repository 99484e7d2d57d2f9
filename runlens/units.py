"""Unit conversion in one place: memory columns named ``_gb`` hold GiB (2**30 bytes), as nvidia-smi and top show."""

from __future__ import annotations

GIB = float(1 << 30)


def bytes_to_gib(n: float | int | None) -> float | None:
    """Bytes to GiB; None stays None so a missing reading is never mistaken for zero."""
    return None if n is None else float(n) / GIB


def gib_to_bytes(gb: float) -> int:
    return int(gb * GIB)
