"""The launcher's records in the jobs directory: job.json (node 0) and nodes/<n>.json.

job.json is what ``list``/``cleanup`` know a launched job by: its command, its scheduler
(``judge()`` asks ``squeue`` when it says slurm), restarts, state and exit code.
nodes/<n>.json carries each node's launcher identity (host, pid, start time, boot id)
and a heartbeat refreshed by a daemon thread, so another host can tell a live launcher
from a dead one without trusting a pid.

Claiming a job id refuses one that a live job holds, except the job's own previous run
under SLURM (a requeue reuses ``slurm-<id>``: SLURM has already ended that run).
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from msgspec import structs

from forgather_control.client.settled import end_run
from forgather_control.core import JobPaths, Liveness, judge, pid_alive, process_identity, write_json_atomic
from forgather_control.core.checkpoints import Checkpoint, Scope, Skipped, choose, find, history
from forgather_control.core.checkpoints import roll_back as history_rolled_back
from forgather_control.core.commands import Command, State, is_final_receipt
from forgather_control.core.failures import root_cause
from forgather_control.core.files import TEMP_PREFIX, NotOurs, ensure_private_dir, remove_quietly
from forgather_control.core.knobs import carry_from
from forgather_control.core.liveness import STALE_AFTER, fresh, same_pid_namespace
from forgather_control.core.markers import keep_marked, mark_run
from forgather_control.core.records import Endpoint, Job, KnobCarry, Node, Receipt, Record, RecordError, RollBack, Status, encode, load, load_or_none
from forgather_control.core.states import JobState, is_final
from forgather_control.core.vanished import folder_gone

from .config import LaunchError
from .environments import Placement
from .plan import Plan

log = logging.getLogger(__name__)

__all__ = ["JobRecords", "Outcome", "Previous", "launcher_identity", "read_previous"]

HEARTBEAT_INTERVAL = 10.0


#: The key of the save_and_stop a launcher drops into the job's inbox on a stop signal.
LAUNCHER_STOP_PREFIX = "launcher-stop-"


def launcher_stop_key(job_id: str, restarts: int) -> str:
    return f"{LAUNCHER_STOP_PREFIX}{job_id}-{restarts}"


def stopped_by_a_signal(status: Status, *, signalled: bool) -> bool:
    """Did a signal end this run? The stop the ranks applied says: rank 0's own signal
    (``source`` "signal") or the one a launcher dropped in the inbox on a signal. A
    signal that reached this launcher after the ranks had applied a user's stop did not:
    srun --kill-on-bad-exit ends the other nodes' launchers once one has exited with the
    command's code, and calling that a preemption would requeue a job the user stopped.
    Without a recorded stop, what the launcher and rank 0 saw."""
    for entry in status.commands or []:
        try:
            command = Command(entry.command)
        except ValueError:
            continue
        if command.stops and State.parse(entry.state) in (State.APPLIED, State.COMPLETED):
            return entry.source == "signal" or (entry.key or "").startswith(LAUNCHER_STOP_PREFIX)
    return signalled or bool(status.stopped_by_signal)


@dataclass(frozen=True)
class Outcome:
    """How a run ended: its final state, whether a signal stopped it, and why."""

    state: JobState
    by_signal: bool = False
    reason: str | None = None


def launcher_identity() -> str:
    """``PID:START_TIME`` of this launcher, for its workers' watch (callback/watchdog.py)."""
    me = process_identity()
    return f"{me.pid}:{me.pid_start_time or ''}"


@dataclass(frozen=True)
class Previous:
    """What earlier runs under the same job id left behind, and what this run makes of it."""

    exists: bool
    #: this run's restart count
    restarts: int = 0
    #: the checkpoint this run should resume from (FORGATHER_RESUME_FROM)
    resume_from: str | None = None
    created_at: float | None = None
    #: the folder belongs to this SLURM job's earlier run (a requeue): never "in use"
    same_slurm_job: bool = False
    #: every completed checkpoint of the job's earlier runs, oldest first
    checkpoints: tuple[Checkpoint, ...] = ()
    #: newer checkpoints resume passed over (gone, or not the job's own: see Scope), with why
    gone: tuple[Skipped, ...] = ()
    #: the step of ``resume_from`` (FORGATHER_RESUME_STEP), when its record says
    resume_step: int | None = None
    #: the knob values this run starts from (FORGATHER_KNOBS): the last run's, unless ``--script-knobs``
    knobs: KnobCarry | None = None
    #: the job's last roll back (this run's, when it applies one): job.json keeps it
    roll_back: RollBack | None = None


