"""What the Forgather framework's own trainers need beyond the HF callback protocol.

``forgather.ml.trainer`` (``Trainer``, ``AccelTrainer``, ``PipelineTrainer``, all built on
its ``BaseTrainer``) takes HF-style callbacks, so :class:`~.hf.TrainerControlCallback`
serves them; three things differ, and this module owns them:

- **Where a checkpoint went.** Their ``on_save`` event carries no path: the checkpoint
  manager's ``save_checkpoint`` returns it (``OUT/checkpoints/checkpoint-N``, not HF's
  ``OUT/checkpoint-N``). :class:`SaveWatch` wraps that method on the trainer's own manager
  and keeps what it returned, so nothing guesses a path.
- **Abort.** Their ``TrainerControl`` has ``should_abort_without_save``: set, ``train()``
  skips its final save. A step's periodic save is decided inside the trainer after the
  callbacks ran, so once the job is aborted the watched manager writes nothing at all.
- **Resume.** They resume through ``args.resume_from_checkpoint`` (read by ``train()``),
  not a keyword of ``train()``: :func:`resume_through_args`.
- **Knobs** (:func:`declare_knobs`). Their loop (``Trainer._train_loop``) runs epochs in a
  ``while True`` and ends where ``global_step >= trainer.max_steps``, read after every
  step: ``max_steps`` sets that attribute (and ``state.max_steps``), longer or shorter,
  with no upper bound (no epoch count limits the loop); shorter than the step it applies
  at ends the run there, with the trainer's own final save. Their log, eval and save
  intervals are ``PeriodicFunction`` objects local to that loop (``period``, counted
  from the last log/eval/save), handed to ``_maybe_log_save_evaluate`` each step:
  :class:`Periods` wraps that method to set the period a knob asks for. The clip norm is
  ``args.max_grad_norm``, read at every step by ``_train_step`` (0 or None: no clipping);
  not with ``fuse_optim_with_backward``, which cannot clip.

Nothing here imports the framework: it is recognised by its module names and its
control object's extra flag.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forgather_control.core.records import KnobValue


log = logging.getLogger(__name__)

__all__ = ["ABORT_FLAG", "Periods", "SaveWatch", "declare_knobs", "is_forgather_control", "is_forgather_trainer", "resume_through_args"]

#: the framework's TrainerControl flag: stop and skip the final save
ABORT_FLAG = "should_abort_without_save"
_PACKAGE = "forgather."
_WATCHED = "_forgather_control_watched"


def is_forgather_trainer(trainer: Any) -> bool:
    """A trainer of the Forgather framework (or a subclass of one)."""
    return any(getattr(cls, "__module__", "").startswith(_PACKAGE) for cls in type(trainer).__mro__)


def is_forgather_control(control: Any) -> bool:
    """The framework's TrainerControl (HF's has no abort flag)."""
    return hasattr(control, ABORT_FLAG)


class SaveWatch:
    """The paths a trainer's checkpoint manager returned, and no save once aborted.

    ``aborted()`` is asked before each save; ``attach(trainer)`` wraps the manager the
    trainer built for this ``train()`` (idempotent; a new manager is wrapped again).
    """

    def __init__(self, aborted: Callable[[], bool]) -> None:
        self._aborted = aborted
        #: what the last save returned; taken (and cleared) by :meth:`take`
        self.last_path: str | None = None
        self._scratch_dir: str | None = None

    def attach(self, trainer: Any) -> bool:
        manager = getattr(trainer, "checkpoint_manager", None)
        save = getattr(manager, "save_checkpoint", None)
        if manager is None or save is None:
            return False
        if getattr(save, _WATCHED, False):
            return True
        watch = self

        def save_checkpoint(*args: Any, **kwargs: Any) -> Any:
            if watch._aborted():
                # An abort writes no checkpoint, also when the trainer's own schedule
                # falls on the step it applied at. The trainer's bookkeeping after a save
                # (best-model metrics) gets a throw-away folder outside its output_dir;
                # on_save records nothing.
                log.warning("forgather control: the job is aborted; the trainer's checkpoint save is skipped")
                return watch._scratch()
            path = save(*args, **kwargs)
            watch.last_path = os.fspath(path) if path is not None else None
            return path

        setattr(save_checkpoint, _WATCHED, True)
        try:
            manager.save_checkpoint = save_checkpoint
        except (AttributeError, TypeError):  # a manager that takes no attributes
            log.warning("forgather control: cannot watch %s; checkpoints it saves are not recorded", type(manager).__name__)
            return False
        return True

    def _scratch(self) -> str:
        if self._scratch_dir is None:
            self._scratch_dir = tempfile.mkdtemp(prefix="forgather-aborted-")
        return os.path.join(self._scratch_dir, "skipped-checkpoint")

    def close(self) -> None:
        """Remove the throw-away folder of skipped saves, if one was made."""
        if self._scratch_dir is not None:
            shutil.rmtree(self._scratch_dir, ignore_errors=True)
            self._scratch_dir = None

    def take(self) -> str | None:
        """The path of the save just reported (on_save follows save_checkpoint)."""
        path, self.last_path = self.last_path, None
        return path


def resume_through_args(trainer: Any, path: str) -> bool:
    """Point ``trainer.args.resume_from_checkpoint`` at the job's resume point, unless the
    script named a checkpoint of its own. ``True`` (the framework's "newest in
    output_dir", by file times) is replaced: the job's record names the newest checkpoint
    every rank finished writing. Returns whether it did."""
    args = getattr(trainer, "args", None)
    if args is None or not os.path.isdir(path):
        return False
    current = getattr(args, "resume_from_checkpoint", False)
    if isinstance(current, str) and current:
        return False
    args.resume_from_checkpoint = path
    return True


# -- knobs ---------------------------------------------------------------------------------
#: The interval knobs: (knob, the args' strategy and steps prefix, the loop's PeriodicFunction argument).
INTERVALS = (
    ("log_every", "logging", "periodic_log"),
    ("eval_every", "eval", "periodic_eval"),
    ("save_every", "save", "periodic_save"),
)
_PERIODS = "_forgather_control_periods"


class Periods:
    """The log, eval and save intervals a knob asks for, set on the ``PeriodicFunction``
    objects the framework's loop hands ``_maybe_log_save_evaluate`` at every step (its
    locals: nothing else reaches them). ``attach(trainer)`` wraps that method once; a
    period asked before the loop's first call applies at that call."""

    def __init__(self) -> None:
        #: argument name (``periodic_save``, ...) -> the period asked for
        self.wanted: dict[str, int] = {}

    def attach(self, trainer: Any) -> bool:
        """Wrap ``trainer._maybe_log_save_evaluate``; False when it has no such method
        taking the three PeriodicFunction arguments (no interval knob is declared)."""
        method = getattr(trainer, "_maybe_log_save_evaluate", None)
        if not callable(method):
            return False
        if getattr(method, _PERIODS, None) is self:
            return True
        try:
            signature = inspect.signature(method)
        except (TypeError, ValueError):
            return False
        if not {arg for _, _, arg in INTERVALS} <= set(signature.parameters):
            return False
        inner = getattr(method, "__wrapped__", None) if getattr(method, _PERIODS, None) is not None else None
        method = inner or method  # a second callback's wrapper is replaced, not stacked
        wanted = self.wanted

        @functools.wraps(method)
        def run(*args: Any, **kwargs: Any) -> Any:
            if wanted:
                bound = signature.bind_partial(*args, **kwargs).arguments
                for arg, period in wanted.items():
                    periodic = bound.get(arg)
                    if periodic is not None and getattr(periodic, "period", period) != period:
                        periodic.period = period
            return method(*args, **kwargs)

        setattr(run, _PERIODS, self)
        try:
            trainer._maybe_log_save_evaluate = run
        except (AttributeError, TypeError):
            log.warning("forgather control: cannot watch %s's intervals; no interval knob is declared", type(trainer).__name__)
            return False
        return True


