"""Guards through each integration, in one process, without the trainer frameworks
(their callbacks are driven as the trainers drive them): ``guards=`` reaches the
Controller (and ``FORGATHER_GUARDS`` does, under the launcher's bootstrap, which passes
no options), and each integration hands the Controller this rank's own loss at every
check, as a tensor it converts only there.

- HF logs the loss only every ``logging_steps``, averaged over the ranks, and with
  ``logging_nan_inf_filter`` (on by default) never a NaN: the callback keeps what
  ``Trainer.training_step`` returned instead.
- The Forgather framework's trainers: what ``_forward_backward_step`` returned (their
  logged loss is reduced over the ranks).
- Lightning: the training_step's output, passed at each step end (a tensor).

Real trainers on real torchrun: tests/callback/test_guards_multirank.py."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from forgather_control.callback import Controller
from forgather_control.callback.hf import TrainerControlCallback
from forgather_control.callback.lightning import LightningControl
from forgather_control.core import Command

OPTIONS = {"enable_http": False, "signals": (), "check_interval": 0, "max_steps": 1000}


def test_a_nan_tensor_loss_is_voted_and_a_tensor_spike_judged(jobs_dir: Path) -> None:
    """A plain loop (or Lightning) hands the loss as a 0-dim tensor: read at the check."""
    with Controller(job_id="t-1", jobs_dir=jobs_dir, guards=["nan:abort"], **OPTIONS) as ctl:
        assert not ctl.step(1, {"loss": torch.tensor(1.0)})
        act = ctl.step(2, {"loss": torch.tensor(math.nan)})
        assert act.abort and "the loss is nan on rank 0 at step 2" in (act.reason or "")
    with Controller(job_id="t-2", jobs_dir=jobs_dir, guards=["spike:save,window=3,times=1"], **OPTIONS) as ctl:
        for step in range(1, 5):
            assert not ctl.step(step, {"loss": torch.tensor(1.0)})
        act = ctl.step(5, {"loss": torch.tensor(100.0)})
        assert act.save and act.command == Command.SAVE_CHECKPOINT
    with Controller(job_id="t-3", jobs_dir=jobs_dir, guards=["nan:abort"], **OPTIONS) as ctl:
        assert not ctl.step(1, {"loss": torch.ones(3)})  # not a scalar: no verdict, no error
        assert not ctl.step(2, {"loss": "nan"})  # a text is not a loss


class FakeHF:
    """What the callback reads of an HF Trainer, with a training step that returns the
    loss the test sets (HF returns ``loss.detach()``)."""

    def __init__(self) -> None:
        self.next_loss = torch.tensor(1.0)
        self.calls = 0

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        self.calls += 1
        return self.next_loss


def hf_events(cb: TrainerControlCallback) -> tuple[Any, Any, Any]:
    args = SimpleNamespace(save_strategy="steps", eval_strategy="no", output_dir="out")
    state = SimpleNamespace(max_steps=100, epoch=0.0, global_step=0)
    control = SimpleNamespace(should_training_stop=False, should_save=False, should_evaluate=False)
    cb.on_train_begin(args, state, control)
    return args, state, control


def test_hf_votes_the_loss_its_training_step_returned_not_the_filtered_logged_one(jobs_dir: Path) -> None:
    trainer = FakeHF()
    cb = TrainerControlCallback(trainer=trainer, job_id="hf-1", jobs_dir=jobs_dir, guards=["nan:abort"], **OPTIONS)
    assert [g.text for g in cb.controller.guards.rules] == ["nan:abort,metric=loss"]
    args, state, control = hf_events(cb)
    try:
        for step in range(1, 4):
            trainer.training_step(None, {})
            state.global_step = step
            cb.on_step_end(args, state, control)
            assert not control.should_training_stop
        trainer.next_loss = torch.tensor(math.nan)
        trainer.training_step(None, {})
        cb.on_log(args, state, control, logs={"loss": 0.5})  # HF's logged loss: the NaN filtered out
        state.global_step = 4
        cb.on_step_end(args, state, control)
        assert control.should_training_stop and cb.aborted and trainer.calls == 4
        [fired] = cb.controller.status().guard_events or []
        assert (fired.kind, fired.step, fired.rank) == ("nan", 4, 0)
    finally:
        cb.on_train_end(args, state, control)


def test_a_second_bind_does_not_wrap_the_training_step_twice(jobs_dir: Path) -> None:
    trainer = FakeHF()
    cb = TrainerControlCallback(trainer=trainer, job_id="hf-2", jobs_dir=jobs_dir, **OPTIONS)
    wrapped = trainer.training_step
    cb.bind(trainer)
    assert trainer.training_step is wrapped
    cb.controller.close()


class FakeFramework:
    """A Forgather framework trainer as the callback recognises it (its module)."""

    __module__ = "forgather.ml.trainer.trainer"

    def __init__(self) -> None:
        self.next_loss = torch.tensor(1.0)

    def _forward_backward_step(self, input_dict: Any, labels: Any) -> torch.Tensor:
        return self.next_loss


def test_the_framework_votes_what_its_forward_backward_step_returned(jobs_dir: Path) -> None:
    trainer = FakeFramework()
    cb = TrainerControlCallback(trainer=trainer, job_id="fg-1", jobs_dir=jobs_dir, guards="nan:abort", **OPTIONS)
    args, state, control = hf_events(cb)
    control.should_abort_without_save = False
    try:
        trainer._forward_backward_step({}, None)
        state.global_step = 1
        cb.on_step_end(args, state, control)
        assert not control.should_training_stop
        trainer.next_loss = torch.tensor(-math.inf)
        trainer._forward_backward_step({}, None)
        state.global_step = 2
        cb.on_step_end(args, state, control)
        assert control.should_abort_without_save and control.should_training_stop
        assert "the loss is -inf on rank 0 at step 2" in (cb.controller.stop_reason or "")
    finally:
        cb.on_train_end(args, state, control)


def lightning_trainer(step: int = 0) -> Any:
    return SimpleNamespace(
        global_step=step,
        current_epoch=0,
        max_steps=100,
        enable_validation=False,
        optimizers=[SimpleNamespace(param_groups=[{"lr": 0.1}])],
        should_stop=False,
        callbacks=[],
    )


def test_lightning_votes_the_training_step_output(jobs_dir: Path) -> None:
    cb = LightningControl(job_id="pl-1", jobs_dir=jobs_dir, guards=["nan:stop"], **OPTIONS)
    trainer = lightning_trainer()
    cb.setup(trainer, None, "fit")
    try:
        trainer.global_step = 1
        cb.on_train_batch_end(trainer, None, {"loss": torch.tensor(2.0)}, None, 0)
        assert not trainer.should_stop
        trainer.global_step = 2
        cb.on_train_batch_end(trainer, None, torch.tensor(math.nan), None, 1)
        assert trainer.should_stop
        [fired] = cb.controller.status().guard_events or []
        assert fired.action == "stop" and fired.step == 2
    finally:
        cb.controller.close()


def test_under_the_launcher_the_callbacks_read_the_guards_from_the_environment(jobs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bootstrap builds the callbacks with no options: FORGATHER_GUARDS reaches them."""
    monkeypatch.setenv("FORGATHER_GUARDS", "nan:abort,metric=loss;spike:save,factor=3,window=5,times=2,metric=loss")
    for cb in (TrainerControlCallback(job_id="env-1", jobs_dir=jobs_dir, **OPTIONS), LightningControl(job_id="env-2", jobs_dir=jobs_dir, **OPTIONS)):
        assert [g.kind for g in cb.controller.guards.rules] == ["nan", "spike"]
        cb.controller.close()
