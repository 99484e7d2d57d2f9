"""What runlens costs and records on a real NVIDIA GPU, in one command and one table.

    python bench/gpu_check.py [--steps 600] [--pairs 3] [--out bench/results/]     (or scripts/gpu-check.sh)

Checks, each in fresh processes (the parent never imports torch):

  loop      a GPU-bound loop with a deep launch queue (a chain of ``--matmuls`` products of a ``--size``²
            bf16 matrix, about ``--target-ms`` a step, the loss a CUDA scalar), run bare, with
            ``runlens.Monitor`` + ``mon.step(step, loss=loss)``, and with the Monitor resolving each value by
            ``.item()`` (the old path, for comparison); interleaved A B C A B C, medians. Reported: step time
            against bare, ``mon.step()`` median and p99 cost, CPU of the runlens-* threads as % of one core
            over the loop, the whole process's CPU, and the share of steps in the store when the loop's last
            step was issued, when the GPU finished it, and after close.
  start     ``Monitor.start()`` in a fresh process (torch imported and CUDA up first, as in a training
            script): the first Monitor (new store file, migrations) and a second one.
  oom       a script under ``runlens collect`` doubling a batch until ``torch.OutOfMemoryError``; then the
            store's ``cuda_oom`` event, ``runlens analyze JOB --json`` (health, top recommendation) and the
            HTML report.
  nvml      ``nvmlDeviceGetComputeRunningProcesses`` for the loop's process against the device's used/total,
            torch's reserved memory, and what runlens stored in ``gpu_samples``.

Without a GPU (or torch) every GPU row says "skipped: why" and the rest still runs. Everything (JSON, child
logs, the OOM job's store and report) goes under ``--out``/gpu_check-<time>/; the table is printed last.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("bare", "monitor", "monitor_item")
ARM_LABEL = {"bare": "bare", "monitor": "monitor", "monitor_item": "monitor, .item()"}
GiB = 2**30


# -- children (each runs in its own process) ----------------------------------------------------------------

def _emit(doc: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(doc), flush=True)


def child_probe(args: argparse.Namespace) -> None:
    """Is there a CUDA device; what a matrix product of the loop's size costs (to size the loop)."""
    try:
        import torch
    except ImportError as exc:
        _emit({"cuda": False, "why": f"torch is not installed ({exc})"})
        return
    if not torch.cuda.is_available():
        _emit({"cuda": False, "why": f"torch {torch.__version__} sees no CUDA device"})
        return
    x, w = _operands(torch, args.size)
    for _ in range(5):
        x = x @ w
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        x = x @ w
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / 20 * 1000
    _emit({"cuda": True, "torch": torch.__version__, "cuda_version": torch.version.cuda,
           "device": torch.cuda.get_device_name(0), "matmul_ms": ms})


def _operands(torch: Any, size: int, device: str = "cuda") -> tuple[Any, Any]:
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=g)
    # Scaled so repeated products keep the values' size (no overflow to inf over a long chain).
    w = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=g) / size**0.5
    return x, w


