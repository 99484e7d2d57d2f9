"""``runlens doctor``: the environment checks that explain hangs before they happen.

Each check is a *probe* that gathers facts and a *judge* that turns them into PASS/WARN/FAIL/SKIP with a
fix. Probes run in a child (``python -m runlens.doctor.checks --probe NAME``, arguments on stdin, result on stdout)
under a timeout, in their own process group, killed as a group when late: a statvfs on a dead NFS mount, a
DataLoader whose workers deadlock or a CUDA init that never returns shows up as a FAIL row instead of a doctor
that hangs like the training run it is meant to explain. Judges are pure functions in the parent.

The thresholds come from research/resilience.md §8.5 and §10.2 rows 6 and 15: /dev/shm under 1 GiB with
DataLoader workers (Docker's default is 64 MB: workers die with "Bus error"); TMPDIR over 70 characters
(multiprocessing puts ``pymp-XXXXXXXX/listener-XXXXXXXX`` sockets there; the AF_UNIX limit is 108 bytes and
Python 3.11 fails from ~76 characters, sometimes as a deadlock in a queue's feeder thread); ptrace refused
(stacks only from faulthandler); an NCCL timeout the stall detector cannot beat.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
CHECKS = ("threads", "shm", "tmpdir", "nofile", "disk", "store", "pyspy", "torch", "dataloader", "cuda",
          "nccl")

GIB = float(1 << 30)
SHM_MIN = 1 * GIB            # below this, WARN when DataLoader workers are used
SHM_FAIL = 256 * (1 << 20)   # below this, FAIL with workers (Docker's 64 MB default lands here)
TMPDIR_WARN = 70             # §8.5: 3.11 works up to 74 characters, fails from 76
AF_UNIX_LIMIT = 108
NOFILE_MIN = 4096
DISK_WARN, DISK_FAIL = 10 * GIB, 1 * GIB
NCCL_DEFAULT_TIMEOUT = 600.0     # torch default_pg_nccl_timeout; Lightning and HF Trainer use 1800
_RESULT_MARK = "RUNLENS-DOCTOR-RESULT "

StatVFS = Callable[[str], Any]


@dataclass
class CheckResult:
    """One row of the doctor's table: what was checked, the verdict, why, and what to do about it."""

    name: str
    status: str
    detail: str
    fix: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- probes: run in the child, return plain facts ---------------------------------------------------------

def _probe_env(names: Sequence[str]) -> dict[str, Any]:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return {"env": {n: os.environ.get(n) for n in names}, "cpus": cpus}


def probe_threads() -> dict[str, Any]:
    return _probe_env(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LOCAL_WORLD_SIZE"))


def probe_shm(shm_path: str, statvfs: StatVFS = os.statvfs) -> dict[str, Any]:
    if not os.path.isdir(shm_path) and statvfs is os.statvfs:
        return {"path": shm_path, "exists": False}
    st = statvfs(shm_path)
    return {"path": shm_path, "exists": True, "total": st.f_blocks * st.f_frsize,
            "free": st.f_bavail * st.f_frsize}


def probe_tmpdir() -> dict[str, Any]:
    """Open a real AF_UNIX listener where multiprocessing would: the length rule is only a proxy."""
    import multiprocessing.connection

    raw = os.environ.get("TMPDIR")
    facts: dict[str, Any] = {"tmpdir": raw, "exists": bool(raw) and os.path.isdir(raw or "")}
    path = tempfile.gettempdir()
    facts["effective"] = path
    try:
        listener = multiprocessing.connection.Listener(family="AF_UNIX")
        facts["socket_path"] = str(listener.address)
        listener.close()
        facts["ok"] = True
    except OSError as exc:
        facts["ok"] = False
        facts["error"] = f"{type(exc).__name__}: {exc}"
    return facts


def probe_nofile() -> dict[str, Any]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"soft": soft, "hard": hard, "infinity": resource.RLIM_INFINITY}


def probe_disk(paths: Sequence[str], statvfs: StatVFS = os.statvfs) -> dict[str, Any]:
    out = []
    for label_path in paths:
        label, _, path = label_path.partition("=")
        p = Path(path)
        while not p.exists() and p != p.parent:   # a store not created yet: its nearest existing folder
            p = p.parent
        try:
            st = statvfs(str(p))
            out.append({"label": label, "path": str(p), "free": st.f_bavail * st.f_frsize,
                        "total": st.f_blocks * st.f_frsize})
        except OSError as exc:
            out.append({"label": label, "path": str(p), "error": str(exc)})
    return {"paths": out}


