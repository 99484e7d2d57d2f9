"""Finding the top-level ``migrations/`` and ``templates/`` folders, packaged or in a checkout.

The wheel carries them as ``runlens/_migrations`` and ``runlens/_templates`` (hatchling force-include); an
editable install or a plain checkout has them beside the package. The packaged copy wins.
"""

from __future__ import annotations

from pathlib import Path

from runlens.core.errors import BrokenInstall

_PACKAGE_DIR = Path(__file__).resolve().parent.parent   # runlens/


def resource_dir(name: str) -> Path:
    """Return the folder for ``name`` ("migrations" or "templates").

    Raises:
        BrokenInstall: neither copy exists.
    """
    for candidate in (_PACKAGE_DIR / f"_{name}", _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise BrokenInstall(name, str(_PACKAGE_DIR))
