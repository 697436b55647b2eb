"""One job as a listing read it: its records, checked, merged into what people see.

:class:`JobInfo` is what :mod:`.listing` builds and every view reads (the table, ``status``,
the web page, settling); the rules that turn records into a state, a stall or a summary
live on it, once.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import msgspec

from forgather_control.core.attachment import no_control_notice
from forgather_control.core.checkpoints import Checkpoint, Scope, choose, history
from forgather_control.core.failures import Failure, read_failures
from forgather_control.core.jobs import JobPaths
from forgather_control.core.liveness import Liveness, same_host
from forgather_control.core.markers import SILENT_FOR
from forgather_control.core.records import (
    UNSET,
    CheckpointListed,
    CheckpointRecord,
    Endpoint,
    Job,
    JobDetails,
    JobRow,
    NoControl,
    Node,
    RankTime,
    StallNotice,
    Status,
    encode,
)
from forgather_control.core.states import JobState

__all__ = ["DETAIL_FIELDS", "LIVE_FIELDS", "SILENT_AFTER", "JobInfo", "overlay", "stall_of", "status_of_run"]


@dataclass
class JobInfo:
    """Everything known about one job, merged from its records."""

    job_id: str
    paths: JobPaths
    endpoint: Endpoint | None = None
    status: Status | None = None
    job: Job | None = None
    nodes: list[Node] = field(default_factory=list)
    liveness: Liveness = Liveness.UNKNOWN
    evidence: str = ""
    #: why a record of this job was refused (it then shows as ``corrupt``)
    corrupt: list[str] = field(default_factory=list)
    #: when (this host's clock) the job was judged
    judged_at: float = field(default_factory=time.time)
    #: a job of the Forgather framework's own control callback (control/framework_jobs.py)
    framework: bool = False
    #: the uid of another user whose job folder is private to them: nothing in it was read,
    #: so the job is left out of listings and refused by id (``evidence`` says why)
    private_to: int | None = None

    @property
    def current_status(self) -> Status | None:
        """status.json when it belongs to the launcher's current run of the job; None when
        there is none yet or it is a previous run's (a relaunch or SLURM requeue of the
        same id, before the new rank 0 has written)."""
        return status_of_run(self.status, self.job.restarts if self.job is not None else None)

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
        job = self.job or Job()
        launcher_state = job.state
        status = self.current_status
        recorded = (status.state if status is not None else None) or launcher_state or JobState.UNKNOWN
        if self.liveness == Liveness.ALIVE:
            if launcher_state == JobState.RUNNING and status is None and job.control:
                return JobState.UNCONTROLLED if job.no_control_since is not None else JobState.STARTING
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
    def stall(self) -> StallNotice | None:
        """Why a running job counts as stalled, or None (see :func:`stall_of`)."""
        if self.liveness != Liveness.ALIVE:
            return None
        return stall_of(self.current_status or Status(), self.judged_at)

    @property
    def no_control(self) -> NoControl | None:
        """Why an ``uncontrolled`` job is, and what to add (control/attachment.py), or None."""
        if self.state != JobState.UNCONTROLLED:
            return None
        job = self.job or Job()
        return no_control_notice(job.no_control_after, job.no_control_since)

    def summary(self) -> JobRow:
        """The job's ``list --json`` row. Never contains the token. Step, pid and the rest
        come from this run's status only; a relaunch that is still starting has none yet,
        and is shown at the step it resumes from (job.json)."""
        ep = self.endpoint or Endpoint()
        st = self.current_status or Status()
        jb = self.job or Job()
        updated = max((t for t in (st.heartbeat_at, st.updated_at, ep.started_at, jb.updated_at) if t is not None), default=None)
        recorded = st.state or jb.state
        return JobRow(
            job_id=self.job_id,
            state=self.state,
            recorded_state=recorded,
            liveness=str(self.liveness),
            evidence=self.evidence,
            host=ep.host or st.host or jb.host,
            port=ep.port,
            url=ep.url,
            pid=ep.pid or st.pid,
            step=st.step if st.step is not None else (jb.resume_step if self.current_status is None else None),
            max_steps=st.max_steps,
            world_size=st.world_size,
            scheduler=jb.scheduler.type if jb.scheduler is not None else None,
            restarts=_count(jb.restarts, st.restarts),
            stall=self.stall,
            no_control=self.no_control,
            framework_callback=self.framework,
            loss=_finite((st.metrics or {}).get("loss")),
            resumed_from=_text(jb.resume_from, st.resumed_from),
            why=self.why,
            last_checkpoint=points[-1].path if (points := self.resumable) else None,
            updated_at=updated,
            jobs_dir=str(self.paths.root),
        )

    @property
    def paused(self) -> bool:
        """It ended paused (``pause``): it waits to be resumed, so ``list`` shows it without
        ``--all``, it is never settled, and ``cleanup`` keeps it unless asked."""
        return self.state == JobState.PAUSED

    def failed_lately(self, now: float) -> bool:
        """It failed less than a day ago (:data:`~forgather_control.core.markers.SILENT_FOR`):
        a failure is what a person most needs to see, so ``list`` shows it that long, as it
        shows a job that died, and settling waits as long."""
        if self.state != JobState.FAILED:
            return False
        st, job = self.current_status or Status(), self.job or Job()
        ended = job.ended_at or st.ended_at or st.heartbeat_at or job.updated_at
        return ended is not None and now - ended < SILENT_FOR

    @property
    def why(self) -> str | None:
        """Why the job ended, in one line, decided here for every view: a failure's root
        cause (the first rank whose own code raised, not rank 0 losing it in a collective
        after), else the error or reason recorded; a stop's or an abort's reason. None
        while it may run."""
        state = self.state
        st, job = self.current_status or Status(), self.job or Job()
        if state in (JobState.FAILED, JobState.DEAD):
            failures = self.failures()
            if failures:
                return failures[0].describe()
            cause = Failure.parse(job.failure)
            return cause.describe() if cause is not None else st.error or job.reason
        if state.final:
            return st.stop_reason or job.reason
        return None

    def failures(self) -> list[Failure]:
        """Every rank's recorded failure of the job's current run, the root cause first."""
        status = self.status
        return read_failures(self.paths, run=_count((self.job or Job()).restarts, status.restarts if status is not None else None))

    def resume_point(self) -> CheckpointRecord | None:
        """The job's newest completed checkpoint of any run (what a relaunch resumes from):
        a resumed run that has not saved yet still has it."""
        points = self.resumable
        return points[-1].as_record() if points else None

    @property
    def resumable(self) -> list[Checkpoint]:
        """The checkpoints a relaunch may take, oldest first: none a roll back left behind."""
        return [p for p in self.checkpoints if not p.left_behind]

    def checkpoint_list(self) -> list[CheckpointListed]:
        """Every completed checkpoint of the job's runs as ``status`` lists it: on disk or
        not, left behind or not, and the one a resume starts from (core.checkpoints.choose,
        as the launcher asks it, in the job's output directory)."""
        points = self.checkpoints
        job = self.job or Job()
        owner = _folder_owner(self.paths)
        scope = Scope(job.output_dir, owner) if job.output_dir and owner is not None else None
        point, _ = choose(points, scope=scope)
        return [CheckpointListed(**msgspec.structs.asdict(p.as_record()), on_disk=os.path.exists(p.path), resume_point=(p == point) or None) for p in points]

    @property
    def checkpoints(self) -> list[Checkpoint]:
        """Every completed checkpoint the job's records know, oldest first."""
        status = self.status
        return history(self.job, status, run=status.restarts if status is not None else None)

    def with_hosts(self, ranks: list[RankTime]) -> list[RankTime]:
        """Each rank's host, from its node's launcher record (rank 0 names the node only)."""
        hosts = {n.node_rank: n.host for n in self.nodes if n.node_rank is not None and n.host}
        return [msgspec.structs.replace(r, host=hosts.get(r.node)) if r.node in hosts else r for r in ranks]

    def details(self) -> JobDetails:
        """The ``status --json`` object: the summary plus the status record's detail."""
        d = JobDetails.of(self.summary())
        if self.status is not None:
            overlay(d, self.status, DETAIL_FIELDS)
        if d.resume_point is UNSET or d.resume_point is None:
            d.resume_point = self.resume_point() or d.resume_point
        if self.job is not None or self.status is not None:
            d.checkpoints = self.checkpoint_list()
        if not self.state.live:
            # a rate and an ETA are claims about a running job; a dead or ended one has neither
            d.steps_per_second = d.eta_seconds = None
        if isinstance(d.ranks, list):
            d.ranks = self.with_hosts(d.ranks)
        job = self.job or Job()
        if job.exit_code is not None:
            d.exit_code = job.exit_code
        if self.state in (JobState.FAILED, JobState.DEAD) or d.exit_code:
            failures = self.failures()
            if failures:
                d.failures = [f.as_record() for f in failures]
                d.failure = d.failures[0]  # the root cause: the first rank that raised
        if self.job is not None:
            d.job = self.job
        return d


#: What ``status --json`` takes from status.json beyond the row (an error only when it says one).
DETAIL_FIELDS = (
    "epoch",
    "metrics",
    "steps_per_second",
    "eta_seconds",
    "resume_point",
    "commands",
    "guards",
    "guard_events",
    "ranks",
    "stragglers",
    "knobs",
    "control_error",
    "started_at",
    "ended_at",
    "check_interval",
    "http",
    "error",
)


#: What ``status --json`` takes from a live status (its server's answer): all of it but the
#: id (the row's) and the stall (judged again: :func:`stall_of`).
#: What a live answer overlays on the records: every status field a detail has, but the
#: checkpoints (rank 0 knows its own run's; the job's history, every run's with where each
#: is and which a resume takes, is the records': JobInfo.checkpoint_list).
LIVE_FIELDS = tuple(name for name in Status.__struct_fields__ if name not in ("job_id", "stall", "checkpoints") and name in JobDetails.__struct_fields__)


def overlay(details: JobDetails, status: Status, fields: tuple[str, ...]) -> JobDetails:
    """``details`` with each of ``fields`` that ``status`` holds (as status.json writes it:
    a field left unset or null is not held; an explicit no-resume-point is) set from it."""
    held = encode(status)
    for name in fields:
        value = getattr(status, name)
        if name in held and value is not UNSET and (value or name != "error"):
            setattr(details, name, value)
    return details


#: On this host, a rank 0 whose heartbeat is older than this is not answering (its I/O
#: thread writes one every couple of seconds, whatever the training thread does).
SILENT_AFTER = 60.0
_STALL_WHY = {
    "agreement": "rank 0 waits in the agreement collective: another rank has not arrived",
    "training": "rank 0 is in the training code (a data loader, a collective of its own, a lock)",
    "save": "rank 0 is in a commanded save that takes very long",
    "eval": "rank 0 is in a commanded evaluation that takes very long",
}


def status_of_run(status: Status | None, run: int | None) -> Status | None:
    """``status`` when it is run ``run``'s (or either does not say); None when it is a
    previous run's: it says nothing of this run. Every view asks this, not its own rule."""
    if status is None or run is None or status.restarts is None or status.restarts == run:
        return status
    return None


def stall_of(status: Status, now: float) -> StallNotice | None:
    """Why a running job is stalled, or None: rank 0's own word (its step has not moved
    for longer than its threshold, and what it is doing), or, on this host, rank 0 not
    answering at all (its control thread no longer writes its heartbeat: a process stopped,
    or stuck holding the GIL). ``for`` is seconds, ``why`` a sentence for a person."""
    if status.state != JobState.RUNNING:
        return None
    beat = status.heartbeat_at
    silent = now - beat if beat is not None and same_host(status) else 0.0
    if beat is not None and silent > SILENT_AFTER:
        since = status.progress_at if status.progress_at is not None else beat
        return StallNotice(
            for_=round(max(0.0, now - since), 1),
            step=status.step,
            phase="silent",
            why=f"rank 0 is not answering: its last heartbeat was {silent:.0f}s ago",
        )
    if status.stall is None:
        return None
    stall = status.stall
    return StallNotice(
        for_=stall.for_, after=stall.after, step=stall.step, phase=stall.phase, why=_STALL_WHY.get(str(stall.phase), "rank 0's step does not move")
    )


def _folder_owner(paths: JobPaths) -> int | None:
    try:
        return os.lstat(paths.dir).st_uid
    except OSError:
        return None


def _count(*values: object) -> int | None:
    """The first value that is a count (a non-negative int), else None."""
    return next((v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0), None)


def _finite(value: object) -> float | None:
    """A number a JSON reader takes (not NaN or an infinity), else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _text(*values: object) -> str | None:
    return next((v for v in values if isinstance(v, str) and v), None)
