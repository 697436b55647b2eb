"""Settling on demand: the launcher at its end (:func:`end_run`), ``cleanup`` after it
deletes (:func:`forget`, :func:`tidy`). Each reads the job(s) again through the listing
and hands them to a :class:`~.settler.Settler`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from forgather_control.client.jobinfo import JobInfo
from forgather_control.client.listing import assess, load
from forgather_control.client.settler import Settler
from forgather_control.core.files import RecordError
from forgather_control.core.jobs import JobPaths
from forgather_control.core.liveness import SqueueCache
from forgather_control.core.markers import RUNS_DIR, SILENT_FOR, read_entry, read_index, unlink, unsettle

log = logging.getLogger(__name__)

__all__ = ["SILENT_FOR", "end_run", "forget", "settle_job", "tidy"]


def end_run(paths: JobPaths, name: str | None, *, squeue: Callable[[str], str | None] | None = None) -> bool:
    """This process's part of the run has ended (the launcher at its end): settle the
    job if it has provably ended, then remove this process's marker. Never raises."""
    try:
        settled = settle_job(paths, squeue=squeue)
    except (OSError, ValueError, RecordError) as exc:
        log.debug("could not settle job %s: %s", paths.job_id, exc)
        settled = False
    if name is not None:
        unlink(paths.root, RUNS_DIR, name)
    return settled


def settle_job(paths: JobPaths, *, squeue: Callable[[str], str | None] | None = None) -> bool:
    """Read one job now and settle it if it has provably ended. True when settled."""
    index = read_index(paths.root)
    now = time.time()
    squeue = squeue if squeue is not None else SqueueCache()
    info = assess(load(paths, quiet=True), probe=None, probe_local=False, squeue=squeue, now=now)
    with Settler(paths.root, index, squeue=squeue, now=now) as settler:
        return settler.consider(info)


def forget(paths: JobPaths, info: JobInfo | None) -> None:
    """``cleanup`` deleted the job: its entry goes, and every marker of it proven gone
    by the records it was deleted on (a marker of a relaunch made meanwhile stays)."""
    index = read_index(paths.root)
    try:
        with Settler(paths.root, index, squeue=SqueueCache(), now=time.time()) as settler:
            for name in index.runs.get(paths.job_id, ()):
                if info is not None and settler.marker_gone(name, info):
                    unlink(paths.root, RUNS_DIR, name)
    except OSError as exc:
        log.debug("could not tidy the markers of job %s: %s", paths.job_id, exc)
    unsettle(paths.root, paths.job_id)


def tidy(root: str | os.PathLike[str], job_ids: list[str]) -> int:
    """``cleanup``'s pass over the index (it reads every folder anyway): entries that
    are not entries (checked here, where their content is read) or whose folder is
    gone (deleted by hand, a cleanup that stopped half-way) go at once: that only makes
    a job be read, and settled again. A marker of a folder that is gone goes once its
    process is proven gone (this host, pid gone) or it is :data:`SILENT_FOR` old on
    both clocks: a launcher writes its marker before the folder. Returns how many it
    removed."""
    index = read_index(root)
    present = set(job_ids)
    removed = 0
    for job_id in sorted(index.own()):  # this user's entries: the only ones it may remove
        if job_id not in present or read_entry(root, job_id) is None:
            unsettle(root, job_id)  # no folder, or not an entry: the job is read, and settled again
            removed += 1
    orphans = [name for job_id, names in index.runs.items() if job_id not in present for name in names]
    if not orphans:
        return removed
    try:
        with Settler(root, index, squeue=SqueueCache(), now=time.time()) as settler:
            for name in orphans:
                if settler.orphan_gone(name):
                    unlink(root, RUNS_DIR, name)
                    removed += 1
    except OSError as exc:
        log.debug("could not tidy the run markers in %s: %s", root, exc)
    return removed
