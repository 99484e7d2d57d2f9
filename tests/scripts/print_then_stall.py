"""A child that prints progress but never calls runlens, then goes silent forever.

    python tests/scripts/print_then_stall.py --lines 10 --every 0.1

The stall releases the GIL (an Event that is never set), so py-spy sees this function.
"""

from __future__ import annotations

import argparse
import threading
import time


def stall_without_output() -> None:
    """Waits forever and prints nothing. Tests look for this function in the stacks."""
    threading.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=10)
    p.add_argument("--every", type=float, default=0.1)
    args = p.parse_args()
    for i in range(args.lines):
        print(f"step {i} loss {1.0 / (i + 1):.4f}", flush=True)
        time.sleep(args.every)
    stall_without_output()


if __name__ == "__main__":
    main()
