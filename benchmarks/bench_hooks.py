"""Each integration's per-step hook with nothing pending (a benchmark, not a test).

What the training loop pays us every step, above what its own dispatch costs: each
integration's step-end hook, called as its trainer calls it (the same arguments), against
a hook of the same signature that does nothing, in the same run, interleaved round by
round (issue 24: at most ``--budget`` ns added, default 100):

- ``Controller.step``: a plain loop's ``ctl.step(step, metrics)``, the metrics dict it
  passes against a call that only takes it;
- HF's ``TrainerControlCallback.on_step_end(args, state, control, model=..., ...)`` (the
  Forgather framework's trainers call the same);
- Lightning's ``on_train_batch_end(trainer, module, outputs, batch, batch_idx)``.

No trainer is imported: the objects are the shapes the hooks read. The Controller is
started (its I/O round runs) and no command comes, so every step is between checks.

    python benchmarks/bench_hooks.py [--steps 200000] [--rounds 21] [--budget 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any

from forgather_control.callback import Controller
from forgather_control.callback.hf import TrainerControlCallback
from forgather_control.callback.lightning import LightningControl


class _Noop:
    """A hook that does nothing, with each integration's signature."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        return control

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        return None

    def step(self, step: int, metrics: Any = None) -> Any:
        return None


def _time(call: Any, n: int) -> float:
    t = time.perf_counter()
    for i in range(1, n + 1):
        call(i)
    return (time.perf_counter() - t) / n * 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=21, help="the median of this many: a hook is tens of ns on a call of hundreds")
    p.add_argument("--budget", type=float, default=100.0, help="ns a hook may add to a step")
    args = p.parse_args(argv)
    noop = _Noop()
    with tempfile.TemporaryDirectory() as tmp:
        ctl = Controller(job_id="bench-hooks", jobs_dir=tmp, enable_http=False, signals=(), check_interval=1e9).start()
        ctl.step(0)  # the first step is always a check; every later one is not
        hf = TrainerControlCallback(controller=ctl)
        hf_args, hf_control = SimpleNamespace(), SimpleNamespace(should_training_stop=False)
        hf_state = SimpleNamespace(global_step=0, epoch=0.0)
        kw = {
            "model": object(),
            "processing_class": None,
            "optimizer": object(),
            "lr_scheduler": object(),
            "train_dataloader": object(),
            "eval_dataloader": None,
        }
        lit = LightningControl(controller=ctl)
        optimizer = SimpleNamespace(param_groups=[{"lr": 1e-3}])
        trainer = SimpleNamespace(global_step=0, current_epoch=0, optimizers=[optimizer])
        outputs = {"loss": 0.5}
        metrics = {"loss": 0.5}

        def hf_call(hook: Any) -> Any:
            def call(i: int) -> None:
                hf_state.global_step = i
                hook.on_step_end(hf_args, hf_state, hf_control, **kw)

            return call

        def lightning_call(hook: Any) -> Any:
            def call(i: int) -> None:
                trainer.global_step = i
                hook.on_train_batch_end(trainer, None, outputs, None, i)

            return call

        def plain_call(hook: Any) -> Any:
            def call(i: int) -> None:
                hook.step(i, metrics)

            return call

        pairs = {
            "Controller.step (a plain loop)": (plain_call(ctl), plain_call(noop)),
            "HF / Forgather on_step_end": (hf_call(hf), hf_call(noop)),
            "Lightning on_train_batch_end": (lightning_call(lit), lightning_call(noop)),
        }
        added: dict[str, list[float]] = {k: [] for k in pairs}
        for r in range(args.rounds + 1):
            for name, (ours, base) in pairs.items():
                ctl.check_interval = 1e9
                ctl._next_check = 1 << 62  # no check in the measured steps: nothing is pending
                a, b = _time(ours, args.steps), _time(base, args.steps)
                if r:
                    added[name].append(a - b)
        ctl.close()
    failed = []
    print(f"{'hook':<36}{'ns added a step (median of rounds)':>36}")
    for name, xs in added.items():
        med = statistics.median(xs)
        print(f"{name:<36}{med:>36.1f}")
        if med > args.budget:
            failed.append(f"{name}: {med:.0f} ns")
    print(f"budget: {args.budget:.0f} ns")
    print("FAIL: " + "; ".join(failed) if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
