"""Every worker can be asked where it is: its stacks, dumped at the C level on a signal.

Registered by the bootstrap before the user's code runs (a hang while the model loads is
a hang too), and by the Controller for a job started without ``forgather launch``. A
failure here is logged and the job runs on: it only loses the stacks.
"""

from __future__ import annotations

import logging
import os

from forgather_control.core.dumper import register
from forgather_control.core.jobs import JobPaths

from .watchdog import launcher_from_env

log = logging.getLogger(__name__)

__all__ = ["enable_stack_dumps"]

_tried: set[tuple[str, int]] = set()


def enable_stack_dumps(paths: JobPaths, rank: int, *, run: int = 0) -> None:
    """Dump this process's stacks into ``paths``' folder when asked.
    Tried once per job folder and rank (a folder that cannot be written is said once)."""
    attempt = (str(paths.dir), rank)
    if attempt in _tried:
        return
    _tried.add(attempt)
    try:
        register(paths, rank, run=run, launcher=launcher_from_env(os.environ))
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning("forgather: stack dumps are off for rank %s (%s); `forgather control stacks` will not reach it", rank, exc)
