"""Reading the jobs directory: one summary per job, liveness judged, nothing deleted.

``scan`` is what ``forgather control list`` shows; ``find_job`` resolves the JOB
argument every other command takes (an exact id or a unique prefix); ``judge_job`` is
the one way to read a job's records again and judge them now (cleanup before it deletes,
``watch`` while it follows a job).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from forgather_control.client import framework_jobs
from forgather_control.client.jobinfo import JobInfo
from forgather_control.client.settler import Settler
from forgather_control.core.env import ENV_JOBS_DIR
from forgather_control.core.errors import PrivateJob
from forgather_control.core.files import TEMP_PREFIX, RecordError, owner_name
from forgather_control.core.jobs import JobPaths, is_valid_job_id, match_job_id
from forgather_control.core.liveness import STALE_AFTER, Liveness, SqueueCache, is_loopback_url, judge, same_host, same_pid_namespace
from forgather_control.core.markers import read_index
from forgather_control.core.records import Alert, AlertSinks, Endpoint, Job, Node, Record, Status
from forgather_control.core.records import load as load_record

log = logging.getLogger(__name__)


def load(paths: JobPaths, *, quiet: bool = False) -> JobInfo:
    """Read one job's records, each checked (:mod:`.records`): a record that is not one,
    or has a field of the wrong type or size, makes this job ``corrupt`` with the reason
    and is not used; nothing it holds reaches a judge or a screen. Paths are joined as
    strings, not pathlib objects: ``list`` loads every folder in the root, and pathlib's
    per-join cost was a fifth of it."""
    info = JobInfo(job_id=paths.job_id, paths=paths)
    base = os.path.join(os.fspath(paths.root), paths.job_id)
    owner = _owner(base)  # a record another user put in the job's folder is not the job's
    if owner is not None and owner != os.geteuid() and not os.access(base, os.R_OK | os.X_OK):
        # not a fault of the job's (no warning for each of another user's jobs), and not
        # corrupt: simply not ours to read
        info.private_to = owner
        info.evidence = f"{base} is the job folder of {owner_name(owner)}, private to it: you ({owner_name(os.geteuid())}) cannot read its records"
        return info
    info.endpoint = _checked(info, base + "/endpoint.json", Endpoint, owner)
    info.status = _checked(info, base + "/status.json", Status, owner)
    info.job = _checked(info, base + "/job.json", Job, owner)
    nodes = base + "/nodes"
    try:
        names = sorted(os.listdir(nodes)) if _is_real_dir(nodes) else []
    except OSError:
        names = []
    for name in names:
        if name.endswith(".json") and not name.startswith(TEMP_PREFIX):
            rec = _checked(info, nodes + "/" + name, Node, owner)
            if rec is not None:
                info.nodes.append(rec)
    framework_jobs.recognise(info)
    if info.corrupt and not quiet:
        log.warning("job %s is corrupt: %s", paths.job_id, "; ".join(info.corrupt))
    return info


def _checked(info: JobInfo, path: str, cls: type[R], owner: int | None) -> R | None:
    try:
        return load_record(path, cls, owner=owner)
    except RecordError as exc:
        info.corrupt.append(str(exc))
        return None


def job_ids(root: Path) -> list[str]:
    """Folder names under ``root`` that can be jobs; links, files, temp names skipped."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot read jobs directory %s: %s", root, exc)
        return []
    ids = []
    for e in entries:
        if not is_valid_job_id(e.name):
            continue
        try:
            if e.is_symlink():
                log.warning("skipping %s: a symlink (never followed out of the jobs directory)", e.path)
                continue
            if not e.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        ids.append(e.name)
    return sorted(ids)


Probe = Callable[[Endpoint], "bool | None"]
R = TypeVar("R", bound=Record)


class Scanned(list[JobInfo]):
    """The jobs :func:`scan` found, and the job folders of other users it left out because
    they are private to their owners (``private``: job id -> owner uid): a listing says
    how many it did not show rather than showing them as something they are not."""

    def __init__(self) -> None:
        super().__init__()
        self.private: dict[str, int] = {}
        #: how many ended jobs were left out (``list`` without ``--all``)
        self.hidden = 0


