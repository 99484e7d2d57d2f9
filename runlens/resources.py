"""Finding the top-level ``migrations/`` and ``templates/`` folders, packaged or in a checkout.

The wheel carries them as ``runlens/_migrations`` and ``runlens/_templates`` (hatchling force-include); an
editable install or a plain checkout has them beside the package. The packaged copy wins.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Return the folder for ``name`` ("migrations" or "templates")."""
    for candidate in (_PACKAGE_DIR / f"_{name}", _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"runlens resource folder {name!r} not found beside {_PACKAGE_DIR}")
