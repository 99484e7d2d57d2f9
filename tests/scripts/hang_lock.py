"""A training loop with a Monitor inside that deadlocks on a ``threading.Lock`` at step N (for tests/test_hangs.py).

    python tests/scripts/hang_lock.py --hang-at 8 --step-time 0.05 [--monitor '{"hang_timeout": 2}']

The hang releases the GIL (a lock wait), so the Monitor's watchdog thread sees it on time.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import runlens


def deadlock_on_lock(lock: threading.Lock) -> None:
    """Take a lock this thread already holds: blocks forever. Tests look for this function in the stacks."""
    lock.acquire()
    lock.acquire()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--hang-at", type=int, default=8)
    p.add_argument("--step-time", type=float, default=0.05)
    p.add_argument("--monitor", default="{}", help="Monitor keyword arguments as JSON")
    args = p.parse_args()
    lock = threading.Lock()
    with runlens.Monitor(name="hang-lock", **json.loads(args.monitor)) as mon:
        for step in range(args.steps):
            if step == args.hang_at:
                print(f"deadlocking at step {step}", flush=True)
                deadlock_on_lock(lock)
            time.sleep(args.step_time)
            mon.step(step, loss=1.0 / (step + 1))
            print(f"step {step}", flush=True)


if __name__ == "__main__":
    main()
