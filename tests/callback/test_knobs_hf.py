"""Issue 22: the knobs HF's Trainer and the Forgather framework's trainers honour, declared
by the control callback at train begin.

The quick tests drive the callback with objects shaped like each trainer's (their
``args``/``state``/``control``, a dataloader with or without a length, the framework's
``PeriodicFunction``), in this process, one rank: which knobs each configuration gets,
what a change writes into the trainer, and where ``max_steps`` may go. The real jobs
(two ranks, torchrun, gloo) follow, marked slow: HF with a linear schedule under
``forgather launch`` (``lr_scale`` on every rank at the same step and 100 steps later,
``save_every``, ``max_steps`` refused beyond what HF's loop reaches, extended, then
shortened below the step), and the framework's own trainers on Python 3.12.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from forgather_control.callback import Controller
from forgather_control.callback.forgather import Periods, declare_knobs
from forgather_control.callback.hf import TrainerControlCallback, _hf_last_step
from forgather_control.core.commands import KnobRefused
from forgather_control.core.records import CommandOptions, KnobChange


# -- HF-shaped objects -----------------------------------------------------------------------
@dataclasses.dataclass
class HFArgs:
    output_dir: str = "/nonexistent"
    max_steps: int = 25
    num_train_epochs: float = 3.0
    gradient_accumulation_steps: int = 1
    save_strategy: str = "steps"
    eval_strategy: str = "no"
    logging_strategy: str = "steps"
    max_grad_norm: float = 1.0
    load_best_model_at_end: bool = False
    deepspeed: Any = None


@dataclasses.dataclass
class HFState:
    global_step: int = 0
    max_steps: int = 25
    epoch: float = 0.0
    logging_steps: int = 5
    eval_steps: int = 10
    save_steps: int = 500


@dataclasses.dataclass
class HFControl:
    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False


class Optimizer:
    """A torch optimizer's shape: parameter groups with a rate."""

    def __init__(self, lr: float) -> None:
        self.param_groups = [{"lr": lr, "initial_lr": lr}]


class Scheduler:
    """A LambdaLR's shape: base rates it recomputes from."""

    def __init__(self, opt: Optimizer) -> None:
        self.base_lrs = [g["initial_lr"] for g in opt.param_groups]
        self._last_lr = list(self.base_lrs)


class Loader:
    def __init__(self, n: int | None) -> None:
        self.n = n

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError("no length")
        return self.n


class HFRun:
    """The calls HF's loop makes to its callbacks, DefaultFlowCallback's rules included
    (it runs before ours), without transformers."""

    def __init__(self, ctl: Controller, batches: int | None = 10, **args: Any) -> None:
        self.args, self.state, self.control = HFArgs(**args), HFState(), HFControl()
        self.state.max_steps = self.args.max_steps
        self.opt = Optimizer(0.1)
        self.sched = Scheduler(self.opt)
        self.loader = Loader(batches)
        self.cb = TrainerControlCallback(ctl)
        self.saves: list[int] = []

    def kwargs(self) -> dict[str, Any]:
        return {"optimizer": self.opt, "lr_scheduler": self.sched, "train_dataloader": self.loader, "model": None}

    def begin(self) -> None:
        self.cb.on_train_begin(self.args, self.state, self.control, **self.kwargs())

    def step(self) -> None:
        s, a, c = self.state, self.args, self.control
        s.global_step += 1
        if a.save_strategy == "steps" and s.global_step % s.save_steps == 0:  # DefaultFlowCallback
            c.should_save = True
        if s.global_step >= s.max_steps:
            c.should_training_stop = True
            c.should_save = a.save_strategy == "steps"
        self.control = self.cb.on_step_end(a, s, c, **self.kwargs())
        if self.control.should_save:
            self.saves.append(s.global_step)
            self.control.should_save = False


def controller(jobs_dir: Path, job_id: str) -> Controller:
    return Controller(job_id=job_id, jobs_dir=jobs_dir, enable_http=False, signals=(), check_interval=0.0)


def set_knobs(ctl: Controller, **changes: Any) -> str:
    entry, _ = ctl.ledger.submit("set", options=CommandOptions(changes=[KnobChange(name=k, value=v) for k, v in changes.items()]))
    return entry.id


def test_hf_gets_the_knobs_its_configuration_honours(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "hf-knobs")
    run = HFRun(ctl)
    run.begin()
    with ctl:
        knobs = {k.name: k for k in ctl.knobs.settings() or []}
        assert sorted(knobs) == ["log_every", "lr", "lr_scale", "max_grad_norm", "max_steps", "save_every"]  # eval is "no"
        assert (knobs["save_every"].value, knobs["log_every"].value, knobs["max_grad_norm"].value) == (500, 5, 1.0)
        # max_steps 25 at 10 steps an epoch: HF's loop runs 3 epochs, to step 30 at most
        assert (knobs["max_steps"].value, knobs["max_steps"].min, knobs["max_steps"].max) == (25, 1, 30)
        assert ctl.max_steps == 25


