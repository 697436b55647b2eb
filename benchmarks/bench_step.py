"""Per-step cost of ``Controller.step()`` with no command pending, single process.

Budget (issue 2): at most 1 us per step, median, above an empty loop measured in the
same run. The Controller is fully started (uvicorn serving, inbox poller and status
writer running), as in a real job. Prints a table; exits 1 if over budget.

Budget (issue 11): recording the metric history adds at most 0.1 us to a step: the same
loop against a Controller that records (its I/O round sampling 100 times a second, 200
times the default) and one that does not, in the same run.

Budget (issue 12): watching for stalls puts nothing on the step path: ``step()`` does
no stall work (the Controller measured above watches, as every Controller does); the
I/O round's look (``StallWatch.observe``, once per status write, every 2 s) costs at
most 5 us, measured here against an empty call in the same run.

Budget (issue 21): guards declared and none firing add at most 0.1 us to a step: a
Controller with ``nan``, ``spike`` and ``slowdown`` guards (a process alone then checks on
the clock, about once a second) against the recording one, in the same run.

Budget (issue 22): knobs declared and none pending cost nothing per step: ``step()`` does
not look at knobs (a change travels in the check's all-reduce, applied where it
resolves). A Controller with the built-in ``lr``/``lr_scale`` (an optimizer and a
scheduler), ``max_steps`` and a loop's own ``temperature`` knob, against the recording
one without knobs, in the same run: at most 0.1 us added, and the ratio of the two steps
is printed.

    python benchmarks/bench_step.py [--steps 200000] [--repeats 15] [--budget-scale 1]

``--budget-scale`` multiplies every budget (a smoke run on a busy machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from forgather_control.callback import Controller
from forgather_control.callback.stall import Phase, StallWatch
from forgather_control.core.metrics import History

BUDGET_US = 1.0
HISTORY_BUDGET_US = 0.1
STALL_LOOK_BUDGET_US = 5.0
#: Issue 21: guards declared (nan, spike, slowdown: the ones judged at checks) and none
#: firing add at most this to a step, above the same Controller without guards.
GUARDS_BUDGET_US = 0.1
GUARDS = ["nan:abort", "spike:save", "slowdown:alert"]
#: Issue 22: knobs declared and none pending add at most this to a step, above the same
#: Controller without knobs.
KNOBS_BUDGET_US = 0.1


class _Optimizer:
    """What the learning-rate knobs touch of an optimizer: its parameter groups."""

    def __init__(self) -> None:
        self.param_groups = [{"lr": 1e-4, "initial_lr": 1e-4}, {"lr": 1e-4, "initial_lr": 1e-4}]


class _Scheduler:
    """What they touch of a scheduler: its base rates and last rates."""

    def __init__(self) -> None:
        self.base_lrs = [1e-4, 1e-4]
        self._last_lr = [1e-4, 1e-4]


def declare_knobs(ctl: Controller, max_steps: int) -> None:
    """The knobs a plain loop declares: its optimizer's (lr, lr_scale), its length and one of its own."""
    ctl.optimizer(_Optimizer(), _Scheduler())
    ctl.knob("max_steps", max_steps, min=1)
    ctl.knob("temperature", 1.0, min=0.0)


def empty_loop(n: int) -> float:
    metrics = {"loss": 0.5}
    t = time.perf_counter()
    for _ in range(n):
        pass
    _ = metrics
    return time.perf_counter() - t


def controller_loop(ctl: Controller, n: int) -> float:
    """``n`` steps, numbered on from where this Controller's last loop ended (so the
    history sees new steps, as in training)."""
    step = ctl.step
    metrics = {"loss": 0.5}
    first = ctl.current_step + 1
    t = time.perf_counter()
    for i in range(first, first + n):
        step(i, metrics)
    return time.perf_counter() - t


