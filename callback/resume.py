"""Where a restarted run resumes from.

A relaunch of the same job id, or a SLURM requeue, reuses the job's folder; the
launcher then exports the job's last checkpoint, so the same command line continues
the run instead of starting over. HF and Lightning trainers get it passed for them by
the bootstrap; a plain loop asks :func:`resume_from` and loads it itself.
"""

from __future__ import annotations

import os

from forgather_control.core.env import ENV_RESUME_FROM

__all__ = ["resume_from"]


def resume_from() -> str | None:
    """The checkpoint a restarted run should resume from, or None on a fresh run."""
    return os.environ.get(ENV_RESUME_FROM) or None