@pytest.mark.parametrize(
    "args, missing",
    [
        ({"save_strategy": "epoch"}, "save_every"),
        ({"save_strategy": "best"}, "save_every"),
        ({"logging_strategy": "epoch"}, "log_every"),
        ({"deepspeed": "ds.json"}, "max_grad_norm"),  # DeepSpeed's engine clips by its own config
    ],
)
def test_an_hf_interval_that_would_do_nothing_is_not_offered(jobs_dir: Path, args: dict[str, Any], missing: str) -> None:
    ctl = controller(jobs_dir, "hf-some")
    run = HFRun(ctl, **args)
    run.begin()
    with ctl:
        assert missing not in ctl.knobs and "lr_scale" in ctl.knobs


@pytest.mark.parametrize(
    "batches, args, last",
    [
        (10, {"max_steps": 25}, 30),  # the epoch max_steps falls in ends the loop
        (10, {"max_steps": 30}, 30),
        (10, {"max_steps": 25, "gradient_accumulation_steps": 3}, 28),  # 4 optimizer steps an epoch (the last of 1 batch), 7 epochs
        (10, {"max_steps": -1, "num_train_epochs": 2.5}, 30),  # epoch-based: ceil(2.5) epochs
        (None, {"max_steps": 25}, None),  # no length: sys.maxsize epochs, no bound
    ],
)
def test_hf_max_steps_is_bounded_by_the_epochs_its_loop_computed_at_start(batches: int | None, args: dict[str, Any], last: int | None) -> None:
    assert _hf_last_step(None, HFArgs(**args), Loader(batches)) == last


def test_hf_save_every_and_max_steps_change_what_the_flow_reads(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "hf-set")
    run = HFRun(ctl, max_steps=25)
    run.begin()
    with ctl:
        run.step()
        set_knobs(ctl, save_every=4, max_steps=30, max_grad_norm=0.5)
        run.step()  # applied here, after the flow decided this step
        assert (run.state.save_steps, run.state.max_steps, run.args.max_grad_norm, ctl.max_steps) == (4, 30, 0.5, 30)
        while not run.control.should_training_stop:
            run.step()
        assert run.state.global_step == 30 and run.saves == [4, 8, 12, 16, 20, 24, 28, 30]
        # beyond what the loop reaches (3 epochs of 10): refused before anything is queued
        with pytest.raises(KnobRefused, match="max_steps must be at most 30, not 31"):
            set_knobs(ctl, max_steps=31)
        assert [str(e.command) for e in ctl.ledger.recent(10)] == ["set"]


def test_hf_max_steps_below_the_step_ends_training_there_as_the_flow_would(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "hf-short")
    run = HFRun(ctl, max_steps=30)
    run.begin()
    with ctl:
        for _ in range(7):
            run.step()
        command = set_knobs(ctl, max_steps=3)
        run.step()
        entry = ctl.ledger.get(command)
        assert entry.state.value == "completed" and entry.step == 8
        assert run.control.should_training_stop and run.saves == [8] and run.state.max_steps == 3  # the end's save, save_strategy "steps"
    assert ctl.state.value == "finished"


def test_hf_lr_scale_scales_the_groups_and_the_schedulers_base_rates(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "hf-lr")
    run = HFRun(ctl)
    run.begin()
    with ctl:
        set_knobs(ctl, lr_scale=0.5)
        run.step()
        assert run.opt.param_groups[0]["lr"] == run.opt.param_groups[0]["initial_lr"] == 0.05
        assert run.sched.base_lrs == [0.05] and ctl.knobs["lr_scale"] == 0.5


def test_hf_with_load_best_model_at_end_keeps_save_every_a_multiple_of_eval_every(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "hf-best")
    run = HFRun(ctl, eval_strategy="steps", load_best_model_at_end=True)
    run.state.save_steps = 20
    run.begin()
    with ctl:
        command = set_knobs(ctl, save_every=15)
        run.step()
        entry = ctl.ledger.get(command)
        assert entry.state.value == "failed" and run.state.save_steps == 20, entry
        set_knobs(ctl, save_every=30)
        run.step()
        assert run.state.save_steps == 30


# -- framework-shaped objects ----------------------------------------------------------------
class PeriodicFunction:
    """forgather.ml.trainer.periodic_function.PeriodicFunction: fires ``period`` steps
    after its last reset."""

    def __init__(self, period: int) -> None:
        self.period, self.rel_step = period, 0

    def step(self) -> bool:
        self.rel_step += 1
        return self.rel_step >= self.period

    def reset(self) -> None:
        self.rel_step = 0


