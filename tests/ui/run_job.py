"""A small real training run recorded with ``runlens.Monitor`` (no torch): the jobs the ui tests look at.

    python tests/ui/run_job.py --name alpha --steps 60 [--config cfg.yaml] [--db URL] [--xss] [--until FILE]

Arguments it does not know are ignored, so tests can put secrets on its command line (``--api-key X``).
``--until FILE`` keeps stepping until FILE exists, for a job that is still running while a test watches it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import runlens

XSS = "<script>window.__pwned=1</script>"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--name", default="ui-test")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--step-time", type=float, default=0.0)
    p.add_argument("--config", default=None)
    p.add_argument("--db", default=None)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--xss", action="store_true", help="print a traceback whose message holds a <script> tag")
    p.add_argument("--until", default=None, help="step until this file exists")
    args, _unknown = p.parse_known_args()
    kwargs = {"db": args.db} if args.db else {}
    with runlens.Monitor(name=args.name, config=args.config, **kwargs) as mon:
        step = 0
        while step < args.steps or (args.until and not os.path.exists(args.until)):
            loss = 2.0 / (1 + step / 10) + (1.5 if step == args.steps // 2 else 0.0)   # one spike mid-run
            mon.step(step, loss=loss, lr=args.lr, batch_size=8,
                     grad_norm=0.5 + 0.1 * math.sin(step))
            if args.step_time:
                time.sleep(args.step_time)
            step += 1
            if step % 10 == 0:
                print(f"step {step} loss {loss:.4f}", flush=True)
        if args.xss:
            print("Traceback (most recent call last):\n"
                  '  File "train.py", line 3, in <module>\n'
                  f"RuntimeError: bad batch {XSS}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