def probe_store(url: str) -> dict[str, Any]:
    """Open the store and make a write inside a transaction that is rolled back; create nothing."""
    from runlens.core.errors import RunlensError
    from runlens.core.redact import redact_url
    from runlens.store import open_store
    from runlens.store.engine import sqlite_path

    shown = redact_url(url)
    try:
        path = sqlite_path(url)
    except Exception as exc:
        return {"url": shown, "ok": False, "error": f"not a database URL: {exc}"}
    if path is not None and not path.exists():
        parent = path.parent
        if not parent.is_dir():
            why = "is not a folder" if parent.exists() else "does not exist"
            return {"url": shown, "ok": False, "error": f"{parent} {why}"}
        try:
            fd, probe = tempfile.mkstemp(prefix=".runlens-doctor-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            why = exc.strerror or str(exc)
            return {"url": shown, "ok": False, "error": f"cannot create files in {parent}: {why}"}
        return {"url": shown, "ok": True, "created": False,
                "detail": f"no store yet; {parent.resolve()} is writable (it will be created there)"}

    class _Rollback(Exception):
        pass

    try:
        store = open_store(url, create=False, migrate=False)
    except RunlensError as exc:
        return {"url": shown, "ok": False, "error": str(exc)}
    try:
        with store.begin() as conn:
            store.insert_many(conn, "jobs", [{"job_id": "runlens-doctor-probe", "name": "runlens-doctor",
                                              "status": "never_started", "created_at": time.time()}])
            raise _Rollback
    except _Rollback:
        return {"url": shown, "ok": True, "created": True,
                "detail": "a write in a rolled-back transaction worked"}
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {"url": shown, "ok": False, "error": first}
    finally:
        store.close()
    return {"url": shown, "ok": False, "error": "unreachable"}


def _find_pyspy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


def probe_pyspy(timeout: float = 15.0) -> dict[str, Any]:
    """Attach py-spy to a sleeping sibling, as ``runlens collect`` would attach to the training process."""
    facts: dict[str, Any] = {"uid": os.geteuid() if hasattr(os, "geteuid") else None}
    try:
        facts["ptrace_scope"] = int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip())
    except (OSError, ValueError):
        facts["ptrace_scope"] = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                facts["cap_sys_ptrace"] = bool(int(line.split()[1], 16) & (1 << 19))
    except OSError:
        facts["cap_sys_ptrace"] = None
    exe = _find_pyspy()
    facts["pyspy"] = exe
    if exe is None:
        return facts
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)   # let the interpreter come up: py-spy needs its thread state
        t0 = time.perf_counter()
        try:
            res = subprocess.run([exe, "dump", "--pid", str(sleeper.pid)], capture_output=True, text=True,
                                 check=False, timeout=timeout)
            facts["seconds"] = time.perf_counter() - t0
            facts["rc"] = res.returncode
            out = (res.stdout + res.stderr).strip()
            facts["attached"] = res.returncode == 0 and ("sleep" in out or "Thread" in out)
            facts["output"] = out[-600:]
        except subprocess.TimeoutExpired:
            facts["attached"] = False
            facts["output"] = f"py-spy dump did not finish in {timeout:.0f}s"
        try:
            facts["version"] = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False,
                                              timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()
    return facts


