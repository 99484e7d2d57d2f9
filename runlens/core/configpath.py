"""Config paths as recommendations name them: parsing, printing, reading and setting a value at one.

A path is dotted keys with list indexes: ``config.process[0].datasets[0].num_workers``,
``TrainingArguments.dataloader_num_workers``, ``trainer.accumulate_grad_batches``. A key that itself holds a
dot or a bracket is quoted: ``model["vae.path"]``. Paths that are not config keys carry a prefix (``env:NAME``,
``shell:CMD``; see runlens.analyze.configpaths) and are never applied to a file.

The analyzer reads the job's config snapshot with these; ``runlens.report.tuned_config`` writes a tuned copy of
the user's file with them.
"""

from __future__ import annotations

import json
import re
from collections.abc import MutableMapping, MutableSequence
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["HF_PREFIX", "NON_CONFIG_PREFIXES", "PathLike", "format_path", "get_path", "is_config_path",
           "parse_path", "set_path"]

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
