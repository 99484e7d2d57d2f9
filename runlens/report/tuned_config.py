"""A tuned copy of the user's config file: each recommended value written at its config path.

``apply_recommendations`` is the "apply recommended settings" of the design: it writes a copy of the user's YAML
or JSON config with each recommended value set, keeping comments and key order (ruamel.yaml's round-trip mode
for YAML; JSON keeps its key order), and never touches the input file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from runlens.core.configpath import HF_PREFIX, format_path, get_path, is_config_path, parse_path, set_path
from runlens.core.dialects import HUGGINGFACE, detect_dialect
from runlens.core.errors import ConfigError

__all__ = ["AppliedChange", "ApplyResult", "apply_recommendations"]


@dataclass
class AppliedChange:
    """What happened to one recommendation: ``applied`` with the file path used, or skipped with the reason."""

    rec_id: str
    config_path: str | None
    file_path: str | None
    old_value: Any
    new_value: Any
    applied: bool
    reason: str = ""


@dataclass
class ApplyResult:
    output: Path
    changes: list[AppliedChange] = field(default_factory=list)

    @property
    def applied(self) -> list[AppliedChange]:
        return [c for c in self.changes if c.applied]

    @property
    def skipped(self) -> list[AppliedChange]:
        return [c for c in self.changes if not c.applied]


def _file_path_for(path: str, doc: Mapping[str, Any]) -> tuple[list[str | int] | None, str]:
    """Where a recommendation's ``config_path`` lives in this file, or (None, why not)."""
    if not is_config_path(path):
        kind = "an environment variable" if str(path).startswith("env:") else "not a config key"
        return None, f"{path} is {kind}; set it where the job is launched"
    try:
        parts = parse_path(path)
    except ValueError as exc:
        return None, str(exc)
    if not parts or not isinstance(parts[0], str):
        return None, f"{path} is not a key path"
    if parts[0] == HF_PREFIX and HF_PREFIX not in doc:
        # TrainingArguments fields are flat in an HF args file (the `--config args.yaml` of HfArgumentParser).
        rest = parts[1:]
        if rest and (detect_dialect(doc) == HUGGINGFACE or (isinstance(rest[0], str) and rest[0] in doc)):
            return rest, ""
        return None, f"{path} is a Hugging Face TrainingArguments field and this file is not a TrainingArguments config"
    if parts[0] not in doc:
        return None, f"{parts[0]!r} is not a top-level key of this file (a path for another kind of config?)"
    return parts, ""


def _load(path: Path) -> tuple[Any, str, Any]:
    """(document, format, yaml handler) with comments kept for YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), exc.strerror or str(exc)) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text), "json", None
        except ValueError as exc:
            raise ConfigError(str(path), f"invalid JSON: {exc}") from None
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    try:
        doc = yaml.load(text)
    except YAMLError as exc:
        raise ConfigError(str(path), f"invalid YAML: {str(exc).splitlines()[0]}") from None
    _match_indent(yaml, text)
    return doc, "yaml", yaml


def _match_indent(yaml: Any, text: str) -> None:
    """Keep the file's own indentation: ruamel defaults to 2/2/0, which would re-indent a 4-space file."""
    mapping = 2
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if indent and stripped and not stripped.startswith(("#", "-")):
            mapping = indent
            break
    seq_lines = [ln for ln in text.splitlines() if ln.lstrip(" ").startswith("- ")]
    offset = 0
    if seq_lines:
        # "key:\n  - item" has the dash indented under its parent (offset = mapping indent).
        for i, ln in enumerate(text.splitlines()):
            if ln.lstrip(" ").startswith("- "):
                prev = next((p for p in reversed(text.splitlines()[:i]) if p.strip() and not p.strip().startswith("#")),
                            "")
                if prev.rstrip().endswith(":"):
                    offset = (len(ln) - len(ln.lstrip(" "))) - (len(prev) - len(prev.lstrip(" ")))
                    break
    offset = max(0, offset)
    yaml.indent(mapping=mapping, sequence=mapping + offset if offset else mapping, offset=offset)


def apply_recommendations(config_file: str | os.PathLike[str], recommendations: Iterable[Mapping[str, Any]],
                          output: str | os.PathLike[str]) -> ApplyResult:
    """Write a copy of ``config_file`` with each recommendation's ``recommended_value`` at its ``config_path``.

    Recommendations without a value, with a non-config path (``env:``), or with a path that belongs to another
    kind of config are skipped and reported; the first recommendation for a path wins (they arrive ranked).

    Raises:
        ConfigError: the input cannot be read or parsed, the output would overwrite the input, or the output
            cannot be written.
    """
    src = Path(config_file).expanduser()
    dst = Path(output).expanduser()
    if dst.resolve() == src.resolve():
        raise ConfigError(str(src), "the output must be a new file; runlens never modifies the input config")
    doc, kind, yaml = _load(src)
    if not isinstance(doc, MutableMapping):
        raise ConfigError(str(src), "the top level is not a mapping of keys")
    result = ApplyResult(dst.resolve())
    seen: set[str] = set()
    for rec in recommendations:
        rid = str(rec.get("id") or "")
        path = rec.get("config_path")
        value = rec.get("recommended_value")
        if not path:
            continue   # advice without a setting (a log finding, a stall): nothing to apply
        if value is None:
            result.changes.append(AppliedChange(rid, path, None, None, None, False, "no concrete recommended value"))
            continue
        parts, why = _file_path_for(str(path), doc)
        if parts is None:
            result.changes.append(AppliedChange(rid, path, None, None, value, False, why))
            continue
        shown = format_path(parts)
        if shown in seen:
            result.changes.append(AppliedChange(rid, path, shown, None, value, False,
                                                "a higher-ranked recommendation already sets this key"))
            continue
        found, old = get_path(doc, parts)
        try:
            set_path(doc, parts, value)
        except KeyError as exc:
            result.changes.append(AppliedChange(rid, path, shown, old if found else None, value, False,
                                                str(exc.args[0] if exc.args else exc)))
            continue
        seen.add(shown)
        result.changes.append(AppliedChange(rid, path, shown, old if found else None, value, True,
                                            "" if found else "key added"))
    _write(dst, doc, kind, yaml)
    return result


def _write(dst: Path, doc: Any, kind: str, yaml: Any) -> None:
    if kind == "json":
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    else:
        buf = io.StringIO()
        yaml.dump(doc, buf)
        text = buf.getvalue()
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, dst)
    except OSError as exc:
        raise ConfigError(str(dst), exc.strerror or str(exc)) from None
