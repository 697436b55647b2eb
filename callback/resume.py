"""Where a restarted run resumes from.

A relaunch of the same job id, or a SLURM requeue, reuses the job's folder; the
launcher then exports the job's last checkpoint, so the same command line continues
the run instead of starting over. HF and Lightning trainers get it passed for them by
the bootstrap; a plain loop asks :func:`resume_from` and loads it itself. The rank asks
the launcher's rule again (:class:`~forgather_control.core.checkpoints.Scope`): the
variable may come from anywhere, and a checkpoint is code the trainer unpickles.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from forgather_control.core.env import ENV_KNOBS, ENV_RESUME_FROM, ENV_RESUME_STEP

if TYPE_CHECKING:
    from forgather_control.core.records import KnobCarry

log = logging.getLogger(__name__)

__all__ = ["carried_knobs", "resume_from", "resume_step"]


def resume_from() -> str | None:
    """The checkpoint a restarted run should resume from, or None on a fresh run (and
    when the checkpoint is not the job's own to resume from: the log says why)."""
    path = os.environ.get(ENV_RESUME_FROM) or None
    if path is None:
        return None
    from forgather_control.core.checkpoints import Scope  # a resumed run's (a fresh one loads no record: issue 24)

    why = Scope.here().refuses(path)
    if why is not None:
        log.warning("forgather: not resuming from %s: %s", path, why)
        return None
    return path


def resume_step() -> int:
    """The step the checkpoint of :func:`resume_from` was saved at (the launcher says it
    with the path), else 0: where this run's count of steps starts, so its status shows
    that step at once and its rate never counts the steps an earlier run made."""
    raw = os.environ.get(ENV_RESUME_STEP, "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else 0


def carried_knobs() -> KnobCarry | None:
    """The knob values the launcher carried from the job's last run (``FORGATHER_KNOBS``),
    checked; None on a fresh run, with ``--script-knobs``, or for a value that is not one
    (the log says so and the script's values stand)."""
    raw = os.environ.get(ENV_KNOBS)
    if not raw:
        return None
    from forgather_control.core.records import KnobCarry, RecordError, from_json  # a typed record from outside

    try:
        return from_json(raw.encode(), KnobCarry, name=ENV_KNOBS)
    except RecordError as exc:
        log.warning("forgather: the knobs carried from the last run are not used: %s", exc)
        return None
