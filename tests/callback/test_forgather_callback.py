"""The control callback on a trainer shaped like the Forgather framework's, in this
process (one rank): where a checkpoint went, abort, resume. The real framework's
trainers run under ``forgather launch`` in tests/callback/test_forgather_trainers.py (Python 3.12);
these pin the rules on objects whose behaviour each test sets, so each case is exact:
the manager here stands in for ``forgather.ml.trainer.checkpoint_manager.CheckpointManager``
(same ``save_checkpoint`` signature, returns the path it wrote).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from forgather_control.callback import Controller
from forgather_control.callback.forgather import SaveWatch, is_forgather_trainer, resume_through_args
from forgather_control.callback.hf import TrainerControlCallback
from forgather_control.core import read_json
from forgather_control.core.records import encode


@dataclasses.dataclass(slots=True)
class Control:
    """The framework's TrainerControl: slots, and the abort flag HF's lacks."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False
    should_abort_without_save: bool = False


Control.__module__ = "forgather.ml.trainer.trainer_types"


@dataclasses.dataclass
class State:
    global_step: int = 0
    max_steps: int = 100
    epoch: float = 0.0


@dataclasses.dataclass
class Args:
    output_dir: str
    save_strategy: str = "steps"
    eval_strategy: str = "no"
    resume_from_checkpoint: bool | str = False


