"""The doctor's judges: pure functions from a probe's facts to a verdict with a fix.

The thresholds, with their sources:

* /dev/shm under 1 GiB with DataLoader workers: Docker's default is 64 MB, and workers that hand batches over
  through it die with "Bus error" (https://github.com/pytorch/pytorch/issues/5040).
* TMPDIR over 70 characters: multiprocessing puts ``pymp-XXXXXXXX/listener-XXXXXXXX`` sockets there and the
  Linux AF_UNIX path limit is 108 bytes (``man 7 unix``); Python 3.11 fails from about 76 characters, at times
  as a deadlock in a queue's feeder thread instead of an error (https://github.com/riga/law/issues/184).
* ptrace refused: py-spy cannot attach, so hang stacks come from faulthandler only.
* The stall timeout must fire before the NCCL watchdog tears a rank down, so runlens takes its stacks first:
  at most half the process-group timeout (10 min by default for NCCL,
  https://pytorch.org/docs/stable/distributed.html#torch.distributed.init_process_group).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runlens.core import humanize
from runlens.core.numbers import parse_float, parse_int
from runlens.core.units import GIB
from runlens.doctor.results import FAIL, PASS, SKIP, WARN, CheckResult

__all__ = ["judge", "judge_cuda", "judge_dataloader", "judge_disk", "judge_nccl", "judge_nofile", "judge_pyspy",
           "judge_shm", "judge_store", "judge_threads", "judge_tmpdir", "judge_torch"]

SHM_MIN = 1 * GIB            # below this, WARN when DataLoader workers are used
SHM_FAIL = 256 * (1 << 20)   # below this, FAIL with workers (Docker's 64 MB default lands here)
TMPDIR_WARN = 70             # Python 3.11 works up to 74 characters and fails from 76
AF_UNIX_LIMIT = 108
NOFILE_MIN = 4096
DISK_WARN, DISK_FAIL = 10 * GIB, 1 * GIB
NCCL_DEFAULT_TIMEOUT = 600.0     # torch default_pg_nccl_timeout; Lightning and HF Trainer use 1800


def judge_threads(f: Mapping[str, Any], workers: int | None) -> CheckResult:
    env, cores = f["env"], int(f["cpus"])
    omp = parse_int(env.get("OMP_NUM_THREADS"))
    ranks = max(1, parse_int(env.get("LOCAL_WORLD_SIZE")) or 1)
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
    size = f"{path} is {humanize.size(total)} ({humanize.size(free)} free)"
    if total < SHM_MIN:
        if workers == 0:
            return CheckResult("shm", PASS, f"{size}: small, but enough with num_workers=0")
        who = f"with {workers} DataLoader workers" if workers else "if you use DataLoader workers"
        detail = (f"{size}, under 1 GiB {who}: workers hand batches over through it and die with "
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
        parts.append(f"{p['label']} {p['path']}: {humanize.size(free)} free")
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
    """The stall timeout must fire before the NCCL watchdog tears the process down (soft <= 0.5 x the
    process-group timeout), and hang detection must not be switched off."""
    env = f["env"]
    world = parse_int(env.get("WORLD_SIZE")) or 1
    soft = parse_float(env.get("RUNLENS_HANG_TIMEOUT"))
    pg = parse_float(env.get("NCCL_TIMEOUT"))   # a launcher convention (seconds); torch itself reads no env var
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


def judge(name: str, facts: Mapping[str, Any], *, workers: int | None, timeout: float) -> CheckResult:
    """The verdict on check ``name``: FAIL for a probe that timed out or died, else its judge's."""
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
