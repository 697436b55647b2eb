"""Deleting job records safely: only dead or finished jobs, never through a symlink.

The jobs directory may be shared storage that other hosts and users write into, so
deletion is the one place a mistake destroys something. The rules:

- only jobs judged ``dead`` or ``finished`` (never alive, stale or unknown: a job on
  another host whose heartbeat we cannot judge is left alone);
- only a folder of the user who runs it (a job's folder is its launching user's; in a
  group-writable root anyone could otherwise move another's aside);
- never a job that holds a resume point (a checkpoint still on disk, and the job did
  not run to its end: stopped, preempted, crashed, requeued): relaunching it continues
  the work, so it goes only when asked for (``include_resumable``);
- never a paused job (``pause``: its user means to resume it), whatever its checkpoints,
  unless asked for (``include_paused``);
- the judgement includes the authoritative HTTP probe, and is made again right before
  each deletion (a requeued job may have come back under the same id);
- only a real folder directly under the root is deleted; it is first renamed to a name
  ``list`` never reads, so no reader sees half a job, then removed with an
  ``rmtree`` that does not follow symlinks inside it;
- a deleted job leaves nothing in the settled form (:mod:`.settled`): its entry goes,
  and each run marker whose process the deleted records prove gone.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from forgather_control.client import settled
from forgather_control.client.jobinfo import JobInfo
from forgather_control.client.listing import job_ids, judge_job, scan
from forgather_control.client.transport import probe_endpoint
from forgather_control.core.checkpoints import Checkpoint, choose
from forgather_control.core.files import TEMP_PREFIX, owner_name
from forgather_control.core.jobs import JobPaths
from forgather_control.core.liveness import Liveness
from forgather_control.core.states import JobState

log = logging.getLogger(__name__)

DELETABLE = (Liveness.DEAD, Liveness.FINISHED)


@dataclass
class Outcome:
    job_id: str
    deleted: bool
    reason: str
    error: bool = False  # something went wrong (as opposed to: rightly left alone)


@dataclass
class Candidate:
    """A job judged dead or finished, and whether cleanup deletes it (``kept`` says why not)."""

    info: JobInfo
    kept: str | None = None


def resume_point(info: JobInfo, *, exists: Callable[[str], bool] = os.path.exists) -> Checkpoint | None:
    """The checkpoint a relaunch of this job would resume from, when it did not run to
    its end; None for a finished job or one with no checkpoint left on disk."""
    if info.state == JobState.FINISHED:
        return None
    point, _ = choose(info.checkpoints, exists=exists)
    return point


def _kept_because(info: JobInfo, include_resumable: bool, include_paused: bool = False) -> str | None:
    whose = not_yours(info.paths.dir)
    if whose is not None:
        return whose
    if info.paused:
        if include_paused:
            return None
        point = resume_point(info)
        at = f" at {point.describe()}" if point is not None else ""
        return f"paused{at}, waiting to be resumed (--include-paused deletes it)"
    point = None if include_resumable else resume_point(info)
    if point is None:
        return None
    return f"holds a resume point: {point.describe()} (a relaunch continues from it; --include-resumable deletes it)"


def candidates(root: Path, *, include_resumable: bool = False, include_paused: bool = False) -> list[Candidate]:
    """Jobs under ``root`` judged dead or finished (probe included), each marked kept
    when it holds a resume point, unless ``include_resumable``, or is paused, unless
    ``include_paused``. Reading every folder, it settles the jobs that have ended and
    tidies the settled form (:mod:`.settled`)."""
    settled.tidy(root, job_ids(root))
    jobs = scan(root, include_finished=True, probe=probe_endpoint, probe_local=True)
    out = [Candidate(j, _kept_because(j, include_resumable, include_paused)) for j in jobs if j.liveness in DELETABLE]
    # a job of yours whose records were refused is not judged: kept, and the reason shown
    out += [Candidate(j, f"not judged, its records are refused: {j.evidence}") for j in jobs if j.corrupt and not_yours(j.paths.dir) is None]
    # another user's private folder: nothing in it could be read, so nothing is judged
    for jid, uid in jobs.private.items():
        why = f"{not_yours(root / jid) or 'not yours'}; it is private to them, so it was not judged"
        out.append(Candidate(JobInfo(jid, JobPaths(root, jid), private_to=uid), why))
    return sorted(out, key=lambda c: c.info.job_id)


def not_yours(folder: Path) -> str | None:
    """Why cleanup leaves ``folder`` alone when another user owns it; None when it is this
    user's (or gone). A job's folder is its launching user's: only they delete it."""
    try:
        uid = os.lstat(folder).st_uid
    except OSError:
        return None
    if uid == os.geteuid():
        return None
    return f"its folder belongs to {owner_name(uid)}, not to you ({owner_name(os.geteuid())}); only its owner deletes it"


def delete_job(root: Path, job_id: str, *, include_resumable: bool = False, include_paused: bool = False) -> Outcome:
    """Delete one job's folder if, right now, it is still dead or finished, holds no
    resume point (unless ``include_resumable``), is not paused (unless
    ``include_paused``) and is a real folder inside ``root``. Never raises for an
    ordinary failure; says why instead."""
    if not getattr(shutil.rmtree, "avoids_symlink_attacks", False):
        return Outcome(job_id, False, "this platform's rmtree may follow symlinks; delete the folder by hand")
    paths = JobPaths(root, job_id)  # validates the id: no '/', no '..'
    target = paths.dir
    if not _real_dir(target):
        return Outcome(job_id, False, "not a real folder (a symlink or gone); left alone")
    whose = not_yours(target)
    if whose is not None:
        return Outcome(job_id, False, whose)
    now = judge_job(paths, probe=probe_endpoint)
    verdict, evidence = now.liveness, now.evidence
    if verdict not in DELETABLE:
        return Outcome(job_id, False, f"now judged {verdict} ({evidence}); left alone")
    kept = _kept_because(now, include_resumable, include_paused)
    if kept is not None:
        return Outcome(job_id, False, kept)
    doomed = root / f"{TEMP_PREFIX}deleting-{job_id}-{secrets.token_hex(4)}"
    try:
        os.rename(target, doomed)  # atomic; a symlink swapped in meanwhile is renamed, not followed
    except OSError as exc:
        return Outcome(job_id, False, f"could not move it aside: {exc}", error=True)
    if not _real_dir(doomed):
        # Someone replaced the folder with a link between our check and the rename:
        # put it back and touch nothing behind it.
        try:
            os.rename(doomed, target)
        except OSError:
            log.warning("left %s in place of %s (it is a link; nothing behind it was touched)", doomed, target)
        return Outcome(job_id, False, "replaced by a symlink while we looked; left alone")
    settled.forget(paths, now)  # no entry left behind, nor a marker of its processes
    errors: list[str] = []
    shutil.rmtree(doomed, onerror=lambda fn, p, exc_info: errors.append(f"{p}: {exc_info[1]}"))
    if errors:
        log.warning("could not remove everything under %s: %s", doomed, "; ".join(errors[:3]))
        return Outcome(job_id, True, f"deleted with {len(errors)} leftover(s) in {doomed}", error=True)
    return Outcome(job_id, True, f"deleted ({verdict}: {evidence})")


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
