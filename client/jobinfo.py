"""One job as a listing read it: its records, checked, merged into what people see.

:class:`JobInfo` is what :mod:`.listing` builds and every view reads (the table, ``status``,
the web page, settling); the rules that turn records into a state, a stall or a summary
live on it, once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from forgather_control.core.attachment import no_control_notice
from forgather_control.core.checkpoints import Checkpoint, history
from forgather_control.core.failures import read_failures
from forgather_control.core.jobs import JobPaths
from forgather_control.core.liveness import Liveness, same_host
from forgather_control.core.states import JobState

__all__ = ["SILENT_AFTER", "JobInfo", "stall_of"]


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
