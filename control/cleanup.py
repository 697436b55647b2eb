"""Deleting job records safely: only dead or finished jobs, never through a symlink.

The jobs directory may be shared storage that other hosts and users write into, so
deletion is the one place a mistake destroys something. The rules:

- only jobs judged ``dead`` or ``finished`` (never alive, stale or unknown: a job on
  another host whose heartbeat we cannot judge is left alone);
- the judgement includes the authoritative HTTP probe, and is made again right before
  each deletion (a requeued job may have come back under the same id);
- only a real folder directly under the root is deleted; it is first renamed to a name
  ``list`` never reads, so no reader sees half a job, then removed with an
  ``rmtree`` that does not follow symlinks inside it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from .files import TEMP_PREFIX
from .jobs import JobPaths
from .listing import JobInfo, judge_job, scan
from .liveness import Liveness
from .transport import probe_endpoint

log = logging.getLogger(__name__)

DELETABLE = (Liveness.DEAD, Liveness.FINISHED)


@dataclass
class Outcome:
    job_id: str
    deleted: bool
    reason: str
    error: bool = False  # something went wrong (as opposed to: rightly left alone)


def candidates(root: Path) -> list[JobInfo]:
    """Jobs under ``root`` that may be deleted: judged dead or finished, probe included."""
    jobs = scan(root, include_finished=True, probe=probe_endpoint, probe_local=True)
    return [j for j in jobs if j.liveness in DELETABLE]


def delete_job(root: Path, job_id: str) -> Outcome:
    """Delete one job's folder if, right now, it is still dead or finished and a real
    folder inside ``root``. Never raises for an ordinary failure; says why instead."""
    if not getattr(shutil.rmtree, "avoids_symlink_attacks", False):
        return Outcome(job_id, False, "this platform's rmtree may follow symlinks; delete the folder by hand")
    paths = JobPaths(root, job_id)  # validates the id: no '/', no '..'
    target = paths.dir
    if not _real_dir(target):
        return Outcome(job_id, False, "not a real folder (a symlink or gone); left alone")
    now = judge_job(paths, probe=probe_endpoint)
    verdict, evidence = now.liveness, now.evidence
    if verdict not in DELETABLE:
        return Outcome(job_id, False, f"now judged {verdict} ({evidence}); left alone")
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