def probe_torch() -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        import torch
    except ImportError as exc:
        return {"installed": False, "error": str(exc)}
    except Exception as exc:
        return {"installed": True, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    import multiprocessing

    return {"installed": True, "ok": True, "seconds": time.perf_counter() - t0, "version": torch.__version__,
            "threads": torch.get_num_threads(), "cuda_build": torch.version.cuda,
            "start_method": multiprocessing.get_start_method()}


class _DoctorDataset:
    """Eight 256 KiB tensors: big enough that workers hand them over through shared memory."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> Any:
        import torch

        return torch.full((256, 256), float(i))


def probe_dataloader(workers: int = 2, timeout: float = 30.0) -> dict[str, Any]:
    """A real DataLoader with worker processes returning batches: what hangs on a small /dev/shm,
    a long TMPDIR or a fork after threads started."""
    try:
        import torch
        from torch.utils.data import DataLoader
    except ImportError as exc:
        return {"installed": False, "error": str(exc)}
    import multiprocessing

    facts: dict[str, Any] = {"installed": True, "workers": workers,
                             "start_method": multiprocessing.get_start_method()}
    t0 = time.perf_counter()
    try:
        loader: Any = DataLoader(_DoctorDataset(), batch_size=4, num_workers=workers,  # type: ignore[arg-type]
                                 timeout=timeout)
        batches = list(loader)
        facts["ok"] = (len(batches) == 2 and isinstance(batches[0], torch.Tensor)
                       and float(batches[1].sum()) > 0)
        facts["seconds"] = time.perf_counter() - t0
    except Exception as exc:
        facts["ok"] = False
        facts["error"] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
        facts["seconds"] = time.perf_counter() - t0
    return facts


def probe_cuda() -> dict[str, Any]:
    facts: dict[str, Any] = {}
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            n = pynvml.nvmlDeviceGetCount()
            names = []
            for i in range(n):
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                names.append(name.decode() if isinstance(name, bytes) else str(name))
            driver = pynvml.nvmlSystemGetDriverVersion()
            facts["nvml"] = {"count": n, "names": names,
                             "driver": driver.decode() if isinstance(driver, bytes) else str(driver)}
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no library, no driver, no GPU: all the same to us
        facts["nvml_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import torch
    except ImportError:
        facts["torch"] = None
        return facts
    facts["torch"] = torch.__version__
    facts["cuda_build"] = torch.version.cuda
    facts["visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    t0 = time.perf_counter()
    try:
        facts["available"] = bool(torch.cuda.is_available())
        if facts["available"]:
            torch.cuda.init()  # type: ignore[no-untyped-call]
            x = torch.ones(1024, device="cuda")
            facts["sum"] = float((x * 2).sum().item())
            facts["device"] = torch.cuda.get_device_name(0)
            facts["count"] = torch.cuda.device_count()
        facts["seconds"] = time.perf_counter() - t0
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        facts["error"] = f"{type(exc).__name__}: {lines[0] if lines else ''}"
        facts["seconds"] = time.perf_counter() - t0
    return facts


def probe_nccl() -> dict[str, Any]:
    return _probe_env(("TORCH_NCCL_ENABLE_MONITORING", "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC", "NCCL_TIMEOUT",
                       "TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING",
                       "TORCH_NCCL_BLOCKING_WAIT", "RUNLENS_HANG_TIMEOUT", "WORLD_SIZE"))


PROBES: dict[str, Callable[..., dict[str, Any]]] = {
    "threads": probe_threads, "shm": probe_shm, "tmpdir": probe_tmpdir, "nofile": probe_nofile,
    "disk": probe_disk, "store": probe_store, "pyspy": probe_pyspy, "torch": probe_torch,
    "dataloader": probe_dataloader, "cuda": probe_cuda, "nccl": probe_nccl,
}


# -- running probes in a child ------------------------------------------------------------------------------

def run_probe(name: str, args: Mapping[str, Any], *, timeout: float,
              env: Mapping[str, str]) -> dict[str, Any]:
    """Run probe ``name`` in a child process with ``env``; kill its whole process group after ``timeout``.

    Output goes to temporary files, not pipes: a grandchild (a DataLoader worker, the py-spy sleeper) that
    outlives a kill would hold a pipe open and make reading it block, which is the hang we are avoiding.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "runlens.doctor.checks", "--probe", name],
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
        if line.startswith(_RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(_RESULT_MARK):])
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


# -- judges: facts -> verdict ----------------------------------------------------------------------------

def _gb(n: float) -> str:
    return f"{n / GIB:.1f} GB" if n >= GIB else f"{n / (1 << 20):.0f} MB"


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


