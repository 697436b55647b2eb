"""Reading the jobs directory: one summary per job, liveness judged, nothing deleted.

``scan`` is what ``forgather control list`` shows; ``find_job`` resolves the JOB
argument every other command takes (an exact id or a unique prefix); ``judge_job`` is
the one way to read a job's records again and judge them now (cleanup before it deletes,
``watch`` while it follows a job).
"""

from __future__ import annotations

import logging
import math
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import framework_jobs
from .attachment import no_control_notice
from .checkpoints import Checkpoint, history
from .env import ENV_JOBS_DIR
from .failures import read_failures
from .files import TEMP_PREFIX, RecordError
from .jobs import JobPaths, is_valid_job_id, match_job_id
from .liveness import STALE_AFTER, Liveness, SqueueCache, is_loopback_url, judge, same_host
from .records import ENDPOINT, JOB, NODE, STATUS, load_record
from .settled import Settler, read_index
from .states import JobState

log = logging.getLogger(__name__)


@dataclass
class JobInfo:
    """Everything known about one job, merged from its records."""

    job_id: str
    paths: JobPaths
    endpoint: dict | None = None
    status: dict | None = None
    job: dict | None = None
    nodes: list[dict] = field(default_factory=list)
    liveness: Liveness = Liveness.UNKNOWN
    evidence: str = ""
    #: why a record of this job was refused (it then shows as ``corrupt``)
    corrupt: list[str] = field(default_factory=list)
    #: when (this host's clock) the job was judged
    judged_at: float = field(default_factory=time.time)
    #: a job of the Forgather framework's own control callback (control/framework_jobs.py)
    framework: bool = False

    @property
    def current_status(self) -> dict | None:
        """status.json when it belongs to the launcher's current run of the job; None when
        there is none yet or it is a previous run's (a relaunch or SLURM requeue of the
        same id, before the new rank 0 has written)."""
        if not self.status or not self.job:
            return self.status
        ran, runs = self.status.get("restarts"), self.job.get("restarts")
        if isinstance(ran, int) and isinstance(runs, int) and ran != runs:
            return None
        return self.status

    @property
    def state(self) -> JobState:
        """What a person wants in the state column: the job's own state while it lives,
        the verdict when it is dead or not known.

        While the launcher lives, three moments have names of their own: ``starting`` (the
        launcher runs; rank 0 has not published this run's status yet: commands wait in
        its inbox), ``uncontrolled`` (still so after the launcher's ``--no-control-after``:
        its launcher recorded that no control is attached yet) and ``ending`` (rank 0 has
        ended the run; the launcher is still winding down torchrun)."""
        if self.corrupt:
            return JobState.CORRUPT
        job = self.job or {}
        launcher_state = JobState.parse(job.get("state"))
        status = self.current_status
        recorded = JobState.parse((status or {}).get("state")) or launcher_state or JobState.UNKNOWN
        if self.liveness == Liveness.ALIVE:
            if launcher_state == JobState.RUNNING and status is None and job.get("control"):
                return JobState.UNCONTROLLED if isinstance(job.get("no_control_since"), (int, float)) else JobState.STARTING
            if recorded.final and launcher_state is not None and not launcher_state.final:
                # Rank 0 has ended its run but the launcher lives: winding down, or the
                # job lives on (requeued and pending in SLURM): the launcher's word.
                return JobState.ENDING if launcher_state == JobState.RUNNING else launcher_state
            if recorded == JobState.RUNNING and self.stall is not None:
                return JobState.STALLED
            return recorded
        if self.liveness == Liveness.FINISHED:
            return recorded
        return JobState(self.liveness.value)

    @property
    def stall(self) -> dict[str, Any] | None:
        """Why a running job counts as stalled, or None (see :func:`stall_of`)."""
        if self.liveness != Liveness.ALIVE:
            return None
        return stall_of(self.current_status or {}, self.judged_at)

    @property
    def no_control(self) -> dict[str, Any] | None:
        """Why an ``uncontrolled`` job is, and what to add (control/attachment.py), or None."""
        if self.state != JobState.UNCONTROLLED:
            return None
        job = self.job or {}
        return no_control_notice(job.get("no_control_after"), job.get("no_control_since"))

    def summary(self) -> dict[str, Any]:
        """The ``list --json`` object. Never contains the token. Step, pid and the rest
        come from this run's status only: a relaunch that is still starting has none yet."""
        ep = self.endpoint or {}
        st = self.current_status or {}
        jb = self.job or {}
        updated = max(
            (t for t in (st.get("heartbeat_at"), st.get("updated_at"), ep.get("started_at"), jb.get("updated_at")) if isinstance(t, (int, float))),
            default=None,
        )
        return {
            "job_id": self.job_id,
            "state": self.state,
            "recorded_state": st.get("state") or jb.get("state"),
            "liveness": str(self.liveness),
            "evidence": self.evidence,
            "host": ep.get("host") or st.get("host") or jb.get("host"),
            "port": ep.get("port"),
            "url": ep.get("url"),
            "pid": ep.get("pid") or st.get("pid"),
            "step": st.get("step"),
            "max_steps": st.get("max_steps"),
            "world_size": st.get("world_size"),
            "scheduler": (jb.get("scheduler") or {}).get("type") if isinstance(jb.get("scheduler"), dict) else None,
            "restarts": _count(jb.get("restarts"), st.get("restarts")),
            "stall": self.stall,
            "no_control": self.no_control,
            "framework_callback": self.framework,
            "loss": _finite((st.get("metrics") or {}).get("loss")),
            "resumed_from": _text(jb.get("resume_from"), st.get("resumed_from")),
            "updated_at": updated,
            "jobs_dir": str(self.paths.root),
        }

    @property
    def checkpoints(self) -> list[Checkpoint]:
        """Every completed checkpoint the job's records know, oldest first."""
        status = self.status
        return history(self.job, status, run=_count(status.get("restarts")) if status else None)

    def details(self) -> dict[str, Any]:
        """The ``status --json`` object: the summary plus the status record's detail."""
        d = self.summary()
        st = self.status or {}
        for key in (
            "epoch",
            "metrics",
            "steps_per_second",
            "eta_seconds",
            "last_checkpoint",
            "resume_point",
            "commands",
            "control_error",
            "started_at",
            "ended_at",
            "exit_code",
            "check_interval",
            "http",
        ):
            if key in st:
                d[key] = st[key]
        if not self.state.live:
            # a rate and an ETA are claims about a running job; a dead or ended one has neither
            d["steps_per_second"] = d["eta_seconds"] = None
        job = self.job or {}
        if isinstance(job.get("exit_code"), int):
            d["exit_code"] = job["exit_code"]
        if st.get("error"):
            d["error"] = st["error"]
        if self.state in (JobState.FAILED, JobState.DEAD) or d.get("exit_code"):
            failures = read_failures(self.paths, run=_count(job.get("restarts"), st.get("restarts")))
            if failures:
                d["failure"] = failures[0].as_record()  # the root cause: the first rank that raised
                d["failures"] = [f.as_record() for f in failures]
        if self.job:
            d["job"] = {k: v for k, v in self.job.items() if k not in ("env",)}
        return d


