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

from forgather_control.core.checkpoints import Scope
from forgather_control.core.env import ENV_RESUME_FROM

log = logging.getLogger(__name__)

__all__ = ["resume_from"]


def resume_from() -> str | None:
    """The checkpoint a restarted run should resume from, or None on a fresh run (and
    when the checkpoint is not the job's own to resume from: the log says why)."""
    path = os.environ.get(ENV_RESUME_FROM) or None
    why = Scope.here().refuses(path) if path is not None else None
    if why is not None:
        log.warning("forgather: not resuming from %s: %s", path, why)
        return None
    return path