def _strategy(args: Any, prefix: str) -> str:
    value = getattr(args, f"{prefix}_strategy", "no")
    return str(getattr(value, "value", value))


def declare_knobs(ctl: Any, trainer: Any, periods: Periods) -> list[str]:
    """Declare on ``ctl`` (a Controller) the knobs a framework trainer honours, beside the
    learning rate (declared by the caller): ``max_steps``, the intervals whose strategy
    is ``"steps"`` (an interval that does nothing is not offered) and ``max_grad_norm``.
    Each needs the trainer itself (its ``max_steps`` and loop): none without it.
    Returns the names declared."""
    args = getattr(trainer, "args", None)
    if trainer is None or args is None:
        return []
    names = []
    if isinstance(getattr(trainer, "max_steps", None), int) and trainer.max_steps > 0:

        def max_steps_changed(old: KnobValue, new: KnobValue) -> None:
            # The loop ends where global_step >= trainer.max_steps, checked after every step.
            trainer.max_steps = int(new)
            _set_state(trainer, "max_steps", int(new))

        ctl.knob("max_steps", int(trainer.max_steps), min=1, help="the run's last step (the loop has no other bound)", on_change=max_steps_changed)
        names.append("max_steps")
    if periods.attach(trainer):
        for name, prefix, arg in INTERVALS:
            steps = getattr(args, f"{prefix}_steps", None)
            if _strategy(args, prefix) != "steps" or not isinstance(steps, int) or steps < 1:
                continue
            ctl.knob(
                name,
                steps,
                min=1,
                help=f"{prefix} every N steps (counted from the last one)",
                on_change=_period_changed(periods, arg, trainer, f"{prefix}_steps"),
            )
            names.append(name)
    if not getattr(args, "fuse_optim_with_backward", False) and hasattr(args, "max_grad_norm"):

        def clip_changed(old: KnobValue, new: KnobValue) -> None:
            args.max_grad_norm = float(new)  # read by _train_step at every step; 0: no clipping

        ctl.knob("max_grad_norm", float(args.max_grad_norm or 0.0), min=0.0, help="the gradients' clip norm (0: no clipping)", on_change=clip_changed)
        names.append("max_grad_norm")
    return names


def _period_changed(periods: Periods, arg: str, trainer: Any, field: str) -> Callable[[KnobValue, KnobValue], None]:
    def changed(old: KnobValue, new: KnobValue) -> None:
        periods.wanted[arg] = int(new)
        _set_state(trainer, field, int(new))

    return changed


def _set_state(trainer: Any, field: str, value: int) -> None:
    """The trainer's state says the new value too (a checkpoint keeps its state)."""
    state = getattr(trainer, "state", None)
    if state is not None and hasattr(state, field):
        setattr(state, field, value)
