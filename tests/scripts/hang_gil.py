"""A training loop with a Monitor inside that blocks at step N in a native call that HOLDS the GIL.

    python tests/scripts/hang_gil.py --hang-at 6 [--release-after 4] [--monitor '{"hang_timeout": 2}']

``ctypes.PyDLL`` keeps the GIL during the call (``ctypes.CDLL`` would release it). The call locks a pthread mutex
it already holds: a real native deadlock, which signals do not interrupt (``libc.sleep`` would return early on
the first signal, SIGUSR2 included, and end the "hang"). Every Python thread, the Monitor's watchdog and writer
included, is starved; only faulthandler's C timer and py-spy can see it. ``--release-after S`` holds the GIL in
a busy C loop for about S seconds instead, then carries on (the in-process "late" detection).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time

import runlens


def hold_the_gil_forever() -> None:
    """Deadlock inside C with the GIL held. Tests look for this function in the stacks."""
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)   # zeroed = PTHREAD_MUTEX_INITIALIZER on glibc
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)            # a default mutex locked again by its owner: never returns


def hold_the_gil_for(seconds: float) -> None:
    """Spin in C with the GIL held for about ``seconds`` (builtin sum over a range never lets the GIL go)."""
    t0 = time.perf_counter()
    n = 2_000_000
    sum(range(n))
    per = (time.perf_counter() - t0) / n
    sum(range(int(seconds / max(per, 1e-10))))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--hang-at", type=int, default=6)
    p.add_argument("--step-time", type=float, default=0.05)
    p.add_argument("--release-after", type=float, default=None)
    p.add_argument("--monitor", default="{}", help="Monitor keyword arguments as JSON")
    args = p.parse_args()
    with runlens.Monitor(name="hang-gil", **json.loads(args.monitor)) as mon:
        for step in range(args.steps):
            if step == args.hang_at:
                # The step's own Python work first, long enough for the writer to store the steps before it:
                # once the GIL is held, no Python thread can flush what is still buffered.
                time.sleep(0.6)
                print(f"holding the GIL at step {step}", flush=True)
                if args.release_after is not None:
                    hold_the_gil_for(args.release_after)
                else:
                    hold_the_gil_forever()
            time.sleep(args.step_time)
            mon.step(step, loss=1.0 / (step + 1))
            if args.release_after is not None and step > args.hang_at + 3:
                break


if __name__ == "__main__":
    main()
