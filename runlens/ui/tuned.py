""""Apply recommended settings": the tuned config a job's recommendations make, as a download.

It is what ``runlens recommend JOB --apply CONFIG -o OUT`` writes (``runlens.report.tuned_config``), applied to
the job's config file when it was recorded with one and is still readable here, else to the job's config
snapshot written out as YAML. The file can hold what the snapshot never did (a token the run read from its
config), so secret-named keys and secret-looking values are redacted in what is served: the user puts theirs
back, as the comment at the top of a YAML download says.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runlens.core.errors import ConfigError
from runlens.core.redact import REDACTED, is_secret_key, redact, redact_text
from runlens.report.tuned_config import apply_recommendations

__all__ = ["TunedConfig", "tuned_config"]

_NOTE = ("# Made by runlens from the recommendations of job {job_id}.\n"
         "# Secrets are shown as {redacted}: put yours back before you use this file.\n")


@dataclass
class TunedConfig:
    """The download: its file name, media type and text, and how many changes were applied and skipped."""

    filename: str
    media_type: str
    text: str
    applied: int
    skipped: int
    source: str     # "file": the job's config file; "snapshot": the stored snapshot


def tuned_config(job: Mapping[str, Any], recommendations: Sequence[Mapping[str, Any]]) -> TunedConfig | None:
    """The tuned config of ``job``, or None when the job recorded no config at all.

    Raises:
        ConfigError: the snapshot cannot be written out or the recommendations cannot be applied to it.
    """
    job_id = str(job.get("job_id") or "job")
    source_path = _readable(job.get("config_path"))
    config = job.get("config")
    if source_path is None and not isinstance(config, Mapping):
        return None
    with tempfile.TemporaryDirectory(prefix="runlens-ui-") as tmp:
        if source_path is not None:
            src, source = source_path, "file"
        else:
            src, source = Path(tmp) / "config.yaml", "snapshot"
            src.write_text(yaml.safe_dump(dict(config or {}), sort_keys=False, allow_unicode=True), encoding="utf-8")
        suffix = ".json" if src.suffix.lower() == ".json" else ".yaml"
        out = Path(tmp) / f"tuned{suffix}"
        try:
            result = apply_recommendations(src, recommendations, out)
        except ConfigError:
            if source != "file" or not isinstance(config, Mapping):
                raise
            return tuned_config({**job, "config_path": None}, recommendations)   # the file changed: the snapshot
        text = out.read_text(encoding="utf-8")
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in job_id)
    if suffix == ".json":
        text = json.dumps(redact(json.loads(text)), indent=2, ensure_ascii=False) + "\n"
        media = "application/json"
    else:
        text = _NOTE.format(job_id=job_id, redacted=REDACTED) + _redact_yaml(text)
        media = "application/yaml"
    return TunedConfig(f"{stem}-tuned{suffix}", media, text, len(result.applied), len(result.skipped), source)


def _readable(path: Any) -> Path | None:
    if not path:
        return None
    p = Path(str(path)).expanduser()
    try:
        return p if p.is_file() and p.suffix.lower() in (".yaml", ".yml", ".json") else None
    except OSError:
        return None


def _redact_yaml(text: str) -> str:
    """The YAML with secret-named keys' values and secret-looking strings replaced, comments and order kept."""
    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    doc = rt.load(text)
    if not _redact_in_place(doc):
        return text   # nothing secret: the file exactly as apply_recommendations wrote it
    buf = io.StringIO()
    rt.dump(doc, buf)
    return buf.getvalue()


def _redact_in_place(node: Any) -> bool:
    """Redact ``node`` where it stands; True when anything was replaced."""
    changed = False
    if isinstance(node, MutableMapping):
        for key in list(node):
            value = node[key]
            if is_secret_key(key) and value not in (None, "", REDACTED):
                node[key] = REDACTED
                changed = True
            elif isinstance(value, str):
                hidden = redact_text(value)
                if hidden != value:
                    node[key], changed = hidden, True
            else:
                changed = _redact_in_place(value) or changed
    elif isinstance(node, MutableSequence):
        for i, value in enumerate(node):
            if isinstance(value, str):
                hidden = redact_text(value)
                if hidden != value:
                    node[i], changed = hidden, True
            else:
                changed = _redact_in_place(value) or changed
    return changed
