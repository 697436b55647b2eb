"""Per-step cost of ``Controller.step()`` with no command pending, single process.

Budget (issue 2): at most 1 us per step, median, above an empty loop measured in the
same run. The Controller is fully started (uvicorn serving, inbox poller and status
writer running), as in a real job. Prints a table; exits 1 if over budget.

    python benchmarks/bench_step.py [--steps 200000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from forgather_control.callback import Controller

BUDGET_US = 1.0


def empty_loop(n: int) -> float:
    metrics = {"loss": 0.5}
    t = time.perf_counter()
    for _ in range(n):
        pass
    _ = metrics
    return time.perf_counter() - t


def controller_loop(ctl: Controller, n: int) -> float:
    step = ctl.step
    metrics = {"loss": 0.5}
    t = time.perf_counter()
    for i in range(n):
        step(i, metrics)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d, Controller(job_id="bench", jobs_dir=d, signals=()) as ctl:
        added = []
        base = []
        for _ in range(args.repeats):
            e = empty_loop(args.steps)
            c = controller_loop(ctl, args.steps)
            base.append(e / args.steps * 1e6)
            added.append((c - e) / args.steps * 1e6)
    med = statistics.median(added)
    print(f"{'measure':<40}{'median us/step':>16}")
    print(f"{'empty loop (baseline)':<40}{statistics.median(base):>16.3f}")
    print(f"{'Controller.step added, no command':<40}{med:>16.3f}")
    print(f"{'budget':<40}{BUDGET_US:>16.3f}")
    ok = med <= BUDGET_US
    print("PASS" if ok else "FAIL: over budget")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
