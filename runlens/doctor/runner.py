"""``runlens doctor``: the environment checks that explain hangs before they happen.

Each check is a probe that gathers facts (``runlens.doctor.probes``) and a judge that turns them into
PASS/WARN/FAIL/SKIP with a fix (``runlens.doctor.judges``). Probes run in a child under a timeout, in their own
process group, killed as a group when late: a check that hangs shows up as a FAIL row instead of a doctor that
hangs like the training run it is meant to explain. The checks run side by side, so the doctor takes as long
as its slowest check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runlens.core.settings import resolve_db_url
from runlens.doctor.judges import judge
from runlens.doctor.probes import PROBES, RESULT_MARK, StatVFS
from runlens.doctor.results import CHECKS, CheckResult
from runlens.store.engine import sqlite_path

__all__ = ["run_doctor", "run_probe"]


def run_doctor(
    *,
    shm_path: str = "/dev/shm",
    tmpdir: str | None = None,
    env: Mapping[str, str] | None = None,
    db: str | None = None,
    checks: Sequence[str] | None = None,
    timeout: float = 60.0,
    workers: int | None = None,
    cwd: str | None = None,
    statvfs: StatVFS | None = None,
) -> list[CheckResult]:
    """Run the checks and return one CheckResult per check, in the order of ``CHECKS``.

    Args:
        shm_path: the shared-memory mount to measure.
        tmpdir: the TMPDIR to test (default: the one in ``env``).
        env: the environment to judge and to run the probes under (default: this process's).
        db: the store URL or path (default: ``RUNLENS_DB`` in ``env``, then ./runlens.db).
        checks: names from ``CHECKS`` to run (default: all).
        timeout: seconds each probe may take before it is killed and reported FAIL.
        workers: the DataLoader workers the user plans (shm and thread checks); None = not said.
        cwd: the folder the job writes to (default: the current one).
        statvfs: a stand-in for ``os.statvfs`` (tests); when given, the shm and disk probes run in this
            process with it, since a fake cannot cross into a child.
    """
    unknown = [n for n in (checks or ()) if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    names = [n for n in CHECKS if checks is None or n in checks]
    child_env = dict(os.environ if env is None else env)
    if tmpdir is not None:
        child_env["TMPDIR"] = tmpdir
    url = resolve_db_url(db, environ=child_env)
    cwd = cwd or os.getcwd()
    try:
        store_path = sqlite_path(url)
    except Exception:
        store_path = None
    disk_paths = [f"cwd={cwd}"]
    if store_path is not None:
        disk_paths.append(f"store folder={Path(cwd, store_path).parent.resolve()}")

    args: dict[str, dict[str, Any]] = {
        "shm": {"shm_path": shm_path}, "disk": {"paths": disk_paths}, "store": {"url": url},
        "pyspy": {"timeout": max(5.0, min(15.0, timeout / 2))},
        "dataloader": {"workers": 2, "timeout": max(5.0, timeout * 0.6)},
    }

    def one(name: str) -> CheckResult:
        t0 = time.perf_counter()
        if statvfs is not None and name in ("shm", "disk"):
            facts = PROBES[name](**args[name], statvfs=statvfs)
        else:
            facts = run_probe(name, args.get(name, {}), timeout=timeout, env=child_env)
        result = judge(name, facts, workers=workers, timeout=timeout)
        result.seconds = round(time.perf_counter() - t0, 3)
        return result

    with ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="runlens-doctor") as pool:
        results = list(pool.map(one, names))
    return results


def run_probe(name: str, args: Mapping[str, Any], *, timeout: float,
              env: Mapping[str, str]) -> dict[str, Any]:
    """Run probe ``name`` in a child process with ``env``; kill its whole process group after ``timeout``.

    Output goes to temporary files, not pipes: a grandchild (a DataLoader worker, the py-spy sleeper) that
    outlives a kill would hold a pipe open and make reading it block, which is the hang we are avoiding.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "runlens.doctor.probes", "--probe", name],
                                stdin=subprocess.PIPE, stdout=out, stderr=err, env=dict(env),
                                start_new_session=True)
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(dict(args)).encode())
            proc.stdin.close()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return {"timed_out": True, "timeout": timeout}
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            _kill_group(proc, only_leftovers=True)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK):])
            return result
    tail = (stderr.strip().splitlines() or [""])[-1][:300]
    return {"crashed": True, "returncode": proc.returncode, "error": tail}


def _kill_group(proc: subprocess.Popen[bytes], only_leftovers: bool = False) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if not only_leftovers:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:   # unkillable (D state): leave it, do not hang with it
            pass