def stall_look_us(n: int = 100_000) -> float:
    """One stall look (as the I/O round makes per status write), above an empty call."""
    watch = StallWatch()

    def empty(step: int, now: float, *, steps_per_second: float | None, phase: Phase) -> dict:
        return {}

    def run(fn) -> float:
        t = time.perf_counter()
        for i in range(n):
            fn(i // 10, 1.7e9 + i, steps_per_second=12.5, phase=Phase.TRAINING)
        return time.perf_counter() - t

    return min((run(watch.observe) - run(empty)) / n * 1e6 for _ in range(5))


def history_size(steps: int = 1_000_000) -> int:
    """Bytes of metrics.json for a run of ``steps`` logged steps."""
    history = History("size")
    for step in range(1, steps + 1):
        history.record(step, 1.7e9 + step * 0.01, {"loss": 1.0 / step, "learning_rate": 1e-4, "grad_norm": 0.5, "steps_per_second": 12.5})
        if step % 1000 == 0:
            history.record(step, 1.7e9 + step * 0.01, {"eval_loss": 2.0 / step})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "metrics.json"
        history.write(path)
        return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget (a smoke run on a busy machine)")
    args = p.parse_args(argv)
    scale = args.budget_scale
    with (
        tempfile.TemporaryDirectory() as d,
        Controller(job_id="bench", jobs_dir=d, signals=(), poll_interval=0.01) as ctl,
        Controller(job_id="bench-quiet", jobs_dir=d, signals=(), poll_interval=0.01, record_metrics=False) as quiet,
        Controller(job_id="bench-guarded", jobs_dir=d, signals=(), poll_interval=0.01, guards=GUARDS) as guarded,
        Controller(job_id="bench-knobs", jobs_dir=d, signals=(), poll_interval=0.01) as knobbed,
    ):
        total = (args.repeats + 1) * args.steps + 1
        declare_knobs(knobbed, total)
        added, base, unrecorded, guards, knobs, ratios = [], [], [], [], [], []
        for _ in range(args.repeats):
            e = empty_loop(args.steps)
            c = controller_loop(ctl, args.steps)
            q = controller_loop(quiet, args.steps)
            g = controller_loop(guarded, args.steps)
            k = controller_loop(knobbed, args.steps)
            base.append(e / args.steps * 1e6)
            added.append((c - e) / args.steps * 1e6)
            unrecorded.append((q - e) / args.steps * 1e6)
            guards.append((g - c) / args.steps * 1e6)
            knobs.append((k - c) / args.steps * 1e6)
            ratios.append(k / c)
        loss = ctl.history.as_record().series.get("loss")
        points = len(loss.step) if loss is not None else 0
        assert not guarded.guards.recent(), "a guard fired in the benchmark"
        declared = sorted(s.name for s in knobbed.knobs.settings() or [])
        assert declared == ["lr", "lr_scale", "max_steps", "temperature"] and not knobbed.knobs.changed(), declared
    med = statistics.median(added)
    history = med - statistics.median(unrecorded)
    print(f"{'measure':<44}{'median us/step':>16}")
    print(f"{'empty loop (baseline)':<44}{statistics.median(base):>16.3f}")
    print(f"{'Controller.step added, no command':<44}{med:>16.3f}")
    print(f"{'  of which recording the history':<44}{history:>16.3f}")
    print(f"{'budget (step / history)':<44}{BUDGET_US * scale:>10.3f} / {HISTORY_BUDGET_US * scale:.3f}")
    print(f"(the recording Controller kept {points} loss points)")
    guarded_us = statistics.median(guards)
    print(f"{'  with guards declared, none firing':<44}{guarded_us:>16.3f}   budget {GUARDS_BUDGET_US * scale:.3f}")
    knobs_us, ratio = statistics.median(knobs), statistics.median(ratios)
    print(f"{'  with 4 knobs declared, none pending':<44}{knobs_us:>16.3f}   budget {KNOBS_BUDGET_US * scale:.3f}   ({ratio:.2f}x the step without)")
    look = stall_look_us()
    print(f"{'stall watch on the step path':<44}{'none':>16}")
    print(f"{'  one look by the I/O round (every 2 s)':<44}{look:>16.3f}   budget {STALL_LOOK_BUDGET_US * scale:.1f}")
    print(f"metrics.json after 1,000,000 logged steps (loss, learning_rate, grad_norm, steps_per_second; eval_loss every 1,000): {history_size() / 1e6:.2f} MB")
    ok = (
        med <= BUDGET_US * scale
        and history <= HISTORY_BUDGET_US * scale
        and look <= STALL_LOOK_BUDGET_US * scale
        and guarded_us <= GUARDS_BUDGET_US * scale
        and knobs_us <= KNOBS_BUDGET_US * scale
    )
    print("PASS" if ok else "FAIL: over budget")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