class Manager:
    """Writes ``OUT/checkpoints/checkpoint-ID`` like the framework's, and counts saves."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.saved: list[str] = []

    def save_checkpoint(self, checkpoint_path: str | None = None, checkpoint_id: str | None = None) -> str:
        path = checkpoint_path or str(self.out / "checkpoints" / f"checkpoint-{checkpoint_id}")
        os.makedirs(path, exist_ok=True)
        Path(path, "model.safetensors").write_text("w")
        self.saved.append(path)
        return path


class FakeTrainer:
    """The parts of ``forgather.ml.trainer.Trainer`` the callback touches: its loop calls
    on_step_end, then saves when ``should_save`` (or its own schedule) says so, then
    dispatches on_save without a path."""

    def __init__(self, out: Path, callback: TrainerControlCallback | None, **args: Any) -> None:
        self.args = Args(output_dir=str(out), **args)
        self.state = State()
        self.control = Control()
        self.checkpoint_manager = Manager(out)
        self.eval_dataset = None
        self.callbacks = [callback] if callback else []

    def dispatch(self, event: str, **kw: Any) -> None:
        for cb in self.callbacks:
            new = getattr(cb, event)(self.args, self.state, self.control, **kw)
            self.control = new if new is not None else self.control

    def begin(self) -> None:
        self.dispatch("on_init_end")
        self.dispatch("on_train_begin")

    def step(self, *, periodic_save: bool = False) -> None:
        self.state.global_step += 1
        self.dispatch("on_step_end")
        if periodic_save or self.control.should_save:
            self.control.should_save = False
            self.checkpoint_manager.save_checkpoint(checkpoint_id=str(self.state.global_step))
            self.dispatch("on_save")


FakeTrainer.__module__ = "forgather.ml.trainer.trainer"


def controller(jobs_dir: Path, job_id: str) -> Controller:
    return Controller(job_id=job_id, jobs_dir=jobs_dir, enable_http=False, signals=(), check_interval=0.0)


def run_until_applied(trainer: FakeTrainer, ctl: Controller, command: str) -> str:
    entry, _ = ctl.ledger.submit(command)
    for _ in range(50):
        trainer.step()
        if ctl.ledger.get(entry.id).state.value != "queued":
            return entry.id
    raise AssertionError(f"{command} never applied")


def test_a_forgather_trainer_is_recognised_by_its_package() -> None:
    assert is_forgather_trainer(FakeTrainer(Path("/nonexistent"), None))
    assert not is_forgather_trainer(object())


def test_a_commanded_save_names_the_path_the_trainers_manager_returned(tmp_path: Path, jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "fg-save")
    cb = TrainerControlCallback(ctl)
    trainer = FakeTrainer(tmp_path / "out", cb)
    cb.bind(trainer)
    trainer.begin()
    with ctl:
        save = run_until_applied(trainer, ctl, "save")
        entry = ctl.ledger.get(save)
        written = trainer.checkpoint_manager.saved
        assert entry.state.value == "completed" and written == [entry.result.checkpoint]
        assert entry.result.checkpoint == str(tmp_path / "out" / "checkpoints" / f"checkpoint-{entry.step}")  # not OUT/checkpoint-N
        assert ctl.resume_point is not None and ctl.resume_point.path == written[0]


def test_without_its_trainer_a_forgather_save_fails_with_what_to_do_instead_of_a_guessed_path(tmp_path: Path, jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "fg-unbound")
    cb = TrainerControlCallback(ctl)  # added by hand, never bound
    trainer = FakeTrainer(tmp_path / "out", cb)
    trainer.begin()
    with ctl:
        save = run_until_applied(trainer, ctl, "save")
        entry = ctl.ledger.get(save)
        assert trainer.checkpoint_manager.saved  # the trainer did save
        assert entry.state.value == "failed" and "did not say where" in entry.reason and "bind(trainer)" in entry.reason
        assert ctl.resume_point is None


def test_abort_sets_the_frameworks_flag_and_no_save_is_written_even_on_a_scheduled_step(tmp_path: Path, jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "fg-abort")
    cb = TrainerControlCallback(ctl, trainer=None)
    trainer = FakeTrainer(tmp_path / "out", cb)
    cb.bind(trainer)
    trainer.begin()
    with ctl:
        trainer.step(periodic_save=True)  # the trainer's own save before the abort: kept
        before = list(trainer.checkpoint_manager.saved)
        assert ctl.resume_point is not None
        resume = encode(ctl.resume_point)
        ctl.ledger.submit("abort")
        trainer.state.global_step += 1
        trainer.dispatch("on_step_end")
        assert trainer.control.should_abort_without_save and trainer.control.should_training_stop
        # The trainer's schedule falls on this step: it calls its manager anyway.
        returned = trainer.checkpoint_manager.save_checkpoint(checkpoint_id=str(trainer.state.global_step))
        trainer.dispatch("on_save")
        assert not str(returned).startswith(str(tmp_path))  # a throw-away folder outside the output dir
        trainer.dispatch("on_train_end")
    assert trainer.checkpoint_manager.saved == before
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == [Path(p).name for p in before]
    status = read_json(jobs_dir / "fg-abort" / "status.json")
    assert status["state"] == "aborted" and status["resume_point"] == resume  # the abort recorded no resume point


def test_the_save_watch_wraps_a_manager_once_and_cleans_its_scratch_folder(tmp_path: Path) -> None:
    aborted = [False]
    watch = SaveWatch(lambda: aborted[0])
    trainer = FakeTrainer(tmp_path, None)
    assert watch.attach(trainer) and watch.attach(trainer)  # idempotent
    path = trainer.checkpoint_manager.save_checkpoint(checkpoint_id="3")
    assert watch.take() == path and watch.take() is None
    aborted[0] = True
    scratch = trainer.checkpoint_manager.save_checkpoint(checkpoint_id="4")
    Path(scratch).mkdir()  # what the framework's best-model bookkeeping may do with it
    watch.close()
    assert not Path(scratch).exists() and len(trainer.checkpoint_manager.saved) == 1


def test_resume_goes_through_the_trainers_args_unless_the_script_named_a_checkpoint(tmp_path: Path) -> None:
    point = tmp_path / "checkpoints" / "checkpoint-7"
    point.mkdir(parents=True)
    for current, expected in ((False, str(point)), (True, str(point)), ("/my/own", "/my/own")):
        trainer = FakeTrainer(tmp_path, None, resume_from_checkpoint=current)
        resume_through_args(trainer, str(point))
        assert trainer.args.resume_from_checkpoint == expected, current
    trainer = FakeTrainer(tmp_path, None)
    assert not resume_through_args(trainer, str(tmp_path / "gone"))  # a point no longer on disk is not handed on
    assert trainer.args.resume_from_checkpoint is False