def scan(
    root: Path,
    *,
    include_finished: bool = False,
    probe: Probe | None = None,
    probe_local: bool = False,
    squeue: Callable[[str], str | None] | None = None,
    stale_after: float = STALE_AFTER,
    settle: bool = True,
    prefix: str | None = None,
    alert: bool = True,
) -> Scanned:
    """Every job under ``root`` with liveness judged. Finished jobs only with
    ``include_finished`` (``list --all``). Same-host pid checks are authoritative and
    cheap, so the HTTP probe is only spent on jobs from other hosts unless
    ``probe_local``. ``prefix``: only job ids that start with it. Another user's private
    job folder is not among them: it is counted in ``private``. Without
    ``include_finished`` a job that failed in the last day is still listed (as a dead one
    is), and so is a paused one (it waits to be resumed); the ended jobs left out are
    counted in ``hidden``.

    Without ``include_finished`` a settled job is not opened at all (:mod:`.settled`:
    two directory listings say which); with ``settle`` every job read here that has
    provably ended is settled, so the next listing passes it by.

    With ``alert``, a job of ours that this listing judges dead (its launcher died with it:
    nobody else will tell) is alerted to the job's sinks, and an alert whose sender died
    before sending is sent again, within a short budget (:func:`.notify.owed`)."""
    now = time.time()
    owe: list[tuple[JobPaths, AlertSinks, Alert]] = []
    if squeue is None:
        squeue = SqueueCache()  # one squeue call for the whole listing, only if needed
    index = read_index(root)
    out = Scanned()
    with Settler(root, index, squeue=squeue, now=now, enabled=settle) as settler:
        for jid in job_ids(root):
            if prefix is not None and not jid.startswith(prefix):
                continue
            if not include_finished and index.skips(jid):
                out.hidden += 1
                continue
            info = load(JobPaths(root, jid))
            if info.private_to is not None:
                out.private[jid] = info.private_to
                continue
            if info.endpoint is None and info.status is None and info.job is None and not info.nodes and not info.corrupt:
                continue  # an empty or foreign folder
            assess(info, probe=probe, probe_local=probe_local, squeue=squeue, stale_after=stale_after, now=now)
            settler.consider(info)
            if alert and info.liveness in (Liveness.DEAD, Liveness.FINISHED) and _has_sinks(info):
                from forgather_control.client import notify  # only for a job with sinks

                owe += notify.owed(info, now=now)
            if info.liveness == Liveness.FINISHED and not include_finished and not info.failed_lately(now) and not info.paused:
                out.hidden += 1
                continue
            out.append(info)
    if owe:
        from forgather_control.client import notify

        notify.deliver(owe)
    return out


def _has_sinks(info: JobInfo) -> bool:
    """The job is ours, judged, and has a notify.json of ours (one lstat: most have none)."""
    if info.corrupt or info.framework or info.private_to is not None:
        return False
    try:
        return os.lstat(os.path.join(os.fspath(info.paths.root), info.job_id, "notify.json")).st_uid == os.geteuid()
    except OSError:
        return False


def useful_probe(endpoint: Endpoint | None, probe: Probe | None, *, probe_local: bool = True) -> Probe | None:
    """The probe worth spending on this endpoint, or None.

    Records of this host and PID namespace are judged by pid (cheap and authoritative)
    unless ``probe_local``; one of another PID namespace here (a container sharing the
    host's name) has no pid we can look up, so the probe is its evidence. A *loopback*
    URL recorded on another host names that host's loopback, not ours: probing it would
    reach whatever listens on that port here and hand it the other job's token, so it
    is never probed."""
    if probe is None or endpoint is None:
        return None
    if same_pid_namespace(endpoint):
        return probe if probe_local else None
    if same_host(endpoint):
        return probe
    if endpoint.url is not None and is_loopback_url(endpoint.url):
        return None
    return probe


def assess(
    info: JobInfo,
    *,
    probe: Probe | None,
    probe_local: bool,
    squeue: Callable[[str], str | None] | None,
    stale_after: float = STALE_AFTER,
    now: float | None = None,
) -> JobInfo:
    """Judge ``info`` from its records (sets ``liveness`` and ``evidence``); returns it.
    A corrupt job is not judged: what is left of its records cannot be trusted to say
    it is dead, so nothing deletes it and nothing is sent to it."""
    info.judged_at = time.time() if now is None else now
    if info.private_to is not None:
        info.liveness = Liveness.UNKNOWN  # nothing read, nothing judged; evidence says why
        return info
    if info.corrupt:
        info.liveness, info.evidence = Liveness.UNKNOWN, "; ".join(info.corrupt)
        return info
    if info.framework:  # judged by its own format; its status API read only when we may probe
        return framework_jobs.assess(info, ask=probe is not None)
    use_probe = useful_probe(info.endpoint, probe, probe_local=probe_local)
    info.liveness, info.evidence = judge(
        endpoint=info.endpoint,
        status=info.current_status,  # a previous run's status says nothing of this run
        job=info.job,
        nodes=info.nodes,
        probe=use_probe,
        squeue=squeue,
        stale_after=stale_after,
        now=time.time() if now is None else now,
    )
    return info


def judge_job(paths: JobPaths, *, probe: Probe | None = None, squeue: Callable[[str], str | None] | None = None) -> JobInfo:
    """Read one job's records now and judge them, the probe included for jobs on this
    host too: the verdict a command, a deletion or a watcher acts on."""
    info = load(paths, quiet=True)
    return assess(info, probe=probe, probe_local=True, squeue=squeue if squeue is not None else SqueueCache())


def find_job(
    root: Path,
    ref: str,
    *,
    probe: Probe | None = None,
    squeue: Callable[[str], str | None] | None = None,
) -> JobInfo:
    """Resolve an exact id or a unique prefix to a job, liveness judged (probe included).
    Another user's private job folder is refused (:class:`PrivateJob`, naming its owner)."""
    match = match_job_id(
        ref,
        job_ids(root),
        where=f"in {root}",
        hint=f"run `forgather control list --all` to see the jobs there, or pass --jobs-dir / set {ENV_JOBS_DIR}",
    )
    info = load(JobPaths(root, match))
    if info.private_to is not None:
        raise PrivateJob(f"job {match}: {info.evidence}; only its owner can see or command it")
    return assess(info, probe=probe, probe_local=True, squeue=squeue or SqueueCache())


def _owner(path: str) -> int | None:
    """The uid whose job this folder is: everything in it must be that user's."""
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def _is_real_dir(path: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