def read_previous(
    paths: JobPaths,
    placement: Placement,
    *,
    node_rank: int = 0,
    exists: Callable[[str], bool] = os.path.exists,
    scope: Scope | None = None,
    script_knobs: bool = False,
    roll_back: RollBack | None = None,
) -> Previous:
    """Read (never change) an earlier run's job.json and status.json.

    Under SLURM the restart count is SLURM_RESTART_COUNT, which every node sees alike.
    Elsewhere it is the earlier run's count plus one. A node other than 0 may start after
    node 0 already rewrote job.json for this run; it then takes this run's values from it.
    The run resumes from the newest completed checkpoint of any earlier run that still
    exists (``exists`` is asked; tests inject it) and that ``scope`` (default: this
    process's, :meth:`Scope.here`) allows: the records may name anything. Its knobs
    start at the last run's values (``status.json`` ``knobs``), with the values of the
    checkpoint's time (:func:`~forgather_control.core.knobs.carry_from`); with
    ``script_knobs`` at the script's. A node that starts after node 0 began this run
    takes what node 0 gave (job.json), so every rank starts alike.

    ``roll_back`` (``FORGATHER_RESUME``'s, from ``forgather control resume --from``): the
    run resumes from that checkpoint of the history, which must be on disk and the job's
    own (``scope``), and every newer one is left behind (kept, marked). Applied once: a
    roll back job.json already records (a SLURM requeue keeps its env) is not again.
    """
    try:
        paths.check_owned()  # before anything in it is read: another user's folder is never taken over
    except NotOurs as exc:
        raise LaunchError(str(exc)) from None
    scope = scope or Scope.here()
    job, status = _load(paths.job, Job), _load(paths.status, Status)
    slurm_id = placement.scheduler.slurm_job_id if placement.scheduler.type == "slurm" else None
    if job is None and status is None:
        return Previous(exists=False, restarts=placement.restart_count)
    job = job or Job()
    sched = job.scheduler
    same_slurm = bool(slurm_id) and sched is not None and str(sched.slurm_job_id) == str(slurm_id)
    prev_restarts = job.restarts if job.restarts is not None else -1
    created = job.created_at
    this_run = job.state == JobState.RUNNING and (prev_restarts == placement.restart_count if slurm_id else node_rank != 0)
    points = tuple(history(job, status, clean_exit=job.exit_code == 0 and is_final(job.state)))
    if this_run:
        why = scope.refuses(job.resume_from) if job.resume_from else None
        if why is not None:
            log.warning("not resuming from %s: %s", job.resume_from, why)
        if why is not None:
            return Previous(True, max(prev_restarts, 0), None, created, same_slurm, points, knobs=job.knobs, roll_back=job.roll_back)
        return Previous(
            True, max(prev_restarts, 0), job.resume_from, created, same_slurm, points, resume_step=job.resume_step, knobs=job.knobs, roll_back=job.roll_back
        )
    restarts = placement.restart_count if slurm_id and same_slurm else prev_restarts + 1
    if slurm_id and not same_slurm:
        restarts = placement.restart_count
    applied = job.roll_back
    if roll_back is not None and (applied is None or applied.id != roll_back.id):
        points = tuple(_roll_back(list(points), roll_back, exists=exists, scope=scope))
        applied = structs.replace(roll_back, run=max(restarts, 0), at=time.time())
    resume_point, gone = choose(list(points), exists=exists, scope=scope)
    for skipped in gone:
        log.warning("not resuming from checkpoint %s", skipped.describe())
    # the last run's status says its knobs; a status older than job.json's run (that run
    # died before rank 0 wrote) is not the last word: what that run was given is
    last = status is not None and (status.restarts is None or job.restarts is None or status.restarts == job.restarts)
    knobs = carry_from(
        status.knobs if status is not None and last else None, resume_point.as_record() if resume_point else None, before=job.knobs, script=script_knobs
    )
    return Previous(
        True,
        max(restarts, 0),
        resume_point.path if resume_point else None,
        created,
        same_slurm,
        points,
        tuple(gone),
        resume_step=resume_point.step if resume_point else None,
        knobs=knobs,
        roll_back=applied,
    )