def judge_threads(f: Mapping[str, Any], workers: int | None) -> CheckResult:
    env, cores = f["env"], int(f["cpus"])
    omp = _int(env.get("OMP_NUM_THREADS"))
    ranks = max(1, _int(env.get("LOCAL_WORLD_SIZE")) or 1)
    procs = ranks * (1 + (workers or 0))
    share = max(1, cores // procs)
    fix = (f"export OMP_NUM_THREADS={share} MKL_NUM_THREADS={share} (cores / processes); with OpenCV "
           f"also cv2.setNumThreads(0) in worker_init_fn")
    if ranks > 1:
        who = f"{ranks} ranks x (1 + {workers or 0} DataLoader workers)"
    else:
        who = f"the main process and {workers or 0} DataLoader workers"
    if omp is None:
        if procs == 1:
            note = "" if workers is not None else " (pass --workers N to include DataLoader workers)"
            detail = f"OMP_NUM_THREADS unset: BLAS/OpenMP use all {cores} cores in one process{note}"
            return CheckResult("threads", PASS, detail)
        detail = (f"OMP_NUM_THREADS unset: {who} may each start {cores} BLAS/OpenMP threads "
                  f"({cores * procs} threads on {cores} cores); oversubscription stalls workers "
                  f"(pytorch#33296)")
        return CheckResult("threads", WARN, detail, fix)
    total = omp * procs
    detail = f"OMP_NUM_THREADS={omp} x {procs} processes = {total} threads on {cores} cores"
    if total > cores:
        return CheckResult("threads", WARN, detail, fix)
    return CheckResult("threads", PASS, detail)


_SHM_FIX = ("docker run --shm-size=8g (or --ipc=host); Kubernetes: an emptyDir with medium: Memory "
            "mounted at /dev/shm; or DataLoader(num_workers=0)")


def judge_shm(f: Mapping[str, Any], workers: int | None) -> CheckResult:
    path = f["path"]
    if not f.get("exists"):
        detail = f"{path} does not exist: DataLoader workers and multiprocessing shared memory cannot work"
        return CheckResult("shm", FAIL if workers else WARN, detail, _SHM_FIX)
    total, free = float(f["total"]), float(f["free"])
    size = f"{path} is {_gb(total)} ({_gb(free)} free)"
    if total < SHM_MIN:
        if workers == 0:
            return CheckResult("shm", PASS, f"{size}: small, but enough with num_workers=0")
        who = f"with {workers} DataLoader workers" if workers else "if you use DataLoader workers"
        detail = (f"{size}, under 1 GB {who}: workers hand batches over through it and die with "
                  f"'Bus error' or hang when it fills (Docker's default is 64 MB)")
        return CheckResult("shm", FAIL if workers and total < SHM_FAIL else WARN, detail, _SHM_FIX)
    if free < 512 * (1 << 20):
        return CheckResult("shm", WARN, f"{size}: nearly full (leftover segments from killed runs?)",
                           f"remove stale files in {path} (ls -la {path}); " + _SHM_FIX)
    return CheckResult("shm", PASS, size)


def judge_tmpdir(f: Mapping[str, Any]) -> CheckResult:
    path = f.get("tmpdir") or f.get("effective") or "/tmp"
    n = len(path)
    fix = "export TMPDIR=/tmp (or any folder whose path is under 70 characters) before starting training"
    if f.get("tmpdir") and not f.get("exists"):
        detail = f"TMPDIR={path} does not exist: Python silently uses {f.get('effective')} instead"
        return CheckResult("tmpdir", WARN, detail, "create it, or export TMPDIR=/tmp")
    if not f.get("ok"):
        detail = (f"TMPDIR is {n} characters and multiprocessing cannot create its AF_UNIX socket there "
                  f"({f.get('error')}; limit {AF_UNIX_LIMIT} bytes): DataLoader workers crash or deadlock")
        return CheckResult("tmpdir", FAIL, detail, fix)
    if n > TMPDIR_WARN:
        detail = (f"TMPDIR is {n} characters: sockets fit today, but Python 3.11 fails from about 76 "
                  f"(AF_UNIX limit {AF_UNIX_LIMIT} bytes)")
        return CheckResult("tmpdir", WARN, detail, fix)
    return CheckResult("tmpdir", PASS, f"{path} ({n} characters): AF_UNIX sockets fit")


def judge_nofile(f: Mapping[str, Any]) -> CheckResult:
    soft, hard, inf = f["soft"], f["hard"], f["infinity"]
    shown_hard = "unlimited" if hard == inf else str(hard)
    if soft != inf and soft < NOFILE_MIN:
        if hard == inf or hard >= 65536:
            fix = "ulimit -n 65536 before starting training"
        else:
            fix = (f"ulimit -n {hard} now; raise the hard limit ({hard}) in /etc/security/limits.conf or "
                   f"with docker run --ulimit nofile=65536:65536")
        detail = (f"open-file limit {soft} (hard {shown_hard}): DataLoader workers pass tensors as file "
                  f"descriptors and hit 'Too many open files'")
        return CheckResult("nofile", WARN, detail,
                           fix + "; or torch.multiprocessing.set_sharing_strategy('file_system')")
    shown_soft = "unlimited" if soft == inf else str(soft)
    return CheckResult("nofile", PASS, f"open-file limit {shown_soft} (hard {shown_hard})")


def judge_disk(f: Mapping[str, Any]) -> CheckResult:
    worst, parts = PASS, []
    by_path: dict[str, dict[str, Any]] = {}
    for p in f["paths"]:   # cwd and the store's folder are often the same: one entry, both labels
        if p["path"] in by_path:
            by_path[p["path"]]["label"] += f" and {p['label']}"
        else:
            by_path[p["path"]] = dict(p)
    for p in by_path.values():
        if "error" in p:
            worst = FAIL
            parts.append(f"{p['label']} {p['path']}: {p['error']}")
            continue
        free = float(p["free"])
        if free < DISK_FAIL:
            worst = FAIL
        elif free < DISK_WARN and worst == PASS:
            worst = WARN
        parts.append(f"{p['label']} {p['path']}: {_gb(free)} free")
    fix = None
    if worst != PASS:
        fix = ("free space there, or point --db / RUNLENS_DB and the run's output at a disk with room: "
               "a full disk stops checkpoints and the store mid-run")
    return CheckResult("disk", worst, "; ".join(parts) or "no paths", fix)


def judge_store(f: Mapping[str, Any]) -> CheckResult:
    if f.get("ok"):
        return CheckResult("store", PASS, f"{f['url']}: {f.get('detail', 'writable')}")
    return CheckResult("store", FAIL, f"{f.get('url', 'the store')} is not writable: {f.get('error')}",
                       "pass --db (or set RUNLENS_DB) to a writable location, e.g. --db ~/runlens.db")


def judge_pyspy(f: Mapping[str, Any]) -> CheckResult:
    if not f.get("pyspy"):
        detail = ("py-spy is not installed: hang evidence comes from faulthandler only (Python frames of the "
                  "main process, none of its DataLoader workers)")
        return CheckResult("pyspy", WARN, detail, "pip install py-spy")
    version = f.get("version") or "py-spy"
    who = "root" if f.get("uid") == 0 else f"uid {f.get('uid')}"
    scope = f.get("ptrace_scope")
    if f.get("attached"):
        detail = (f"{version} attached to a sibling process in {f.get('seconds', 0):.2f}s ({who}, "
                  f"ptrace_scope {'n/a' if scope is None else scope})")
        return CheckResult("pyspy", PASS, detail)
    why = [who, f"ptrace_scope={scope}" if scope is not None else "no Yama",
           "CAP_SYS_PTRACE" if f.get("cap_sys_ptrace") else "no CAP_SYS_PTRACE"]
    out = (f.get("output") or "").strip().splitlines()
    detail = (f"{version} could not attach to a sibling process ({', '.join(why)}): "
              f"{out[-1][:200] if out else 'no output'}; stacks will come from faulthandler only")
    return CheckResult("pyspy", WARN, detail,
                       "docker run --cap-add SYS_PTRACE (Kubernetes: securityContext.capabilities.add: "
                       "[SYS_PTRACE]); or sudo sysctl kernel.yama.ptrace_scope=0; or run as root")


def judge_torch(f: Mapping[str, Any]) -> CheckResult:
    if not f.get("installed"):
        return CheckResult("torch", SKIP, "torch is not installed")
    if not f.get("ok"):
        return CheckResult("torch", FAIL, f"import torch failed: {f.get('error')}",
                           "reinstall torch for this Python (pip install --force-reinstall torch)")
    detail = (f"torch {f['version']} imported in {f['seconds']:.1f}s; {f['threads']} intra-op threads; "
              f"multiprocessing start method {f['start_method']}")
    if f["seconds"] > 30:
        return CheckResult("torch", WARN, detail + ": slow (site-packages on a network file system?)",
                           "install into a local disk (a venv under /tmp or the node's SSD)")
    return CheckResult("torch", PASS, detail)


def judge_dataloader(f: Mapping[str, Any], timeout: float) -> CheckResult:
    if f.get("installed") is False:
        return CheckResult("dataloader", SKIP, "torch is not installed")
    if f.get("ok"):
        return CheckResult("dataloader", PASS, f"{f['workers']} workers (start method {f['start_method']}) "
                                               f"returned their batches in {f['seconds']:.1f}s")
    err = str(f.get("error") or "")
    if "Bus error" in err or "shared memory" in err or "shm" in err:
        fix = _SHM_FIX
    elif "AF_UNIX" in err:
        fix = "export TMPDIR=/tmp"
    elif "Too many open files" in err:
        fix = "ulimit -n 65536, or torch.multiprocessing.set_sharing_strategy('file_system')"
    else:
        fix = ("reproduce with num_workers=0; export OMP_NUM_THREADS=1; try "
               "multiprocessing_context='spawn'; check the shm and tmpdir rows")
    detail = f"a DataLoader with {f.get('workers', 2)} workers failed: {err}"
    return CheckResult("dataloader", FAIL, detail, fix)


def judge_cuda(f: Mapping[str, Any]) -> CheckResult:
    nvml = f.get("nvml")
    if f.get("error"):
        return CheckResult("cuda", FAIL, f"CUDA initialisation failed: {f['error']}",
                           "check nvidia-smi, the driver and CUDA versions (torch.version.cuda) and "
                           "CUDA_VISIBLE_DEVICES")
    if f.get("available"):
        secs = f.get("seconds") or 0.0
        detail = f"{f.get('count')} GPU(s), {f.get('device')}; CUDA init + a kernel in {secs:.1f}s"
        if nvml:
            detail += f"; NVML driver {nvml['driver']}"
        else:
            detail += f"; NVML unavailable ({f.get('nvml_error')}): no GPU memory samples"
        if secs > 60:
            return CheckResult("cuda", WARN, detail + ": slow (JIT-compiling kernels for this GPU?)",
                               "install a torch build with kernels for this GPU's architecture, or set "
                               "CUDA_CACHE_MAXSIZE so the JIT cache keeps them")
        return CheckResult("cuda", PASS, detail)
    if nvml and nvml.get("count"):
        if not f.get("cuda_build"):
            why = "a CPU-only torch build"
        elif f.get("visible_devices") is not None:
            why = f"CUDA_VISIBLE_DEVICES={f.get('visible_devices')!r}"
        else:
            why = "a driver too old for this torch"
        detail = f"NVML sees {nvml['count']} GPU(s) but torch cannot use them ({why})"
        return CheckResult("cuda", WARN, detail,
                           "install a CUDA build of torch matching the driver, or fix CUDA_VISIBLE_DEVICES")
    detail = f"no NVIDIA GPU or driver here (NVML: {f.get('nvml_error', 'no devices')}); CUDA checks skipped"
    return CheckResult("cuda", SKIP, detail)


def judge_nccl(f: Mapping[str, Any]) -> CheckResult:
    """resilience.md §10.2 rows 6 and 15: the stall timeout must fire before the NCCL watchdog tears the
    process down (soft <= 0.5 x the process-group timeout), and hang detection must not be switched off."""
    env = f["env"]
    world = _int(env.get("WORLD_SIZE")) or 1
    soft = _float(env.get("RUNLENS_HANG_TIMEOUT"))
    pg = _float(env.get("NCCL_TIMEOUT"))   # a launcher convention (seconds); torch itself reads no env var
    pg_eff = pg or NCCL_DEFAULT_TIMEOUT
    pg_txt = f"{pg_eff:.0f}s" + ("" if pg else ", the NCCL default")
    problems, fixes = [], []
    if env.get("TORCH_NCCL_ENABLE_MONITORING") == "0":
        problems.append("TORCH_NCCL_ENABLE_MONITORING=0: torch never tears down a rank stuck in a collective")
        fixes.append("unset TORCH_NCCL_ENABLE_MONITORING")
    if pg and pg > 1800:
        problems.append(f"NCCL_TIMEOUT={pg:.0f}s: a hung collective is noticed only after {pg / 60:.0f} min")
        fixes.append("init_process_group(timeout=timedelta(minutes=10..30))")
    if soft is not None and soft > 0.5 * pg_eff:
        problems.append(f"RUNLENS_HANG_TIMEOUT={soft:.0f}s is over half the process-group timeout "
                        f"({pg_txt}): the NCCL watchdog can kill the run before runlens takes its stacks")
        fixes.append(f"export RUNLENS_HANG_TIMEOUT={int(0.5 * pg_eff)} or raise the process-group timeout to "
                     f"{int(2 * soft)}s")
    elif soft is None and world > 1 and 900 > 0.5 * pg_eff:
        problems.append(f"the self-calibrated stall timeout can grow to 15 min, past half the process-group "
                        f"timeout ({pg_txt}): slow steps could let the NCCL watchdog act first")
        fixes.append(f"export RUNLENS_HANG_TIMEOUT={int(0.5 * pg_eff)}")
    if problems:
        return CheckResult("nccl", WARN, "; ".join(problems), "; ".join(fixes))
    soft_txt = f"{soft:.0f}s" if soft is not None else "self-calibrating (300s until calibrated)"
    if world <= 1:
        return CheckResult("nccl", PASS, f"single process (WORLD_SIZE unset): no process-group timeout; "
                                         f"stall timeout {soft_txt}")
    detail = f"stall timeout {soft_txt} within half the process-group timeout ({pg_txt})"
    return CheckResult("nccl", PASS, detail)


# -- the doctor ------------------------------------------------------------------------------------------

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
    from runlens.core.settings import resolve_db_url
    from runlens.store.engine import sqlite_path

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
        result = _judge(name, facts, workers=workers, timeout=timeout)
        result.seconds = round(time.perf_counter() - t0, 3)
        return result

    with ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="runlens-doctor") as pool:
        results = list(pool.map(one, names))
    return results


