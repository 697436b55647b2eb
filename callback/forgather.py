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

Nothing here imports the framework: it is recognised by its module names and its
control object's extra flag.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["ABORT_FLAG", "SaveWatch", "is_forgather_control", "is_forgather_trainer", "resume_through_args"]

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