#: On this host, a rank 0 whose heartbeat is older than this is not answering (its I/O
#: thread writes one every couple of seconds, whatever the training thread does).
SILENT_AFTER = 60.0
_STALL_WHY = {
    "agreement": "rank 0 waits in the agreement collective: another rank has not arrived",
    "training": "rank 0 is in the training code (a data loader, a collective of its own, a lock)",
    "save": "rank 0 is in a commanded save that takes very long",
    "eval": "rank 0 is in a commanded evaluation that takes very long",
}


def stall_of(status: dict[str, Any], now: float) -> dict[str, Any] | None:
    """Why a running job is stalled, or None: rank 0's own word (its step has not moved
    for longer than its threshold, and what it is doing), or, on this host, rank 0 not
    answering at all (its I/O thread no longer writes its heartbeat: a process stopped,
    or stuck holding the GIL). ``for`` is seconds, ``why`` a sentence for a person."""
    if JobState.parse(status.get("state")) != JobState.RUNNING:
        return None
    beat = status.get("heartbeat_at")
    silent = now - beat if isinstance(beat, (int, float)) and same_host(status) else 0.0
    if silent > SILENT_AFTER:
        since = status.get("progress_at") if isinstance(status.get("progress_at"), (int, float)) else beat
        return {
            "for": round(max(0.0, now - since), 1),
            "step": status.get("step"),
            "phase": "silent",
            "why": f"rank 0 is not answering: its last heartbeat was {silent:.0f}s ago",
        }
    stall = status.get("stall")
    if not isinstance(stall, dict):
        return None
    return {**stall, "why": _STALL_WHY.get(str(stall.get("phase")), "rank 0's step does not move")}


