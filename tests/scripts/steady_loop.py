"""A healthy training loop with a Monitor inside: slow but steady steps, optionally a long eval phase.

    python tests/scripts/steady_loop.py --steps 12 --step-time 1.0 [--eval-at 4 --eval-seconds 5]
        [--pidfile F] [--monitor '{"hang_timeout": 3}']

For the no-false-alarm tests, and the on-demand stack dump (``--pidfile`` says when the Monitor is up).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import runlens


def evaluate(seconds: float) -> None:
    time.sleep(seconds)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--step-time", type=float, default=1.0)
    p.add_argument("--eval-at", type=int, default=None)
    p.add_argument("--eval-seconds", type=float, default=0.0)
    p.add_argument("--pidfile", default=None)
    p.add_argument("--monitor", default="{}", help="Monitor keyword arguments as JSON")
    args = p.parse_args()
    with runlens.Monitor(name="steady", **json.loads(args.monitor)) as mon:
        if args.pidfile:
            with open(args.pidfile + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(args.pidfile + ".tmp", args.pidfile)
        for step in range(args.steps):
            time.sleep(args.step_time)
            mon.step(step, loss=1.0 / (step + 1))
            if step == args.eval_at:
                with mon.phase("eval"):
                    evaluate(args.eval_seconds)


if __name__ == "__main__":
    main()
