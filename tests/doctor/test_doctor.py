"""`runlens doctor` on this machine, and with a tiny /dev/shm, a long TMPDIR or a broken store simulated."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from runlens.cli import cli
from runlens.doctor.judges import judge_nofile
from runlens.doctor.results import CHECKS, FAIL, PASS, SKIP, WARN
from runlens.doctor.runner import run_doctor

pytestmark = pytest.mark.timeout(120)

MB = 1 << 20


def fake_statvfs(total: int, free: int | None = None) -> Any:
    """A statvfs stand-in: a mount of ``total`` bytes with ``free`` available."""
    free = total if free is None else free

    def statvfs(path: str) -> SimpleNamespace:
        return SimpleNamespace(f_frsize=4096, f_blocks=total // 4096, f_bavail=free // 4096)

    return statvfs


def probes_left(since: float) -> list[int]:
    """Doctor probes (and their DataLoader workers, orphaned or not) started after ``since`` and still alive."""
    left = []
    for p in psutil.process_iter(["cmdline", "create_time", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if ("runlens.doctor.probes --probe" in cmd and p.info["create_time"] >= since - 1
                and p.info["status"] != psutil.STATUS_ZOMBIE):
            left.append(p.pid)
    return left


def by_name(results: list[Any]) -> dict[str, Any]:
    return {r.name: r for r in results}


@pytest.mark.slow
@pytest.mark.needs_torch
def test_every_check_runs_here_within_its_timeout(tmp_path: Path) -> None:
    """All checks produce a verdict on this machine, each in a child under the timeout."""
    t0, started = time.monotonic(), time.time()
    results = run_doctor(db=str(tmp_path / "runlens.db"), timeout=60, workers=2)
    assert time.monotonic() - t0 < 70
    assert [r.name for r in results] == list(CHECKS)
    for r in results:
        assert r.status in (PASS, WARN, FAIL, SKIP), r
        assert r.detail, r
        assert r.seconds is not None and r.seconds < 65, r
        assert r.status == PASS or r.fix or r.status == SKIP, r
    got = by_name(results)
    assert got["torch"].status == PASS and "imported in" in got["torch"].detail
    assert got["dataloader"].status == PASS, got["dataloader"]
    assert got["store"].status == PASS
    assert "no store yet" in got["store"].detail           # doctor does not create the store
    assert not (tmp_path / "runlens.db").exists()
    assert probes_left(started) == []                        # no probe left behind


def test_cli_table_and_exit_code(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["doctor", "--db", str(tmp_path / "r.db"), "--check", "threads",
                                      "--check", "nofile", "--check", "store", "--workers", "0"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert any(ln.startswith("store ") and " PASS " in ln for ln in lines)
    assert "PASS" in lines[-1]


def test_json_output_parses(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["doctor", "--json", "--db", str(tmp_path / "r.db"), "--check", "nccl",
                                      "--check", "tmpdir"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["name"] for d in data] == ["tmpdir", "nccl"]
    assert set(data[0]) == {"name", "status", "detail", "fix", "seconds"}


def test_unknown_check_is_bad_input() -> None:
    result = CliRunner().invoke(cli, ["doctor", "--check", "nope"])
    assert result.exit_code == 2
    assert "unknown check nope" in result.output


@pytest.mark.parametrize("workers, status", [(4, FAIL), (None, WARN), (0, PASS)])
def test_tiny_shm(workers: int | None, status: str) -> None:
    """Docker's 64 MB /dev/shm: FAIL with workers, WARN when unsaid, fine with num_workers=0."""
    result = by_name(run_doctor(checks=["shm"], workers=workers, statvfs=fake_statvfs(64 * MB)))["shm"]
    assert result.status == status, result
    assert "64 MiB" in result.detail
    if status != PASS:
        assert "--shm-size=8g" in result.fix and "num_workers=0" in result.fix


def test_shm_of_512mb_warns_and_full_shm_warns() -> None:
    assert by_name(run_doctor(checks=["shm"], workers=2, statvfs=fake_statvfs(512 * MB)))["shm"].status == WARN
    full = by_name(run_doctor(checks=["shm"], workers=2, statvfs=fake_statvfs(8192 * MB, 100 * MB)))["shm"]
    assert full.status == WARN and "nearly full" in full.detail


def test_missing_shm_mount(tmp_path: Path) -> None:
    result = by_name(run_doctor(checks=["shm"], workers=2, shm_path=str(tmp_path / "no-shm")))["shm"]
    assert result.status == FAIL and "does not exist" in result.detail


def _dir_of_length(base: Path, length: int) -> Path:
    """A real directory whose path is exactly ``length`` characters."""
    path = base
    while len(str(path)) < length:
        room = length - len(str(path)) - 1
        path = path / ("d" * min(room, 40) if room > 0 else "")
        if room <= 0:
            break
    path.mkdir(parents=True, exist_ok=True)
    assert len(str(path)) == length, path
    return path


def test_long_tmpdir_fails_with_the_fix(tmp_path: Path) -> None:
    """A real 90-character TMPDIR: multiprocessing's AF_UNIX socket does not fit (Python 3.11 fails from ~76)."""
    if len(str(tmp_path)) > 80:
        pytest.skip("tmp_path is already too long to build the test paths")
    deep = _dir_of_length(tmp_path, 90)
    result = by_name(run_doctor(checks=["tmpdir"], tmpdir=str(deep)))["tmpdir"]
    assert result.status == FAIL, result
    assert "90 characters" in result.detail and "AF_UNIX" in result.detail
    assert "export TMPDIR=/tmp" in result.fix