def _count(*values: object) -> int | None:
    """The first value that is a count (a non-negative int), else None."""
    return next((v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0), None)


def _finite(value: object) -> float | None:
    """A number a JSON reader takes (not NaN or an infinity), else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _text(*values: object) -> str | None:
    return next((v for v in values if isinstance(v, str) and v), None)


def load(paths: JobPaths, *, quiet: bool = False) -> JobInfo:
    """Read one job's records, each checked (:mod:`.records`): a record that is not one,
    or has a field of the wrong type or size, makes this job ``corrupt`` with the reason
    and is not used; nothing it holds reaches a judge or a screen. Paths are joined as
    strings, not pathlib objects: ``list`` loads every folder in the root, and pathlib's
    per-join cost was a fifth of it."""
    info = JobInfo(job_id=paths.job_id, paths=paths)
    base = os.path.join(os.fspath(paths.root), paths.job_id)
    info.endpoint = _checked(info, base + "/endpoint.json", ENDPOINT)
    info.status = _checked(info, base + "/status.json", STATUS)
    info.job = _checked(info, base + "/job.json", JOB)
    nodes = base + "/nodes"
    try:
        names = sorted(os.listdir(nodes)) if _is_real_dir(nodes) else []
    except OSError:
        names = []
    for name in names:
        if name.endswith(".json") and not name.startswith(TEMP_PREFIX):
            rec = _checked(info, nodes + "/" + name, NODE)
            if rec is not None:
                info.nodes.append(rec)
    framework_jobs.recognise(info)
    if info.corrupt and not quiet:
        log.warning("job %s is corrupt: %s", paths.job_id, "; ".join(info.corrupt))
    return info


def _checked(info: JobInfo, path: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return load_record(path, fields)
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


Probe = Callable[[dict], "bool | None"]


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
) -> list[JobInfo]:
    """Every job under ``root`` with liveness judged. Finished jobs only with
    ``include_finished`` (``list --all``). Same-host pid checks are authoritative and
    cheap, so the HTTP probe is only spent on jobs from other hosts unless
    ``probe_local``. ``prefix``: only job ids that start with it.

    Without ``include_finished`` a settled job is not opened at all (:mod:`.settled`:
    two directory listings say which); with ``settle`` every job read here that has
    provably ended is settled, so the next listing passes it by."""
    now = time.time()
    if squeue is None:
        squeue = SqueueCache()  # one squeue call for the whole listing, only if needed
    index = read_index(root)
    out = []
    with Settler(root, index, squeue=squeue, now=now, enabled=settle) as settler:
        for jid in job_ids(root):
            if (prefix is not None and not jid.startswith(prefix)) or (not include_finished and index.skips(jid)):
                continue
            info = load(JobPaths(root, jid))
            if info.endpoint is None and info.status is None and info.job is None and not info.nodes and not info.corrupt:
                continue  # an empty or foreign folder
            assess(info, probe=probe, probe_local=probe_local, squeue=squeue, stale_after=stale_after, now=now)
            settler.consider(info)
            if info.liveness == Liveness.FINISHED and not include_finished:
                continue
            out.append(info)
    return out


def useful_probe(endpoint: dict | None, probe: Probe | None, *, probe_local: bool = True) -> Probe | None:
    """The probe worth spending on this endpoint, or None.

    Same-host records are judged by pid (cheap and authoritative) unless
    ``probe_local``. A *loopback* URL recorded on another host names that host's
    loopback, not ours: probing it would reach whatever listens on that port here and
    hand it the other job's token, so it is never probed."""
    if probe is None or endpoint is None:
        return None
    if same_host(endpoint):
        return probe if probe_local else None
    url = endpoint.get("url")
    if isinstance(url, str) and is_loopback_url(url):
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
    """Resolve an exact id or a unique prefix to a job, liveness judged (probe included)."""
    match = match_job_id(
        ref,
        job_ids(root),
        where=f"in {root}",
        hint=f"run `forgather control list --all` to see the jobs there, or pass --jobs-dir / set {ENV_JOBS_DIR}",
    )
    info = load(JobPaths(root, match))
    return assess(info, probe=probe, probe_local=True, squeue=squeue or SqueueCache())


def _is_real_dir(path: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
