"""The doctor's probes: each gathers plain facts about this machine (a mount's size, an AF_UNIX socket that
opens or not, a DataLoader whose workers return batches, py-spy attaching to a sibling) and judges nothing.

They run in a child process, one per check: ``python -m runlens.doctor.probes --probe NAME``, with the
arguments as JSON on stdin and the facts as one marked JSON line on stdout (``runlens.doctor.runner`` starts
it, under a timeout, and reads it back). A probe that hangs (a statvfs on a dead NFS mount, a DataLoader whose
workers deadlock, a CUDA init that never returns) is then killed with its process group instead of hanging
the doctor.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PROBES", "RESULT_MARK", "StatVFS", "main"]

RESULT_MARK = "RUNLENS-DOCTOR-RESULT "
"""Starts the line that carries a probe's facts, so output a probe's imports print cannot be mistaken for it."""

StatVFS = Callable[[str], Any]


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

    try:
        store = open_store(url, create=False, migrate=False)
    except RunlensError as exc:
        return {"url": shown, "ok": False, "error": str(exc)}
    try:
        store.check_writable()
        return {"url": shown, "ok": True, "created": True,
                "detail": "a write in a rolled-back transaction worked"}
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {"url": shown, "ok": False, "error": first}
    finally:
        store.close()


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


def main(argv: Sequence[str]) -> int:
    """Child entry: ``python -m runlens.doctor.probes --probe NAME`` with JSON arguments on stdin.

    The usage line is this entry's own output: it is started by ``runlens doctor``, never by a person.
    """
    if len(argv) != 2 or argv[0] != "--probe" or argv[1] not in PROBES:
        print(f"usage: python -m runlens.doctor.probes --probe {{{','.join(PROBES)}}}  (use `runlens doctor`)",
              file=sys.stderr)
        return 2
    raw = sys.stdin.read()
    kwargs = json.loads(raw) if raw.strip() else {}
    result = PROBES[argv[1]](**kwargs)
    sys.stdout.write("\n" + RESULT_MARK + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