def child_loop(args: argparse.Namespace) -> None:
    import torch

    arm = args.arm
    x, w = _operands(torch, args.size, args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def one_step() -> Any:
        y = x
        for _ in range(args.matmuls):
            y = y @ w
        return y.float().pow(2).mean()   # a CUDA scalar, never read on this thread

    mon = reader = None
    if arm != "bare":
        import runlens
        from runlens.collect.cost import runlens_thread_cpu
        from runlens.store import open_store

        if arm == "monitor_item":
            _old_path()
        mon = runlens.Monitor(name=f"gpu-check-{arm}", db=args.db).start()
        reader = open_store(args.db, create=False)
    for step in range(args.warmup):
        loss = one_step()
        if mon is not None:
            mon.step(-args.warmup + step, loss=loss)
    sync()
    nvml = _nvml_process(torch) if args.nvml else None
    calls: list[int] = []
    cpu0 = runlens_thread_cpu() if mon is not None else {}
    proc0 = time.process_time()
    t0 = time.perf_counter()
    perf_ns = time.perf_counter_ns
    for step in range(args.steps):
        loss = one_step()
        if mon is not None:
            c0 = perf_ns()
            mon.step(step, loss=loss)
            calls.append(perf_ns() - c0)
    issued = time.perf_counter() - t0
    on_disk_issued = _steps_stored(reader, mon)
    cpu_issued = runlens_thread_cpu() if mon is not None else {}
    sync()
    wall = time.perf_counter() - t0
    proc_cpu = time.process_time() - proc0
    on_disk_done = _steps_stored(reader, mon)
    cpu1 = runlens_thread_cpu() if mon is not None else {}
    out: dict[str, Any] = {"arm": arm, "steps": args.steps, "wall_s": wall, "issued_s": issued,
                           "step_ms": wall / args.steps * 1000, "process_cpu_s": proc_cpu, "nvml": nvml}
    if mon is not None:
        calls.sort()
        job_id = mon.job_id
        runlens_cpu = sum(cpu1.values()) - sum(cpu0.values())
        out.update(step_call_us_median=calls[len(calls) // 2] / 1000,
                   step_call_us_p99=calls[min(len(calls) - 1, int(len(calls) * 0.99))] / 1000,
                   runlens_cpu_s=runlens_cpu, runlens_cpu_by_thread={k: cpu1.get(k, 0) - cpu0.get(k, 0) for k in cpu1},
                   runlens_cpu_issued_s=sum(cpu_issued.values()) - sum(cpu0.values()),
                   runlens_core_pct=100 * runlens_cpu / wall,
                   on_disk_issued_pct=100 * on_disk_issued / args.steps,
                   on_disk_done_pct=100 * on_disk_done / args.steps)
        mon.close()
        out["on_disk_closed_pct"] = 100 * _steps_stored(reader, mon) / args.steps
        out["gpu_samples"] = _gpu_samples(reader, job_id)
        out["job_id"] = job_id
        reader.close()
    _emit(out)


def _old_path() -> None:
    """The Monitor as it was: each CUDA value resolved by ``.item()`` on the writer thread (a spinning sync)."""
    try:
        from runlens.collect.device_scalars import DeviceScalarResolver
    except ImportError:
        return
    DeviceScalarResolver.resolve = lambda self, rows, block=False: rows  # type: ignore[method-assign]
    DeviceScalarResolver.resolve_all = lambda self, rows=(): list(rows)  # type: ignore[method-assign]


def _steps_stored(reader: Any, mon: Any) -> int:
    if reader is None or mon is None:
        return 0
    # Warm-up steps are stored with negative numbers; only the timed loop's count.
    return sum(1 for r in reader.rows("step_metrics", mon.job_id, columns=["step"]) if r["step"] >= 0)


def _gpu_samples(reader: Any, job_id: str) -> dict[str, Any]:
    rows = reader.rows("gpu_samples", job_id)
    used = [r["memory_used_gb"] for r in rows if r.get("memory_used_gb") is not None]
    total = [r["memory_total_gb"] for r in rows if r.get("memory_total_gb") is not None]
    return {"rows": len(rows), "max_used_gib": max(used) if used else None,
            "total_gib": max(total) if total else None}


def _nvml_process(torch: Any) -> dict[str, Any]:
    """This process's memory as NVML sees it, beside the device's and torch's own counters."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        mine = [p for p in procs if p.pid == os.getpid()]
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        used_by_me = mine[0].usedGpuMemory if mine else None
        return {"pids_seen": [p.pid for p in procs], "my_pid": os.getpid(),
                "process_gib": used_by_me / GiB if isinstance(used_by_me, int) else None,
                "device_used_gib": mem.used / GiB, "device_total_gib": mem.total / GiB,
                "torch_reserved_gib": torch.cuda.memory_reserved() / GiB,
                "torch_allocated_gib": torch.cuda.memory_allocated() / GiB}
    except Exception as exc:  # the check reports what failed; it never stops the loop
        return {"error": f"{type(exc).__name__}: {exc}"}


def child_start(args: argparse.Namespace) -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.zeros(1, device="cuda")   # CUDA up first, as in a training script: not runlens's time
    except ImportError:
        pass
    t0 = time.perf_counter()
    import runlens

    out: dict[str, Any] = {"import_s": time.perf_counter() - t0}
    for which in ("first", "second"):
        mon = runlens.Monitor(name=f"gpu-check-start-{which}", db=args.db)
        t0 = time.perf_counter()
        mon.start()
        out[f"{which}_start_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mon.close()
        out[f"{which}_close_s"] = time.perf_counter() - t0
    _emit(out)


def child_oom(args: argparse.Namespace) -> None:
    """Doubles the batch until the device runs out of memory; the OutOfMemoryError ends the process."""
    import torch

    import runlens

    device = args.device
    width = 8192 if device == "cuda" else 64
    w = torch.randn(width, width, device=device, dtype=torch.bfloat16) / width**0.5
    with runlens.Monitor(name="gpu-check-oom") as mon:
        Path(args.job_file).write_text(str(mon.job_id))
        batch = 4096
        for step in range(40):
            if device != "cuda" and step == 3:   # --smoke-cpu: the error a GPU would raise, without eating RAM
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB (smoke test)")
            x = torch.randn(batch, width, device=device, dtype=torch.bfloat16)
            acts = [x]
            for _ in range(4):   # activations kept, as for a backward pass
                acts.append(torch.relu(acts[-1] @ w))
            loss = acts[-1].float().pow(2).mean()
            mon.step(step, loss=loss, batch_size=batch)
            print(f"step {step} batch {batch} loss {loss.item():.4f}", flush=True)
            del acts, x
            batch *= 2
    print("no OOM reached", flush=True)


# -- the parent ---------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.deadline = time.monotonic() + args.budget
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLENS_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env.update(PYTHONUNBUFFERED="1", RUNLENS_SAMPLE_INTERVAL="1")
        self.env = env
        self.n = 0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def child(self, name: str, argv: list[str], timeout: float, *, wrap: list[str] | None = None,
              env: dict[str, str] | None = None) -> tuple[dict[str, Any] | None, subprocess.CompletedProcess[str]]:
        self.n += 1
        cmd = [*(wrap or [sys.executable]), str(Path(__file__).resolve()), *argv]
        try:
            proc = subprocess.run(cmd, cwd=self.work, env=env or self.env, capture_output=True, text=True,
                                  timeout=max(5.0, min(timeout, self.left())))
        except subprocess.TimeoutExpired as exc:
            proc = subprocess.CompletedProcess(cmd, 124, _text(exc.stdout), _text(exc.stderr) + "\n[timed out]")
        (self.work / f"{self.n:02d}-{name}.log").write_text(
            f"$ {' '.join(cmd)}\nexit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        result = None
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        return result, proc


def _text(data: Any) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _why(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
    return f"exit {proc.returncode}: {lines[-1][:160] if lines else 'no output'}"


def check_loop(r: Runner, probe: dict[str, Any], results: dict[str, Any]) -> None:
    a = r.args
    matmuls = a.matmuls or max(1, round(a.target_ms / max(probe["matmul_ms"], 1e-3)))
    results["loop_config"] = {"matmuls": matmuls, "size": a.size, "steps": a.steps, "pairs": a.pairs}
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    errors: list[str] = []
    for pair in range(a.pairs):
        if pair and r.left() < 60:
            errors.append(f"stopped after {pair} pairs: time budget")
            break
        for arm in ARMS:
            argv = ["--child", "loop", "--arm", arm, "--device", "cpu" if probe.get("smoke") else "cuda", "--steps", str(a.steps), "--warmup", str(a.warmup),
                    "--size", str(a.size), "--matmuls", str(matmuls), "--db", f"sqlite:///{r.work / f'loop-{arm}.db'}"]
            if pair == 0 and arm == "monitor":
                argv.append("--nvml")
            res, proc = r.child(f"loop-{arm}-{pair}", argv, timeout=180)
            if res is None:
                errors.append(f"{arm} #{pair}: {_why(proc)}")
            else:
                runs[arm].append(res)
    results["loop_runs"] = runs
    results["loop_errors"] = errors


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def loop_rows(results: dict[str, Any], skip: str | None) -> list[tuple[str, str]]:
    if skip:
        return [("GPU-bound loop", f"skipped: {skip}")]
    runs, cfg = results["loop_runs"], results["loop_config"]
    rows = [("GPU-bound loop", f"{cfg['steps']} steps x {cfg['matmuls']} matmuls {cfg['size']}² bf16, "
                               f"{min(len(v) for v in runs.values())} interleaved runs per arm, medians")]
    if results["loop_errors"]:
        rows.append(("  errors", "; ".join(results["loop_errors"])[:300]))
    bare = _median(runs["bare"], "step_ms")

    def per_arm(key: str, fmt: str, arms: tuple[str, ...] = ARMS[1:]) -> str:
        parts = []
        for arm in arms:
            v = _median(runs[arm], key)
            parts.append(f"{ARM_LABEL[arm]} {'n/a' if v is None else format(v, fmt)}")
        return " | ".join(parts)

    rows.append(("  step time ms", per_arm("step_ms", ".2f", ARMS)))
    if bare:
        rows.append(("  step time vs bare", " | ".join(
            f"{ARM_LABEL[arm]} {(_median(runs[arm], 'step_ms') or float('nan')) / bare:.3f}x" for arm in ARMS[1:])))
    rows.append(("  mon.step() µs median", per_arm("step_call_us_median", ".2f")))
    rows.append(("  mon.step() µs p99", per_arm("step_call_us_p99", ".2f")))
    rows.append(("  runlens threads, % of a core", per_arm("runlens_core_pct", ".1f")))
    rows.append(("  process CPU s", per_arm("process_cpu_s", ".2f", ARMS)))
    rows.append(("  steps stored, last step issued %", per_arm("on_disk_issued_pct", ".0f")))
    rows.append(("  steps stored, GPU done %", per_arm("on_disk_done_pct", ".0f")))
    rows.append(("  steps stored, after close %", per_arm("on_disk_closed_pct", ".0f")))
    return rows


def check_start(r: Runner) -> tuple[str, str]:
    res, proc = r.child("start", ["--child", "start", "--db", f"sqlite:///{r.work / 'start.db'}"], timeout=120)
    if res is None:
        return ("Monitor start", f"failed: {_why(proc)}")
    return ("Monitor start (fresh process)",
            f"import runlens {res['import_s']:.2f} s; first start {res['first_start_s']:.3f} s "
            f"(close {res['first_close_s']:.3f} s); second start {res['second_start_s']:.3f} s "
            f"(close {res['second_close_s']:.3f} s)")


def check_oom(r: Runner) -> tuple[str, str]:
    db = f"sqlite:///{r.work / 'oom.db'}"
    job_file = r.work / "oom-job.txt"
    runlens_cmd = [sys.executable, "-m", "runlens"]
    device = "cpu" if r.args.smoke_cpu else "cuda"
    _, proc = r.child("oom", ["--child", "oom", "--job-file", str(job_file), "--device", device], timeout=150,
                      wrap=[*runlens_cmd, "collect", "--db", db, "--log", str(r.work / "oom-log.txt"),
                            "--name", "gpu-check-oom", "--", sys.executable])
    if not job_file.exists():
        return ("CUDA OOM end to end", f"failed before the Monitor started: {_why(proc)}")
    job_id = job_file.read_text().strip()
    if "no OOM reached" in proc.stdout:
        return ("CUDA OOM end to end", "no OOM reached after 40 doublings")
    from runlens.store import open_store

    store = open_store(db, create=False)
    try:
        events = [e["event_type"] for e in store.rows("training_events", job_id)]
    finally:
        store.close()
    html = r.work / "oom-report.html"
    analyzed = subprocess.run([*runlens_cmd, "analyze", job_id, "--json", "--html", str(html), "--db", db],
                              cwd=r.work, env=r.env, capture_output=True, text=True, timeout=max(10, r.left()))
    (r.work / "oom-analysis.json").write_text(analyzed.stdout)
    (r.work / "oom-analyze.stderr").write_text(analyzed.stderr)
    try:
        doc = json.loads(analyzed.stdout)
    except ValueError:
        return ("CUDA OOM end to end", f"cuda_oom event: {'cuda_oom' in events}; analyze {_why(analyzed)}")
    recs = doc.get("recommendations") or [{}]
    top = recs[0]
    return ("CUDA OOM end to end",
            f"exit {proc.returncode}; cuda_oom event: {'yes' if 'cuda_oom' in events else 'NO'}; "
            f"health {doc.get('summary', {}).get('health_score')}; top: {top.get('title')!r} -> "
            f"{str(top.get('action'))[:120]!r}; report {'written' if html.exists() else 'MISSING'} "
            f"({html.stat().st_size if html.exists() else 0} bytes)")


def nvml_row(results: dict[str, Any]) -> tuple[str, str]:
    runs = results.get("loop_runs", {}).get("monitor", [])
    first = next((r for r in runs if r.get("nvml")), None)
    if first is None:
        return ("NVML per-process memory", "skipped: no monitored loop ran")
    n, g = first["nvml"], first.get("gpu_samples") or {}
    if "error" in n:
        return ("NVML per-process memory", f"failed: {n['error']}")
    proc = "not listed" if n["process_gib"] is None else f"{n['process_gib']:.2f} GiB"
    stored = "none" if not g.get("rows") else f"max used {g['max_used_gib']:.2f} / {g['total_gib']:.2f} GiB"
    return ("NVML per-process memory",
            f"this process {proc} (pids seen {n['pids_seen']}, mine {n['my_pid']}); device used "
            f"{n['device_used_gib']:.2f} / {n['device_total_gib']:.2f} GiB; torch reserved "
            f"{n['torch_reserved_gib']:.2f} GiB; runlens gpu_samples {stored} ({g.get('rows', 0)} rows)")


def render(rows: list[tuple[str, str]], title: str) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * min(160, len(title))]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600, help="timed steps per loop run")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--pairs", type=int, default=3, help="interleaved rounds of the three loop arms")
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--matmuls", type=int, default=0, help="products per step (default: sized to --target-ms)")
    p.add_argument("--target-ms", type=float, default=10.0)
    p.add_argument("--budget", type=float, default=270.0, help="seconds; later loop rounds are dropped past it")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--smoke-cpu", action="store_true",
                   help="run the loop rows on the CPU with a small matrix: a test of this script, not of runlens")
    p.add_argument("--child", choices=("probe", "loop", "start", "oom"), help=argparse.SUPPRESS)
    p.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--nvml", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--job-file", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("RUNLENS_ANALYZE_ON_COMPLETE", "0")   # the children's jobs: no analysis beside a timing
    if args.child:
        {"probe": child_probe, "loop": child_loop, "start": child_start, "oom": child_oom}[args.child](args)
        return 0

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))   # the checkout's runlens, installed or not
    work = Path(args.out).resolve() / f"gpu_check-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    r = Runner(args, work)
    t0 = time.monotonic()
    results: dict[str, Any] = {"argv": sys.argv, "python": sys.version.split()[0]}
    probe: dict[str, Any]
    if args.smoke_cpu:
        probe = {"cuda": True, "device": "CPU (smoke test of this script)", "torch": "?", "cuda_version": None,
                 "matmul_ms": 1.0, "smoke": True}
    elif importlib.util.find_spec("torch") is None:
        probe = {"cuda": False, "why": "torch is not installed"}
    else:
        found, proc = r.child("probe", ["--child", "probe", "--size", str(args.size)], timeout=120)
        probe = found or {"cuda": False, "why": f"probe failed, {_why(proc)}"}
    results["probe"] = probe
    skip = None if probe.get("cuda") else probe.get("why", "no CUDA device")
    rows: list[tuple[str, str]] = []
    if skip is None:
        check_loop(r, probe, results)
    rows += loop_rows(results, skip)
    rows.append(check_start(r))
    rows.append(("CUDA OOM end to end", f"skipped: {skip}") if skip else check_oom(r))
    rows.append(("NVML per-process memory", f"skipped: {skip}") if skip else nvml_row(results))
    rows.append(("wall time", f"{time.monotonic() - t0:.0f} s; full output in {work}"))
    device = (f"{probe['device']}, torch {probe['torch']} (CUDA {probe['cuda_version']})" if skip is None
              else "no GPU")
    table = render(rows, f"runlens GPU check: {device}")
    results["table"] = table
    (work / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    (work / "table.txt").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