_HUNG_FIX = {
    "dataloader": ("the hang runlens warns about: check the shm, tmpdir and threads rows; reproduce with "
                   "num_workers=0; try multiprocessing_context='spawn'"),
    "cuda": "check nvidia-smi (a GPU in a bad state, or a driver reload in progress)",
    "store": "the store's file system is not answering (a stale network mount?); use a local --db",
    "disk": "a mount is not answering (a stale network file system?)",
    "shm": "the shared-memory mount is not answering",
    "pyspy": "py-spy hung while attaching: run it by hand with --nonblocking",
    "torch": "importing torch hangs: a network file system, or a lock held by another process",
}


def _judge(name: str, facts: Mapping[str, Any], *, workers: int | None, timeout: float) -> CheckResult:
    if facts.get("timed_out"):
        what = "did not finish"
        if name == "dataloader":
            what = "a DataLoader with 2 workers did not return a batch"
        return CheckResult(name, FAIL, f"{what} within {timeout:.0f}s (killed)",
                           _HUNG_FIX.get(name, "run the check again; something on this machine is stuck"))
    if facts.get("crashed"):
        return CheckResult(name, FAIL, f"the check's process died (exit {facts.get('returncode')}): "
                           f"{facts.get('error') or 'no message'}",
                           _HUNG_FIX.get(name, "run the check again; report it if it persists"))
    if name == "threads":
        return judge_threads(facts, workers)
    if name == "shm":
        return judge_shm(facts, workers)
    if name == "tmpdir":
        return judge_tmpdir(facts)
    if name == "nofile":
        return judge_nofile(facts)
    if name == "disk":
        return judge_disk(facts)
    if name == "store":
        return judge_store(facts)
    if name == "pyspy":
        return judge_pyspy(facts)
    if name == "torch":
        return judge_torch(facts)
    if name == "dataloader":
        return judge_dataloader(facts, timeout)
    if name == "cuda":
        return judge_cuda(facts)
    return judge_nccl(facts)


def _main(argv: Sequence[str]) -> int:
    """Child entry: ``python -m runlens.doctor.checks --probe NAME`` with JSON arguments on stdin."""
    if len(argv) != 2 or argv[0] != "--probe" or argv[1] not in PROBES:
        print(f"usage: python -m runlens.doctor.checks --probe {{{','.join(PROBES)}}}  (use `runlens doctor`)",
              file=sys.stderr)
        return 2
    raw = sys.stdin.read()
    kwargs = json.loads(raw) if raw.strip() else {}
    result = PROBES[argv[1]](**kwargs)
    sys.stdout.write("\n" + _RESULT_MARK + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