def _roll_back(points: list[Checkpoint], asked: RollBack, *, exists: Callable[[str], bool], scope: Scope) -> list[Checkpoint]:
    """The history rolled back to the checkpoint ``asked`` names, refused (LaunchError) when
    that one is not the job's, or is gone."""
    target = find(points, asked.path)
    if target is None:
        raise LaunchError(f"cannot roll back to {asked.path}: it is not one of the job's checkpoints (`forgather control status JOB` lists them)")
    why = "no longer on disk" if not exists(target.path) else scope.refuses(target.path)
    if why is not None:
        raise LaunchError(f"cannot roll back to {target.describe()}: {why}")
    rolled = history_rolled_back(points, target)
    behind = [new.describe() for new, old in zip(rolled, points, strict=True) if new.left_behind and not old.left_behind]
    if behind:
        log.warning("rolling back to %s; left behind (kept on disk): %s", target.describe(), ", ".join(behind))
    return rolled


R = TypeVar("R", bound=Record)


def _load(path: Path, cls: type[R]) -> R | None:
    """A record of the job id being claimed; corrupt ones stop the launch (whose job is
    it? is it running?) with the reason and the way out."""
    try:
        return load(path, cls)
    except RecordError as exc:
        raise LaunchError(f"the job folder {path.parent} holds a corrupt record ({exc}); remove the folder, or pick another --job-id") from None


def _says_something(record: Record | None) -> bool:
    """A record with at least one field (a file holding ``{}`` names no process)."""
    return record is not None and bool(encode(record))


def _node_alive(record: Node, *, now: float) -> tuple[bool, str]:
    """Is the launcher that wrote this node record still running?"""
    if record.ended_at:
        return False, "ended"
    if same_pid_namespace(record):
        return (True, f"launcher pid {record.pid} runs on this host") if pid_alive(record) else (False, "pid gone")
    beat = record.heartbeat_at
    if beat is not None and fresh(beat, now, STALE_AFTER):
        return True, f"launcher on {record.host} sent a heartbeat {max(0.0, now - beat):.0f}s ago"
    return False, "stale heartbeat"


