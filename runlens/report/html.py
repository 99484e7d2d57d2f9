"""The static HTML report: one self-contained file rendered from the analysis document, written atomically.

``context.build_context`` turns the document into a view model with every key present; the templates in the
top-level ``templates/`` folder only lay it out, through the filters of ``formatting``. Escaping is Jinja's
job: ``autoescape=True`` is forced (``select_autoescape`` keys off the file extension and silently stops
escaping for names such as ``report.html.j2``). The only ``Markup`` that reaches a template is the SVG of the
charts (``charts_memory``, ``charts_training``), which escape their own labels.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from runlens.core.resources import resource_dir
from runlens.report.context import build_context
from runlens.report.formatting import register_filters

__all__ = ["make_environment", "render_report", "write_report"]


def render_report(analysis: Mapping[str, Any]) -> str:
    """Render the analysis document to one self-contained HTML page.

    Args:
        analysis: the analysis document (runlens.analyze.contract.Analysis); missing or null parts are shown
            as "not recorded" rather than failing.

    Returns:
        The HTML text: inline CSS and SVG, no scripts, no external URLs.
    """
    template = make_environment().get_template("report.html")
    return template.render(**build_context(analysis))


def write_report(analysis: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render and write the report to ``path`` (parents created), atomically.

    The file is written beside its destination and renamed into place, so a reader (or a browser reloading the
    page) never sees half a report, and an earlier report survives a failed render.

    Returns:
        The path written, resolved.
    """
    html = render_report(analysis)
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(html)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


@functools.lru_cache(maxsize=1)
def make_environment() -> jinja2.Environment:
    """The Jinja environment: ``resource_dir("templates")``, escaping forced, undefined names fatal."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    register_filters(env)
    return env
