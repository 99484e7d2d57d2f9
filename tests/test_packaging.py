"""The wheel carries migrations/ and templates/, and an installed runlens finds them (not the checkout's)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from runlens.cli import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("runlens-*.whl")
    return path


def test_wheel_lists_migrations_templates_and_typing_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "runlens/_migrations/env.py" in names
    assert "runlens/_migrations/versions/0001_initial.py" in names
    assert "runlens/_migrations/versions/0002_gpus_costs_heartbeats.py" in names
    assert "runlens/_templates/report.html" in names and "runlens/_templates/base.html" in names
    assert "runlens/py.typed" in names and "runlens/__main__.py" in names
    assert "runlens/demo/train.py" in names
    assert not any(n.startswith(("tests/", "migrations/", "templates/")) for n in names)


def test_installed_wheel_migrates_and_renders_from_its_own_copies(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import runlens.core.resources as r, runlens.report.html as h\n"
        "from runlens.store import open_store\n"
        "print(r.resource_dir('migrations')); print(r.resource_dir('templates'))\n"
        "s = open_store('db.sqlite'); j = s.create_job(name='from-wheel')\n"
        "print(len(h.render_report({'job': {'job_id': j, 'name': 'from-wheel'}})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    migrations, templates, size = out.stdout.split()
    assert migrations == str(site / "runlens" / "_migrations")
    assert templates == str(site / "runlens" / "_templates")
    assert int(size) > 1000


def _commands(group, prefix=()):  # type: ignore[no-untyped-def]
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", sorted(_commands(cli)), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) >= 4
