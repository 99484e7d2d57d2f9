"""Config paths as recommendations name them, and editing a user's config file at those paths.

A path is dotted keys with list indexes: ``config.process[0].datasets[0].num_workers``,
``TrainingArguments.dataloader_num_workers``, ``trainer.accumulate_grad_batches``. A key that itself holds a
dot or a bracket is quoted: ``model["vae.path"]``. Paths that are not config keys carry a prefix (``env:NAME``,
``shell:CMD``; see runlens.analyze.configpaths) and are never applied to a file.

``apply_recommendations`` is the "apply recommended settings" of the design: it writes a copy of the user's YAML
or JSON config with each recommended value set, keeping comments and key order (ruamel.yaml's round-trip mode
for YAML; JSON keeps its key order), and never touches the input file.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import MutableMapping, MutableSequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from runlens.core.errors import ConfigError

__all__ = ["NON_CONFIG_PREFIXES", "AppliedChange", "ApplyResult", "apply_recommendations", "format_path",
           "get_path", "is_config_path", "parse_path", "set_path"]

PathLike = str | Sequence[str | int]

NON_CONFIG_PREFIXES = ("env:", "shell:")
HF_PREFIX = "TrainingArguments"

_TOKEN = re.compile(r"""
    \[\s*(?P<index>-?\d+)\s*\]                      # [0]
  | \[\s*(?P<q>["'])(?P<quoted>(?:\\.|(?!(?P=q)).)*)(?P=q)\s*\]   # ["a.b"]
  | (?P<key>[^.\[\]]+)                              # plain key
  | (?P<dot>\.)
""", re.VERBOSE)


def parse_path(path: PathLike) -> list[str | int]:
    """``"a.b[0].c"`` -> ``["a", "b", 0, "c"]``; a list is returned as a list (already parsed).

    Raises:
        ValueError: an empty path or one that does not parse (an unclosed bracket, ``a..b``).
    """
    if not isinstance(path, str):
        return list(path)
    text = path.strip()
    if not text:
        raise ValueError("empty config path")
    parts: list[str | int] = []
    pos = 0
    expect_key = True   # after a dot (or at the start) a key must follow
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"cannot parse config path {path!r} at position {pos}")
        pos = m.end()
        if m.group("dot"):
            if expect_key:
                raise ValueError(f"empty key in config path {path!r}")
            expect_key = True
            continue
        if m.group("index") is not None:
            if expect_key and parts:
                raise ValueError(f"an index must follow a key in config path {path!r}")
            parts.append(int(m.group("index")))
        elif m.group("quoted") is not None:
            parts.append(re.sub(r"\\(.)", r"\1", m.group("quoted")))
        else:
            if not expect_key:
                raise ValueError(f"missing dot before {m.group('key')!r} in config path {path!r}")
            parts.append(m.group("key").strip())
        expect_key = False
    if expect_key:
        raise ValueError(f"config path {path!r} ends with a dot")
    return parts


def format_path(parts: Iterable[str | int]) -> str:
    """The inverse of ``parse_path``."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.search(r"[.\[\]\"']", p):
            out += "[" + json.dumps(p) + "]"
        else:
            out += ("." if out else "") + p
    return out


def is_config_path(path: str | None) -> bool:
    """False for None and for settings that are not config keys (``env:...``, ``shell:...``)."""
    return bool(path) and not str(path).startswith(NON_CONFIG_PREFIXES)


def get_path(cfg: Any, path: PathLike) -> tuple[bool, Any]:
    """Read ``path`` from nested dicts/lists; returns ``(found, value)`` and never raises on a missing key."""
    node = cfg
    for part in parse_path(path):
        if isinstance(part, int):
            if isinstance(node, Sequence) and not isinstance(node, (str, bytes)) and -len(node) <= part < len(node):
                node = node[part]
                continue
            return False, None
        if isinstance(node, Mapping) and part in node:
            node = node[part]
            continue
        return False, None
    return True, node


def set_path(cfg: Any, path: PathLike, value: Any) -> None:
    """Set ``path`` in ``cfg`` to ``value``, creating missing mappings (and appending a list item at index ==
    len) along the way.

    Raises:
        KeyError: the path runs through a scalar, or indexes past the end of a list.
    """
    parts = parse_path(path)
    node = cfg
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        nxt = None if last else parts[i + 1]
        if isinstance(part, int):
            if not isinstance(node, MutableSequence):
                raise KeyError(f"{format_path(parts[:i]) or 'the config'} is not a list")
            if part == len(node):
                node.append(value if last else _container_for(nxt, node))
            elif not -len(node) <= part < len(node):
                raise KeyError(f"{format_path(parts[:i + 1])} is past the end of a list of {len(node)}")
            if last:
                node[part] = value
                return
            if not isinstance(node[part], (MutableMapping, MutableSequence)):
                raise KeyError(f"{format_path(parts[:i + 1])} holds a value, not a section")
            node = node[part]
        else:
            if not isinstance(node, MutableMapping):
                raise KeyError(f"{format_path(parts[:i]) or 'the config'} is not a mapping")
            if last:
                node[part] = value
                return
            if part not in node or node[part] is None:
                node[part] = _container_for(nxt, node)
            elif not isinstance(node[part], (MutableMapping, MutableSequence)):
                raise KeyError(f"{format_path(parts[:i + 1])} holds a value, not a section")
            node = node[part]


def _container_for(next_part: Any, like: Any) -> Any:
    """A new empty section of the same family as the surrounding document (ruamel's commented types for YAML)."""
    if isinstance(next_part, int):
        try:
            from ruamel.yaml.comments import CommentedMap, CommentedSeq

            if isinstance(like, (CommentedMap, CommentedSeq)):
                return CommentedSeq()
        except ImportError:  # pragma: no cover - ruamel is a dependency
            pass
        return []
    try:
        from ruamel.yaml.comments import CommentedMap, CommentedSeq

        if isinstance(like, (CommentedMap, CommentedSeq)):
            return CommentedMap()
    except ImportError:  # pragma: no cover
        pass
    return {}


# -- applying recommendations to a file ------------------------------------------------------------------


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
        from runlens.core.dialects import HUGGINGFACE, detect_dialect

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