def test_tmpdir_near_the_limit_warns(tmp_path: Path) -> None:
    if len(str(tmp_path)) > 70:
        pytest.skip("tmp_path is already too long to build the test paths")
    near = _dir_of_length(tmp_path, 72)
    result = by_name(run_doctor(checks=["tmpdir"], tmpdir=str(near)))["tmpdir"]
    assert result.status == WARN, result
    assert "export TMPDIR=/tmp" in result.fix
    ok = by_name(run_doctor(checks=["tmpdir"], tmpdir=str(tmp_path)))["tmpdir"]
    assert ok.status == PASS


def test_unwritable_store_fails(tmp_path: Path) -> None:
    """A store under a file, and a directory given as the store: FAIL with the --db fix (works as root too)."""
    a_file = tmp_path / "afile"
    a_file.write_text("not a folder")
    under_file = by_name(run_doctor(checks=["store"], db=str(a_file / "x.db")))["store"]
    assert under_file.status == FAIL and "is not a folder" in under_file.detail
    assert "--db" in under_file.fix
    a_dir = tmp_path / "adir"
    a_dir.mkdir()
    as_dir = by_name(run_doctor(checks=["store"], db=str(a_dir)))["store"]
    assert as_dir.status == FAIL and "is a directory" in as_dir.detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_read_only_store_folder_fails(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        result = by_name(run_doctor(checks=["store"], db=str(ro / "x.db")))["store"]
        assert result.status == FAIL
    finally:
        ro.chmod(0o700)


def test_existing_store_gets_a_rolled_back_write(tmp_path: Path) -> None:
    from runlens.store import open_store

    db = str(tmp_path / "runlens.db")
    open_store(db).close()
    result = by_name(run_doctor(checks=["store"], db=db))["store"]
    assert result.status == PASS and "rolled-back" in result.detail
    store = open_store(db, create=False)
    assert store.list_jobs() == []   # nothing was left behind
    store.close()


def test_disk_thresholds(tmp_path: Path) -> None:
    low = by_name(run_doctor(checks=["disk"], db=str(tmp_path / "r.db"), statvfs=fake_statvfs(100 << 30, 500 * MB)))
    assert low["disk"].status == FAIL and "500 MiB free" in low["disk"].detail
    mid = by_name(run_doctor(checks=["disk"], db=str(tmp_path / "r.db"), statvfs=fake_statvfs(100 << 30, 5 << 30)))
    assert mid["disk"].status == WARN and mid["disk"].fix


def test_thread_oversubscription() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                             "LOCAL_WORLD_SIZE")}
    unset = by_name(run_doctor(checks=["threads"], env=env, workers=4))["threads"]
    assert unset.status == WARN and "OMP_NUM_THREADS" in unset.fix
    one = by_name(run_doctor(checks=["threads"], env={**env, "OMP_NUM_THREADS": "1"}, workers=0))["threads"]
    assert one.status == PASS
    many = by_name(run_doctor(checks=["threads"], env={**env, "OMP_NUM_THREADS": "64"}, workers=8))["threads"]
    assert many.status == WARN and "64 x 9 processes" in many.detail


def test_nccl_timeout_ladder() -> None:
    """soft stall timeout <= 0.5 x process-group timeout, so runlens takes its stacks before the NCCL watchdog
    acts; monitoring off warns."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH_NCCL", "NCCL", "RUNLENS_HANG"))}
    off = by_name(run_doctor(checks=["nccl"], env={**env, "TORCH_NCCL_ENABLE_MONITORING": "0"}))["nccl"]
    assert off.status == WARN and "TORCH_NCCL_ENABLE_MONITORING=0" in off.detail
    late = by_name(run_doctor(checks=["nccl"], env={**env, "RUNLENS_HANG_TIMEOUT": "900", "NCCL_TIMEOUT": "600",
                                                    "WORLD_SIZE": "8"}))["nccl"]
    assert late.status == WARN and "RUNLENS_HANG_TIMEOUT=300" in late.fix
    fine = by_name(run_doctor(checks=["nccl"], env={**env, "RUNLENS_HANG_TIMEOUT": "240", "WORLD_SIZE": "8"}))
    assert fine["nccl"].status == PASS


@pytest.mark.needs_torch
def test_a_probe_that_hangs_is_killed_and_reported() -> None:
    """A probe over its timeout (torch import alone exceeds 0.5 s) is killed with its process group: a FAIL row,
    never a hung doctor."""
    t0, started = time.monotonic(), time.time()
    result = by_name(run_doctor(checks=["dataloader"], timeout=0.5))["dataloader"]
    assert time.monotonic() - t0 < 15
    assert result.status == FAIL and "did not return a batch within" in result.detail and result.fix
    assert probes_left(started) == []


def test_low_open_file_limit_warns() -> None:
    low = judge_nofile({"soft": 1024, "hard": 4096, "infinity": -1})
    assert low.status == WARN and "ulimit -n 4096" in low.fix and "limits.conf" in low.fix
    assert judge_nofile({"soft": 1024, "hard": 1048576, "infinity": -1}).fix.startswith("ulimit -n 65536")
    assert judge_nofile({"soft": 65536, "hard": 65536, "infinity": -1}).status == PASS