@dataclasses.dataclass
class FGArgs:
    output_dir: str = "/nonexistent"
    save_strategy: str = "steps"
    eval_strategy: str = "no"
    logging_strategy: str = "steps"
    save_steps: int = 1000
    eval_steps: int = 100
    logging_steps: int = 50
    max_grad_norm: float | None = None
    fuse_optim_with_backward: bool = False


@dataclasses.dataclass
class FGState:
    global_step: int = 0
    max_steps: int = 40
    epoch: float = 0.0
    save_steps: int = 1000


class FGTrainer:
    """The parts of ``forgather.ml.trainer.Trainer._train_loop`` the knobs reach: the
    loop's PeriodicFunction locals handed to ``_maybe_log_save_evaluate`` every step, and
    its end where ``global_step >= self.max_steps``."""

    def __init__(self, callback: TrainerControlCallback, **args: Any) -> None:
        self.args, self.state, self.control = FGArgs(**args), FGState(), HFControl()
        self.max_steps = 40
        self.optimizer = Optimizer(0.1)
        self.lr_scheduler = Scheduler(self.optimizer)
        self.callback = callback
        self.saves: list[int] = []

    def _maybe_log_save_evaluate(self, loss_log: Any, total_norm_log: Any, periodic_log: Any, periodic_eval: Any, periodic_save: Any) -> None:
        if periodic_save.step():
            periodic_save.reset()
            self.saves.append(self.state.global_step)

    def kwargs(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "lr_scheduler": self.lr_scheduler, "train_dataloader": None, "model": None}

    def begin(self) -> None:
        self.periodic = [PeriodicFunction(self.args.logging_steps), PeriodicFunction(self.args.eval_steps), PeriodicFunction(self.args.save_steps)]
        self.callback.on_train_begin(self.args, self.state, self.control, **self.kwargs())

    def step(self) -> bool:
        """One step of the loop; False once it ends."""
        self.state.global_step += 1
        self.callback.on_step_end(self.args, self.state, self.control, **self.kwargs())
        self._maybe_log_save_evaluate([], [], *self.periodic)
        return self.state.global_step < self.max_steps


FGTrainer.__module__ = "forgather.ml.trainer.trainer"


def test_the_frameworks_trainer_gets_its_knobs_and_a_change_reaches_its_loop(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "fg-knobs")
    cb = TrainerControlCallback(ctl)
    trainer = FGTrainer(cb)
    cb.bind(trainer)
    trainer.begin()
    with ctl:
        knobs = {k.name: k for k in ctl.knobs.settings() or []}
        assert sorted(knobs) == ["log_every", "lr", "lr_scale", "max_grad_norm", "max_steps", "save_every"]  # eval is "no"
        assert (knobs["max_steps"].value, knobs["max_steps"].max, knobs["max_grad_norm"].value) == (40, None, 0.0)  # its loop has no other bound
        trainer.step()
        set_knobs(ctl, save_every=5, max_steps=60, max_grad_norm=2.0)
        while trainer.step():
            pass
        assert (trainer.max_steps, trainer.state.max_steps, trainer.state.save_steps, trainer.args.max_grad_norm) == (60, 60, 5, 2.0)
        assert trainer.state.global_step == 60 and trainer.saves == list(range(5, 61, 5))  # counted from the last save (none)


def test_the_frameworks_max_steps_below_the_step_ends_its_loop_there(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "fg-short")
    cb = TrainerControlCallback(ctl)
    trainer = FGTrainer(cb)
    cb.bind(trainer)
    trainer.begin()
    with ctl:
        for _ in range(5):
            trainer.step()
        command = set_knobs(ctl, max_steps=2)
        assert not trainer.step()
        assert trainer.state.global_step == 6 and ctl.ledger.get(command).step == 6
    assert ctl.state.value == "finished"


def test_the_frameworks_knobs_need_its_trainer_and_fused_steps_cannot_clip(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "fg-fused")
    trainer = FGTrainer(TrainerControlCallback(ctl), fuse_optim_with_backward=True, save_strategy="no")
    with ctl:
        assert declare_knobs(ctl, trainer, Periods()) == ["max_steps", "log_every"]
        assert declare_knobs(ctl, None, Periods()) == []


def test_periods_wrap_the_loops_method_once(jobs_dir: Path) -> None:
    trainer = FGTrainer(TrainerControlCallback(controller(jobs_dir, "fg-once")))
    periods = Periods()
    assert periods.attach(trainer) and periods.attach(trainer)
    first = trainer._maybe_log_save_evaluate
    assert Periods().attach(trainer) and trainer._maybe_log_save_evaluate.__wrapped__ is first.__wrapped__  # replaced, not stacked
    assert not Periods().attach(object())