class JobRecords:
    """Owns this node's records for one run: claim, start (with heartbeat), finish."""

    def __init__(self, paths: JobPaths, plan: Plan, *, heartbeat_interval: float = HEARTBEAT_INTERVAL) -> None:
        self.paths = paths
        self.plan = plan
        self.heartbeat_interval = heartbeat_interval
        self.node_rank = plan.node_rank
        self._node = Node()
        #: job.json as this run writes it (node 0, once started)
        self._job: Job | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: this launcher's run marker (client/settled.py): the job is listed while it runs
        self._marker: str | None = None

    @property
    def slurm_job_id(self) -> str | None:
        sched = self.plan.placement.scheduler
        return str(sched.slurm_job_id) if sched.type == "slurm" else None

    # -- claim ----------------------------------------------------------------------
    def claim(self, previous: Previous) -> None:
        """Refuse a job id held by a live job; tidy what a dead earlier run left."""
        now = time.time()
        requeued = previous.same_slurm_job
        mine = _load(self.paths.node(self.node_rank), Node)
        if mine is not None and _says_something(mine) and not (requeued and self._from_earlier_slurm_run(mine)):
            alive, why = _node_alive(mine, now=now)
            if alive:
                raise LaunchError(
                    f"job id {self.plan.job_id!r} is in use: node {self.node_rank} of it is still running "
                    f"({why}; record {self.paths.node(self.node_rank)}). Pick another --job-id, or stop that "
                    f"job first (`forgather control stop {self.plan.job_id}`)"
                )
        if self.node_rank == 0 and not requeued:
            endpoint, status = _load(self.paths.endpoint, Endpoint), _load(self.paths.status, Status)
            if _says_something(endpoint) or _says_something(status):
                from forgather_control.client import probe_endpoint

                verdict, why = judge(endpoint=endpoint, status=status, probe=probe_endpoint, squeue=None)
                if verdict in (Liveness.ALIVE, Liveness.UNKNOWN):
                    raise LaunchError(
                        f"job id {self.plan.job_id!r} is in use by a running job ({verdict}: {why}; see "
                        f"{self.paths.dir}). Pick another --job-id, or stop it first "
                        f"(`forgather control stop {self.plan.job_id}`)"
                    )
        self.paths.create(mark=False)
        self._marker = mark_run(self.paths.root, self.paths.job_id)  # before anything of this run
        ensure_private_dir(self.paths.nodes)
        if self.node_rank == 0 and previous.exists:
            self._tidy_previous()

    def _from_earlier_slurm_run(self, record: Node) -> bool:
        return str(record.slurm_job_id) == str(self.slurm_job_id) and (record.restarts if record.restarts is not None else -1) != self.plan.restarts

    def _tidy_previous(self) -> None:
        """An earlier run's endpoint and unread commands must not leak into this run: a
        save_and_stop left in the inbox at a requeue would stop the rerun at once."""
        remove_quietly(self.paths.endpoint)
        try:
            names = [n for n in os.listdir(self.paths.inbox) if not n.startswith(TEMP_PREFIX)]
        except OSError:
            names = []
        for name in names:
            log.warning("dropping command file %s left from the job's previous run", name)
            remove_quietly(self.paths.inbox / name)

    # -- start ----------------------------------------------------------------------
    def start(self, previous: Previous, *, argv: list[str] | tuple[str, ...], cwd: str, no_control_after: float | None = None) -> None:
        """Write this run's records and start the heartbeat. ``no_control_after``: the
        seconds after which the launcher says no control is attached (recorded, so
        readers can say it too)."""
        now = time.time()
        plan, p = self.plan, self.plan.placement
        me = process_identity()
        self._node = Node(
            host=me.host,
            boot_id=me.boot_id,
            pid=me.pid,
            pid_start_time=me.pid_start_time,
            pid_ns=me.pid_ns,
            job_id=plan.job_id,
            node_rank=self.node_rank,
            nnodes=p.nnodes,
            started_at=now,
            heartbeat_at=now,
            state=JobState.RUNNING,
            restarts=plan.restarts,
            slurm_job_id=self.slurm_job_id or None,
        )
        self._write_node()
        if self.node_rank == 0:
            self._job = Job(
                job_id=plan.job_id,
                argv=list(argv),
                command=list(plan.argv),
                cwd=cwd,
                user=_user(),
                host=me.host,
                scheduler=p.scheduler,
                environment=p.environment,
                nnodes=p.nnodes,
                nproc_per_node=p.nproc_per_node,
                created_at=previous.created_at or now,
                started_at=now,
                updated_at=now,
                restarts=plan.restarts,
                resume_from=plan.resume_from,
                resume_step=plan.resume_step,
                output_dir=os.path.realpath(Scope.here().output_dir),  # what this run resumes from inside
                # carried forward: a run that saves nothing must not lose the runs' before
                checkpoints=[c.as_record() for c in previous.checkpoints],
                last_checkpoint=previous.checkpoints[-1].path if previous.checkpoints else None,
                knobs=plan.knobs,
                roll_back=previous.roll_back,
                requeue=bool(p.requeue_argv),
                grace=plan.config.grace,
                control=plan.config.control,
                no_control_after=no_control_after if plan.config.control else None,
                state=JobState.RUNNING,
            )
            self._write_job()
        self._thread = threading.Thread(target=self._beat, name="forgather-launch-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            try:
                with self._lock:
                    self._node.heartbeat_at = time.time()
                    self._write_node()
                self._marker = keep_marked(self.paths.root, self.paths.job_id, self._marker)
            except Exception as exc:
                if not folder_gone(self.paths.dir, exc, log):
                    log.exception("could not refresh %s; the job runs on", self.paths.node(self.node_rank))

    def _write_node(self) -> None:
        write_json_atomic(self.paths.node(self.node_rank), encode(self._node))

    def _write_job(self) -> None:
        if self._job is not None:
            write_json_atomic(self.paths.job, encode(self._job))

    # -- finish ---------------------------------------------------------------------
    def outcome(
        self,
        worker_code: int,
        *,
        escalated: bool = False,
        signalled: bool = False,
        forced: str | None = None,
        passed_on: str | None = None,
        nothing_saved: str | None = None,
    ) -> Outcome:
        """How this run ended, from torchrun's exit code, what rank 0 recorded and what
        the launcher saw: a second signal aborts whatever rank 0 last wrote; an abort
        stays an abort even when a rank's exit code is not 0 (a second signal in a
        worker ends it with 128+N); otherwise a non-zero code is a failure, named by its
        root cause when a rank recorded one. ``forced``: the launcher ended a hung job
        that was told to abort (why). ``passed_on``: a stop signal went straight to the
        workers because no control was attached (why): a failure that saved nothing,
        unless rank 0 came up in time and recorded a stop of its own. ``nothing_saved``:
        a stop signal came before the run's first step and ended it at once (why): a stop
        that lost nothing, whatever the workers' exit codes."""
        status = self.this_runs_status() or Status()
        recorded = JobState.parse(status.state)
        by_signal = stopped_by_a_signal(status, signalled=signalled)
        if forced:
            return Outcome(JobState.ABORTED, by_signal, forced)
        if escalated:
            return Outcome(JobState.ABORTED, by_signal, "a second signal to the launcher stopped every rank at once, without saving")
        if nothing_saved:
            # rank 0's own word only when it had made a step and stopped on its own (saved) before this stop reached it
            own = recorded == JobState.STOPPED and status.first_step_at is not None and status.stop_reason
            return Outcome(JobState.STOPPED, True, status.stop_reason if own else nothing_saved)
        if passed_on:
            if recorded in (JobState.STOPPED, JobState.ABORTED):
                return Outcome(recorded, True, status.stop_reason)
            return Outcome(JobState.FAILED, True, passed_on)
        if recorded == JobState.ABORTED:
            return Outcome(JobState.ABORTED, by_signal, status.stop_reason)
        if worker_code != 0 and signalled and not by_signal and recorded in (JobState.STOPPED, JobState.PAUSED):
            # A user's stop the ranks had carried out and rank 0 had recorded as the run's
            # end, then a signal: srun --kill-on-bad-exit ending this node once another
            # node's launcher exited with the stop's code, while rank 0 still finished
            # (its last answers to whoever follows the stop). The run ended as asked.
            return Outcome(recorded, False, status.stop_reason)
        if worker_code != 0:
            cause = root_cause(self.paths, run=self.plan.restarts)
            why = cause.describe() if cause else status.error or f"torchrun exited with {worker_code}"
            return Outcome(JobState.FAILED, by_signal, why)
        if recorded is not None and recorded.final:
            return Outcome(recorded, by_signal, status.stop_reason if recorded in (JobState.STOPPED, JobState.PAUSED) else None)
        return Outcome(JobState.FINISHED, by_signal, None)

    def this_runs_status(self) -> Status | None:
        """status.json unless it names another run of the job (this run's rank 0 has not
        written yet; the file is an earlier run's), is unusable or says nothing."""
        status = load_or_none(self.paths.status, Status)
        if status is None or not _says_something(status) or (status.restarts is not None and status.restarts != self.plan.restarts):
            return None
        return status

    def finish(
        self,
        state: JobState | str,
        exit_code: int,
        *,
        reason: str | None = None,
        receipt: Receipt | None = None,
        torchrun_exit_code: int | None = None,
        signals: list[str] | None = None,
        leftover_pids: list[int] | None = None,
        requeued_at: float | None = None,
        error: str | None = None,
    ) -> None:
        """Record the run's end on this node; on node 0 in job.json too, and close rank
        0's books when it could not (killed, or it never got as far as its status):
        list, status and job.json then say the same thing. ``receipt``: the final
        receipt of the command the launcher carried out itself (a forced abort). The
        rest goes into job.json as given: torchrun's own exit code, the signals the
        launcher got, processes that survived it, when it requeued the job, and the
        launcher's own error."""
        state = JobState(state)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        now = time.time()
        with self._lock:
            node = self._node
            node.state, node.exit_code, node.ended_at, node.heartbeat_at = state, exit_code, now, now
            try:
                self._write_node()
            except OSError as exc:
                log.warning("could not write %s: %s", self.paths.node(self.node_rank), exc)
        job = self._job
        if self.node_rank != 0 or job is None:
            end_run(self.paths, self._marker)  # settles the job if this node ended it last
            return
        status = self.this_runs_status()
        job.state, job.exit_code, job.ended_at, job.updated_at = state, exit_code, now, now
        if reason:
            job.reason = reason
        cause = root_cause(self.paths, run=self.plan.restarts) if state == JobState.FAILED else None
        if cause is not None:
            job.failure = cause.as_record()
        clean = (torchrun_exit_code if torchrun_exit_code is not None else exit_code) == 0  # every rank exited 0: every save is whole
        points = history(job, status, run=self.plan.restarts, clean_exit=clean)
        job.checkpoints = [c.as_record() for c in points]
        job.last_checkpoint = points[-1].path if points else None
        if status is not None and status.step is not None:
            job.final_step = status.step
        job.torchrun_exit_code, job.signals, job.leftover_pids, job.requeued_at, job.error = torchrun_exit_code, signals, leftover_pids, requeued_at, error
        try:
            self._write_job()
            self._close_books(status, state, reason, now, receipt)
            self._remove_dead_endpoint()
        except OSError as exc:
            log.warning("could not write %s: %s", self.paths.job, exc)
        end_run(self.paths, self._marker)  # the job's own end settles it (client/settled.py)

    def _close_books(self, status: Status | None, state: JobState, reason: str | None, now: float, receipt: Receipt | None = None) -> None:
        """Rank 0 did not record how this run ended (killed by a second signal, by the
        OOM killer, or it died before its first status): the launcher writes the final
        state into status.json."""
        final = JobState.REQUEUED if state == JobState.REQUEUED else state
        # A run stopped before its first step: rank 0 named the SIGTERM the launcher sent,
        # the launcher names the signal it got.
        early = final == JobState.STOPPED and status is not None and status.first_step_at is None and bool(reason) and status.stop_reason != reason
        if status is not None and JobState.parse(status.state) == final and not early:
            return
        if status is not None and is_final(status.state) and final != JobState.ABORTED and not early:
            return  # rank 0's own word stands unless the launcher aborted it
        closed = structs.replace(
            status if status is not None else Status(job_id=self.plan.job_id, restarts=self.plan.restarts),
            state=final,
            ended_at=now,
            heartbeat_at=now,
            closed_by="launcher",
        )
        if reason and final == JobState.FAILED:
            closed.error = reason
        elif reason:
            closed.stop_reason = reason
        if receipt is not None:
            closed.commands = _with_receipt(closed.commands or [], receipt)
            closed.pending_commands = 0
        write_json_atomic(self.paths.status, encode(closed))

    def _remove_dead_endpoint(self) -> None:
        """Rank 0 killed before it removed its endpoint (whether or not it recorded its
        end): the endpoint of a process that is gone names nothing; remove it."""
        endpoint = load_or_none(self.paths.endpoint, Endpoint)
        if endpoint is not None and same_pid_namespace(endpoint) and not pid_alive(endpoint):
            remove_quietly(self.paths.endpoint)

    def update_job(self, **fields: Any) -> None:
        """Change fields of job.json (node 0; a no-op elsewhere), e.g. ``no_control_since``."""
        if self.node_rank != 0 or self._job is None:
            return
        self._job = structs.replace(self._job, **fields, updated_at=time.time())
        self._write_job()


def _with_receipt(commands: list[Receipt], receipt: Receipt) -> list[Receipt]:
    """``commands`` with ``receipt`` in place of the entry of the same id (or its key),
    else added; every other open entry is dropped: the job ended. The launcher's receipt
    says the command, its state, key, source, result and reason, and when it changed."""
    out, placed = [], False
    for e in commands:
        if e.id == receipt.id or (receipt.key and e.key == receipt.key and e.command == receipt.command):
            said = {name: getattr(receipt, name) for name in ("command", "state", "key", "source", "updated_at", "result", "reason")}
            out.append(structs.replace(e, **said))
            placed = True
        elif not is_final_receipt(e):
            out.append(structs.replace(e, state=State.DROPPED.value, reason="the job was aborted"))
        else:
            out.append(e)
    if not placed:
        out.append(structs.replace(receipt, created_at=receipt.created_at if receipt.created_at is not None else receipt.updated_at))
    return out


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return str(os.getuid())
