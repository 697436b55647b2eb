"""A job whose folder disappears while it runs (removed by hand, or by a cleanup that
misjudged it) goes on training. Each of its processes says so once, and its later
failed writes there say nothing: a traceback per write (every heartbeat) would bury
the training log.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

__all__ = ["folder_gone"]

_said: set[str] = set()
_lock = threading.Lock()


def folder_gone(folder: Path, exc: BaseException, log: logging.Logger) -> bool:
    """True when ``exc`` (a failed write under ``folder``, a job's folder) failed because
    that folder is gone; the first time in this process, ``log`` says so in one line. False
    for any other failure, which the caller reports as it always did."""
    if not isinstance(exc, FileNotFoundError) or _is_dir(folder):
        return False
    key = os.fspath(folder)
    with _lock:
        first = key not in _said
        _said.add(key)
    if first:
        log.warning(
            "forgather control (pid %d): the job's folder %s is gone (removed while the job runs); training goes on, "
            "but its records cannot be written there, so `forgather control list` and `status` no longer see it",
            os.getpid(),
            key,
        )
    return True


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
