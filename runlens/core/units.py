"""Units in one place: memory columns named ``_gb`` hold GiB (2**30 bytes), as nvidia-smi and top show.

Sizes printed by frameworks ("16.00 GiB", "512 MB", "3.2GB") are read with ``size_to_gib``: binary and
decimal spellings are both taken as binary, since PyTorch, nvidia-smi and most trainers mean GiB and MiB when
they print GB and MB.
"""

from __future__ import annotations

import re

GIB = float(1 << 30)

# Factors to GiB, keyed by the lower-cased unit.
SIZE_UNITS_GIB = {"b": 1 / GIB, "bytes": 1 / GIB, "kib": 1 / (1 << 20), "kb": 1 / (1 << 20),
                  "mib": 1 / 1024, "mb": 1 / 1024, "gib": 1.0, "gb": 1.0, "tib": 1024.0, "tb": 1024.0}
_SIZE = re.compile(r"^\s*([\d.]+)\s*([KMGT]i?B|B|bytes)\s*$", re.IGNORECASE)


def bytes_to_gib(n: float | int | None) -> float | None:
    """Bytes to GiB; None stays None so a missing reading is never mistaken for zero."""
    return None if n is None else float(n) / GIB


def gib_to_bytes(gb: float) -> int:
    return int(gb * GIB)


def unit_to_gib(value: float, unit: str) -> float:
    """``value`` in ``unit`` (``GiB``, ``MB``, ``B``...) as GiB; an unknown unit is taken as GiB."""
    return float(value) * SIZE_UNITS_GIB.get(unit.lower(), 1.0)


def size_to_gib(text: str) -> float | None:
    """``"16.00 GiB"`` -> 16.0, ``"512 MiB"`` -> 0.5; None when ``text`` is not a size."""
    m = _SIZE.match(text)
    return unit_to_gib(float(m.group(1)), m.group(2)) if m else None
