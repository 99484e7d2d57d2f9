"""The package's shape: imports run one way along the flow, and every module stays readable in one sitting.

    core  <-  store  <-  collect, analyze  <-  report, watch, doctor, integrations  <-  demo, ui  <-  cli

A module may import its own package and any package of a lower layer; packages of the same layer do not import
each other (the collectors and the analyzer meet only in the store).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "runlens"
LAYERS = {
    "_version": 0, "core": 0,
    "store": 1,
    "collect": 2, "analyze": 2,
    "report": 3, "watch": 3, "doctor": 3, "integrations": 3, "": 3,   # "": runlens/__init__.py, the public surface
    "demo": 4, "ui": 4,
    "cli": 5, "__main__": 6,
}
MAX_LINES = 600


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return "" if rel == ("__init__.py",) else rel[0].removesuffix(".py")


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every runlens import in ``path``, relative ones resolved."""
    return _imports_of(path.read_text(), ["runlens", *path.relative_to(PACKAGE).with_suffix("").parts])


def _imports_of(source: str, here: list[str]) -> list[tuple[int, str]]:
    """The runlens imports in ``source``, a module whose dotted name is ``here`` (``__init__`` included)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "runlens":   # `from runlens import x`: x may be a subpackage
                out.extend((node.lineno, f"runlens.{a.name}") for a in node.names)
            elif name.startswith("runlens."):
                out.append((node.lineno, name))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "runlens")
    return out


def _target_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""


def test_every_package_has_a_layer() -> None:
    unknown = {_package_of(p) for p in _modules()} - set(LAYERS)
    assert not unknown, f"packages without a layer in LAYERS: {sorted(unknown)}"


def test_imports_run_one_way() -> None:
    backwards = []
    for path in _modules():
        own = _package_of(path)
        for line, module in _imported(path):
            target = _target_package(module)
            if target == own:
                continue
            if LAYERS[target] >= LAYERS[own]:
                backwards.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} "
                                 f"({own or 'runlens'} layer {LAYERS[own]} -> {target or 'runlens'} "
                                 f"layer {LAYERS[target]})")
    assert not backwards, "imports against the flow:\n" + "\n".join(backwards)


def test_core_imports_nothing_else_of_runlens() -> None:
    for path in PACKAGE.joinpath("core").rglob("*.py"):
        for line, module in _imported(path):
            assert _target_package(module) in ("core", "_version"), f"{path.name}:{line} imports {module}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_readable_in_one_sitting(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it along its jobs"


def test_the_checker_resolves_every_import_form() -> None:
    """Absolute, relative and `from runlens import x` imports all name their target package."""
    source = "from ..cli import main\nfrom . import writer\nimport runlens.analyze.load\nfrom runlens import report\n"
    found = [_target_package(m) for _, m in _imports_of(source, ["runlens", "store", "engine"])]
    assert found == ["cli", "store", "analyze", "report"]


def test_no_module_cites_a_document_that_is_not_in_the_repository() -> None:
    root = PACKAGE.parent
    bad = []
    for path in _modules():
        text = path.read_text()
        for token in ("research/", "resilience.md", "analysis.md", "trackers.md", "aesthetics.md", "§",
                      "shared/DESIGN", "shared/STYLE"):
            if token in text and not (root / token).exists():
                bad.append(f"{path.relative_to(root)}: {token}")
    assert not bad, "citations of documents a reader of this repository does not have:\n" + "\n".join(bad)
