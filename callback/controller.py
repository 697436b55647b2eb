"""The trainer-agnostic Controller: queue -> agreement -> actions, and the job's status.

Any loop::

    with Controller(max_steps=1000) as ctl:
        for step in range(1, 1001):
            loss = train_step()
            act = ctl.step(step, {"loss": loss})
            if act.evaluate:
                ctl.evaluation_done(evaluate())
            if act.save:
                ctl.checkpoint_saved(save(step))
            if act.stop:
                break

Every rank calls ``step`` with the same step numbers. On global rank 0 the Controller
serves (:mod:`.plane`: HTTP, the inbox, endpoint.json / status.json); every rank takes
part in the agreement at check steps all ranks know in advance (:mod:`.schedule`; the
next one travels in the agreed tensor), so every rank gets the same actions at the same
step. Results the loop reports are matched to their commands in :mod:`.receipts`. A stop
that cannot wait also applies between evaluation batches (:meth:`Controller.evaluation_batch`),
and before the run's first step a stop signal ends the process at once: nothing to save.
Between checks ``step`` is one comparison and two attribute writes; a process alone
makes no collective and looks at the ledger only when something changed.

Ranks are read from torch.distributed when it is initialised, else from torchrun's
environment (RANK, WORLD_SIZE). A job whose processes initialise torch.distributed
after the Controller started, without those variables (``mp.spawn``), is corrected at
train begin / the first step: a process that turns out not to be rank 0 stops serving.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forgather_control.core.commands import Command, LedgerError
from forgather_control.core.host import is_loopback_host
from forgather_control.core.jobs import PROTOCOL, JobPaths
from forgather_control.core.knobs import RESUMED, Knob, KnobTable, describe
from forgather_control.core.states import JobState

from . import signals as _signals_mod
from .actions import FLAG_EVALUATE, FLAG_SAVED, NO_ACTIONS, Actions, actions_for, evaluates_first
from .agreement import Agreement, Pending, Proposal, distributed_context, distributed_ready, dump_trace
from .config import ControllerConfig
from .guarding import GuardBook
from .progress import StepRate, json_metrics
from .resume import carried_knobs, resume_from, resume_step
from .schedule import NEVER, CheckSchedule, next_lag
from .signals import DEFAULT_SIGNALS, SignalFlags, StoppedEarly
from .stackdump import enable_stack_dumps
from .stall import Phase, StallWatch
from .straggle import RankClock, node_rank

if TYPE_CHECKING:
    from forgather_control.core.ledger import Ledger
    from forgather_control.core.metrics import History
    from forgather_control.core.records import CheckpointRecord, GuardFiring, Identity, KnobValue, Metrics, RankTime, Status, Straggler

    from .plane import ControlPlane
    from .receipts import Receipts

log = logging.getLogger(__name__)

#: How long close waits for a started check's collective (seconds), and when the rank
#: ends with an error (its failure must not wait on peers that may be gone).
INFLIGHT_AT_CLOSE = 30.0
INFLIGHT_AT_FAILURE = 2.0
#: Checks between evaluation batches are synchronous; without a fixed interval they
#: come about once a second.
EVAL_CHECK_INTERVAL = 1.0
#: Rank 0 compares the ranks' times per step (the status's rank table, stragglers) at
#: most this often (seconds), not at every check: checks come up to ten a second, and at
#: thousands of ranks the comparison is milliseconds every rank waits for at the next
#: collective (docs/design-notes.md, "At scale").
COMPARE_EVERY = 1.0


def _eval_interval(check_interval: float | None) -> float:
    return EVAL_CHECK_INTERVAL if check_interval is None else check_interval


@dataclass
class _Inflight:
    """A check started at one step and resolved at a later one (agreement.Pending)."""

    pending: Pending
    proposal: Proposal
    entry: Any
    synced: tuple[int, CheckpointRecord | None]


__all__ = ["DEFAULT_SIGNALS", "NO_ACTIONS", "Actions", "Controller"]


class Controller:
    """Owns the control plane of one training process.

    Keyword-only options, each described in :class:`ControllerConfig` (``job_id``,
    ``jobs_dir``, ``host``, ``port``, ``enable_http``, ``auth``, ``cleanup_on_exit``,
    ``max_steps``, ``check_interval``, ``heartbeat_interval``, ``poll_interval``,
    ``max_pending``, ``signals``, ``signal_repeat_window``, ``rank``, ``world_size``,
    ``guards``);
    what is not given comes from the environment the launcher sets, else a default.
    ``config=`` passes a resolved :class:`ControllerConfig` instead.
    """

    #: What the per-step test reads and writes (``step`` and the integrations' hooks,
    #: which inline it) are slots, a fixed offset each; every other attribute is in the
    #: instance dict, which outgrows the interpreter's shared-key layout (``bench_hooks.py``).
    __slots__ = ("__dict__", "__weakref__", "_next_check", "_poke", "current_step", "metrics")

    def __init__(self, *, config: ControllerConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise TypeError("give Controller either config= or options, not both")
        cfg = config if config is not None else ControllerConfig.from_env(**options)
        self.config = cfg
        # The options as attributes, as callers have always read them.
        self.job_id = cfg.job_id
        self.jobs_dir = cfg.jobs_dir
        self.paths = JobPaths(cfg.jobs_dir, cfg.job_id)
        self.host = cfg.host
        self.port = cfg.port
        self.enable_http = cfg.enable_http
        self.auth = cfg.auth
        self.cleanup_on_exit = cfg.cleanup_on_exit
        self.max_steps = cfg.max_steps  # integrations set it once the trainer knows it
        #: evaluation is configured: a ``save`` evaluates first (integrations set it)
        self.evaluates = cfg.evaluates
        self.check_interval = cfg.check_interval
        self.heartbeat_interval = cfg.heartbeat_interval
        self.poll_interval = cfg.poll_interval

        self._fixed_rank = cfg.rank is not None or cfg.world_size is not None
        env_rank, env_world = distributed_context()
        self.rank = env_rank if cfg.rank is None else cfg.rank
        self.world_size = env_world if cfg.world_size is None else cfg.world_size
        self.is_rank0 = self.rank == 0

        #: rank 0's ledger and receipts, made on first use (:attr:`ledger`): a rank other
        #: than 0 holds neither, nor loads the typed records they are made of (issue 24)
        self._ledger: Ledger | None = None
        self._book: Receipts | None = None
        # Live training facts; written by the training thread, read by the I/O thread.
        self.current_step = 0
        self.metrics: Any = None
        self.eval_metrics: Metrics = {}
        self.epoch: float | None = None
        self.last_checkpoint: str | None = None
        #: The newest checkpoint every rank has finished writing: what a restarted run
        #: resumes from (path, step, saved_at). A save reported unsynced waits in
        #: ``_unsynced_point`` until every rank passed an agreed check after it.
        self.resume_point: CheckpointRecord | None = None
        self._unsynced_point: CheckpointRecord | None = None
        #: every checkpoint of this run every rank finished writing, oldest first (status.json
        #: ``checkpoints``: the job's history keeps them all, not only the newest)
        self._completed: list[CheckpointRecord] = []
        #: the newest checkpoint the loop reported, and when (answers a stop asked before it)
        self._last_saved: CheckpointRecord | None = None
        #: when the loop reported this run's first step (before it a stop has nothing to save)
        self._first_step_at: float | None = None
        self.state = JobState.STARTING
        self.stop_reason: str | None = None
        #: the stop came from a signal (the scheduler's preemption or time limit), not a command
        self.stopped_by_signal = False

        self._started_at = time.time()
        #: host, boot id, pid and its start time: fixed for the process, read once by
        #: rank 0 (not on every status write or HTTP status request)
        self._me: Identity | None = None
        #: which run of the job this is (set by the launcher): a listing that finds a
        #: previous run's status.json next to this run's job.json knows it is stale.
        self._restarts = cfg.restarts
        self._resumed_from = resume_from()
        if self._resumed_from is not None:
            self.current_step = resume_step()  # shown at once; the loop reports on from there
        carry = carried_knobs()
        #: the job's live knobs (core.knobs): declared by the integrations and the loop;
        #: rank 0 checks a set against them before it is queued
        self.knobs = KnobTable(
            carry.values if carry is not None else None,
            carry.at_checkpoint if carry is not None and self._resumed_from is not None else None,
        )
        #: the job's metric history: rank 0's, the job's, written by the plane; another
        #: rank's, holding its evaluations, is made when first used
        self._history: History | None = None
        if self.is_rank0:
            from .history import load_or_new  # here: other ranks never load it (issue 24)

            self._history = load_or_new(self.paths, continued=self._resumed_from is not None)
        #: what the training thread is doing, as the control plane knows it (for stalls)
        self.phase = Phase.TRAINING
        self._stall = StallWatch(stall_after=cfg.stall_after)
        #: rank 0's serving parts, made by :meth:`_serving_plane` on rank 0 only (other
        #: ranks never load the plane, its publisher or the history writer: issue 24)
        self._plane: ControlPlane | None = None
        if self.is_rank0:
            self._serving_plane()
        self._schedule = CheckSchedule(cfg.check_interval)
        self._rate = StepRate(start=self.current_step)
        self._agreement: Agreement | None = None
        self._solo = self.world_size <= 1
        # The started check (resolved at its resolution step), the lag every rank uses for
        # the next one (agreed), and rank 0's wish for it (sent in its proposals).
        self._inflight: _Inflight | None = None
        self._lag = 1
        self._lag_wanted = 1
        #: the job's guards (core.guards): this rank's vote, rank 0's own judgements
        self.guards = GuardBook(cfg.guards, rank=self.rank)
        # Stragglers: this rank's own time per step (every rank), the ranks compared (rank 0,
        # in the guards' straggler watch).
        self._clock = RankClock()
        self._rank_table: list[RankTime] | None = None
        self._named: list[Straggler] | None = None
        self._named_at: dict[int, int] = {}  # rank -> the step it was named at
        self._compared_at = -COMPARE_EVERY  # monotonic time of the last comparison
        # The hot path: a check when ``step >= _next_check`` or ``_poke`` is set. Only a
        # process alone is poked; ranks of a job check at agreed steps only.
        self._next_check = 0
        self._poke = False
        # Checks between evaluation batches: the next batch to check at, and its cadence.
        self._eval_next = NEVER
        self._eval_schedule = CheckSchedule(_eval_interval(cfg.check_interval))
        #: this rank's time in checks since its last proposal (sent as the proposal's cost)
        self._spent = 0.0
        self._ready = False  # context resolved and agreement made (first check)
        self._waiting_logged = False
        self._check_seq = 0
        self._signal_applied = 0
        self._stop_applied: Actions | None = None
        self._signals = SignalFlags(
            cfg.signals,
            on_raise=self._wake,
            stopping=self._second_signal_ends_process,
            early=self._nothing_to_save_yet,
            repeat_window=cfg.signal_repeat_window,
        )
        self.signals = self._signals.signals
        self._started = False
        self._closed = False

    # -- what others read ---------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stopping(self) -> bool:
        return self._stop_applied is not None

    @property
    def stop_command(self) -> Command | None:
        """The stop this process applied (``save_and_stop``, ``pause``, ``graceful_stop``, ``abort``)."""
        return self._stop_applied.command if self._stop_applied is not None else None

    @property
    def aborted(self) -> bool:
        return self._signals.escalated is not None or (self._stop_applied is not None and self._stop_applied.abort)

    @property
    def url(self) -> str | None:
        """The HTTP API's URL while this process serves it."""
        return self._plane.url if self._plane is not None else None

    @property
    def control_error(self) -> str | None:
        """Why a part of the control plane is not working (also in status.json)."""
        return self._plane.control_error if self._plane is not None else None

    @property
    def serves_http(self) -> bool:
        """This process serves the job's HTTP API now (rank 0, unless disabled or failed)."""
        return self._plane is not None and self._plane.serving_http

    @property
    def ledger(self) -> Ledger:
        """The job's commands: rank 0's authority (made on first use; another rank's
        stays empty: commands reach it agreed, never queued)."""
        if self._ledger is None:
            from forgather_control.core.ledger import Ledger  # here: rank 0's (issue 24)

            ledger = Ledger(max_pending=self.config.max_pending, on_change=self._ledger_changed)
            ledger.vet = self.knobs.vet_command
            self._ledger = ledger
        return self._ledger

    @property
    def _receipts(self) -> Receipts:
        """Rank 0's open receipts (:mod:`.receipts`); another rank has none to keep."""
        if self._book is None:
            from .receipts import Receipts

            self._book = Receipts(self.ledger)
        return self._book

    @property
    def _identity(self) -> Identity:
        if self._me is None:
            from forgather_control.core.liveness import process_identity  # rank 0's records name it

            self._me = process_identity()
        return self._me

    @property
    def plane(self) -> ControlPlane:
        """Rank 0's serving parts (idle on other ranks)."""
        return self._serving_plane()

    @property
    def history(self) -> History:
        """The job's metric history: rank 0's is loaded from the job's folder (a continued
        run goes on with it) and written by the plane; another rank's holds its evaluations."""
        if self._history is None:
            from forgather_control.core.metrics import History  # here: another rank may never record one (issue 24)

            self._history = History(self.job_id)
        return self._history

    def _serving_plane(self) -> ControlPlane:
        """Rank 0's plane, made on first use (idle until started)."""
        if self._plane is None:
            # imported here: ranks other than 0 never serve (issue 24)
            from .history import HistoryRecorder
            from .plane import ControlPlane

            cfg = self.config
            self._plane = ControlPlane(
                job_id=cfg.job_id,
                paths=self.paths,
                ledger=self.ledger,
                status=self.status,
                host=cfg.host,
                port=cfg.port,
                enable_http=cfg.enable_http,
                auth=cfg.auth,
                poll_interval=cfg.poll_interval,
                heartbeat_interval=cfg.heartbeat_interval,
                started_at=self._started_at,
                identity=self._identity,
                history=HistoryRecorder(self.paths, self.history, self._metric_sample) if cfg.record_metrics else None,
            )
        return self._plane

    @property
    def agrees(self) -> bool:
        """This process takes part in an agreement across ranks (it is not alone)."""
        return self._agreement is not None

    @property
    def agreement_trace(self) -> tuple[tuple[int, ...], ...]:
        """The checks this process agreed on, as agreed (agreement.FIELDS): all of them when
        traced to a directory, else the last ``agreement.TRACE_KEEP``; empty for a process
        alone."""
        return tuple(self._agreement.trace) if self._agreement is not None else ()

    @property
    def checks_agreed(self) -> int:
        """How many checks this process agreed on."""
        return self._agreement.checks if self._agreement is not None else 0

    @property
    def next_check(self) -> int | None:
        """The step of the next agreed check; None when the step counter triggers none
        (a process alone checks when something arrives; commands off after a failure)."""
        return None if self._next_check >= NEVER else self._next_check

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> Controller:
        """Start serving (rank 0) and install signal handlers. Never raises for a
        control-plane failure: it is logged, recorded in status.json, and training goes on."""
        if self._started:
            return self
        if not self.auth and self.enable_http and not is_loopback_host(self.host):
            raise ValueError(f"refusing to serve without a token on non-loopback host {self.host!r}; keep auth=True or bind 127.0.0.1")
        self._started = True
        self._resolve_context()
        self._signals.install()
        early = _signals_mod.controller_started()
        if early:
            log.warning("forgather control: a stop signal arrived before training started; saving and stopping at the first step")
            for _ in range(early):
                self.raise_signal_flag()
        atexit.register(self._at_exit)
        if self.is_rank0:
            self._serving_plane().start(world_size=self.world_size)
        self.state = JobState.RUNNING
        self._changed()
        return self

    def begin(self) -> None:
        """Train begin: make the agreement now, on every rank at the same point.

        Integrations call this at their train-begin event, when torch.distributed is
        initialised. Calling it is optional: the first ``step`` does the same. Never
        raises."""
        if not self._started:
            self.start()
        if self._ready or self._closed:
            return
        try:
            self._prepare()
        except Exception:
            log.exception("forgather control: could not prepare the agreement; commands apply on no rank")
            self._next_check = NEVER

    def _resolve_context(self) -> None:
        """Adopt torch.distributed's rank and world size when it is initialised. A
        process that served as rank 0 on a guess, and is not, stops serving."""
        if self._fixed_rank:
            return
        rank, world = distributed_context()
        if (rank, world) == (self.rank, self.world_size):
            return
        was_rank0 = self.is_rank0
        log.info("forgather control: rank %s of %s (was %s of %s)", rank, world, self.rank, self.world_size)
        self.rank, self.world_size = rank, world
        self.is_rank0 = rank == 0
        self._solo = world <= 1
        self.guards.rank = rank
        if self._started and was_rank0 and not self.is_rank0:
            self._serving_plane().stop(remove_endpoint=True)
        elif self._started and self.is_rank0 and not was_rank0:
            self._serving_plane().start(world_size=world)

    def _prepare(self) -> bool:
        """Resolve the context and, for a job of several processes, make the agreement
        (a collective: every rank gets here at the same point). False: not yet."""
        self._resolve_context()
        # Reachable by `forgather control stacks` (the bootstrap did it already when launched).
        enable_stack_dumps(self.paths, self.rank, run=self.config.restarts or 0)
        if self._solo:
            self._ready = True
            # alone, a check comes when poked, unless a guard watches on a clock
            self._next_check = self.current_step + 1 if self.guards.timed else NEVER
            return True
        if not distributed_ready():
            # torchrun's environment says several processes, but torch.distributed is not
            # initialised yet: try again next step. Every rank runs the same program, so
            # every rank makes the agreement at the same step.
            if not self._waiting_logged:
                self._waiting_logged = True
                log.info("forgather control: %s processes but torch.distributed is not initialised yet; commands apply once it is", self.world_size)
            return False
        self._agreement = Agreement(node=node_rank(), trace_all=bool(self.config.trace_dir))
        self._clock.mark(self.current_step)
        self._ready = True
        if self.is_rank0 and self._plane is not None and self._plane.serving_http:
            # After the agreement (a rendezvous of every rank) no process that guessed it
            # was rank 0 still owns endpoint.json: write ours again.
            self._plane.write_endpoint(world_size=self.world_size)
        return True

    def close(self, state: JobState | str | None = None, *, error: str | None = None) -> None:
        """End the job's control plane. The final state defaults from what happened:
        aborted, stopped (a stop command or signal), paused (a ``pause``), failed
        (``error``) or finished.
        ``state`` names a final state (a :class:`JobState`, or its string)."""
        if self._closed:
            return
        if self._signals.early_end is not None:
            # The process ends on a stop signal that came before the first step: a stop,
            # with nothing to save, not a failure (the error is that signal's SystemExit).
            error = None
            self.stopped_by_signal = True
            from forgather_control.core.attachment import nothing_to_save_reason

            self.stop_reason = nothing_to_save_reason(_signal_name(self._signals.early_end))
        final = self._final_state(state, error)
        self._closed = True
        self.state = final
        self._signals.restore()
        if self._started:
            _signals_mod.controller_closed()
        try:
            atexit.unregister(self._at_exit)
        except Exception:  # noqa: BLE001 - closing must not fail  # pragma: no cover
            pass
        self._finish_inflight(INFLIGHT_AT_CLOSE if error is None else INFLIGHT_AT_FAILURE)
        self._dump_trace()
        if self._agreement is not None:
            self._agreement.close()
        if not self.is_rank0 or not self._started:
            return
        try:
            self._receipts.settle(final, step=self.current_step, stop_reason=self.stop_reason, stopped=self._stop_applied is not None, error=error)
        except Exception:
            log.exception("forgather control: could not settle the receipts; some may stay open")
        self._serving_plane().close(error=error, remove_endpoint=self.cleanup_on_exit)

    def _finish_inflight(self, timeout: float) -> None:
        """A check started and not resolved when the loop ended: every rank started it, so
        its collective completes; it is waited for (bounded: briefly when this rank fails,
        whose peers may be gone) before the group is shut, and not acted on (the loop is
        over; a command it carried stays unapplied)."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        try:
            inflight.pending.wait(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - closing must not fail
            log.warning("forgather control: the last started check did not complete at close (%s)", exc)

    def _final_state(self, state: JobState | str | None, error: str | None) -> JobState:
        if state is None:
            if self._signals.early_end is not None:
                return JobState.STOPPED
            if self.aborted:
                return JobState.ABORTED
            if error and self.is_rank0 and self.ledger.pending_abort() is not None:
                # Failed while an abort waited for the ranks to agree: a hung job whose
                # launchers end its ranks for that abort fails in its collectives first.
                # The user asked for it to end without saving; it did.
                return JobState.ABORTED
            if error:
                return JobState.FAILED
            if self._stop_applied is None:
                return JobState.FINISHED
            # a pause ends the job paused: saved, stopped, waiting to be resumed
            return JobState.PAUSED if self._stop_applied.command == Command.PAUSE else JobState.STOPPED
        parsed = JobState.parse(state)
        if parsed is None or not parsed.final:
            finals = ", ".join(s.value for s in JobState if s.final)
            raise ValueError(f"close(state={state!r}): a job ends in one of {finals}")
        return parsed

    def _at_exit(self) -> None:
        """The process is ending without ``close`` (an exception through the trainer,
        or a second signal): record how it ended, never raise."""
        try:
            if self._signals.escalated is not None:
                self.close(JobState.ABORTED, error="a second signal ended the process without saving")
            elif self._signals.early_end is not None:
                self.close()
            else:
                self.close(error="the process exited before training ended")
        except Exception:  # noqa: BLE001 - at exit nothing may raise  # pragma: no cover
            pass

    def _dump_trace(self) -> None:
        directory = self.config.trace_dir
        if not directory:
            return
        try:
            from forgather_control.core.records import AgreementTrace  # a test's trace

            ended = AgreementTrace(
                rank=self.rank,
                fields=[],
                trace=[],
                world_size=self.world_size,
                final_step=self.current_step,
                state=self.state.value,
                served_http=self._plane is not None and self._plane.served_http,
                pid=os.getpid(),
            )
            dump_trace(directory, self.rank, list(self.agreement_trace), ended=ended)
        except Exception:
            log.exception("forgather control: could not write the agreement trace")

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close(JobState.STOPPED, error="interrupted")
        elif issubclass(exc_type, SystemExit) and self._signals.escalated is not None:
            self.close(JobState.ABORTED, error="a second signal ended the process without saving")
        elif issubclass(exc_type, StoppedEarly):
            self.close()
        else:
            self.close(error=f"{exc_type.__name__}: {exc}")

    # -- the hot path ---------------------------------------------------------------
    def step(self, step: int, metrics: Any = None) -> Actions:
        """Call once per optimizer step on every rank, with the same ``step`` on all.
        Returns the actions to take now; ``NO_ACTIONS`` almost always. ``metrics``: a dict
        of this step's values, or a callable giving them when they are read (a status
        write, a check: :meth:`metrics_now`). The trainer integrations inline the test
        below in their step hooks (the hot path: ``benchmarks/bench_hooks.py``); a change
        to it changes theirs."""
        self.current_step = step
        if metrics is not None:
            self.metrics = metrics
        if step < self._next_check and not self._poke:
            return NO_ACTIONS
        return self._slow_step(step)

    def _slow_step(self, step: int) -> Actions:
        if self._first_step_at is None:  # the first step() is always a slow one
            self._first_step_at = time.time()
            self._changed()
        try:
            if not self._ready:
                if not self._started:
                    self.start()
                if not self._prepare():
                    self._next_check = step + 1
                    return NO_ACTIONS
            t = time.perf_counter()
            try:
                if self._inflight is None:
                    return self._check(step)
                acts = self._resolve(step)
                if self._next_check == step and acts is NO_ACTIONS and self._stop_applied is None:
                    # Pipelined: the agreed next check is this very step (steps longer
                    # than the interval), so it starts where the last one resolved, not a
                    # step later. Every rank read the same answer: every rank starts it.
                    return self._check(step)
                return acts
            finally:
                self._spent += time.perf_counter() - t
        except Exception:
            log.exception("forgather control: check at step %s failed; commands are off, training goes on", step)
            self._next_check = NEVER
            self._poke = False
            return NO_ACTIONS

    def _check(self, step: int) -> Actions:
        self._poke = False
        entry = None
        timed = self.guards.timed
        if self.is_rank0:
            self._receipts.expire(step)
            if self._stop_applied is None:
                if timed:
                    self._judge_guards(step)
                entry = self.ledger.next_pending()
        next_check = self._schedule.next_check(step, self.max_steps) if self.is_rank0 and (timed or not self._solo) else 0
        vote = self.guards.vote(self.metrics_now()) if timed else 0
        lag = self._lag
        if not self._solo and lag > 0 and not (self.max_steps and step + lag >= self.max_steps):
            # Started here, resolved ``lag`` steps on (every rank knows both steps): no rank
            # waits at the check for the others. Near the end, and between evaluation
            # batches, the exchange is waited for at once.
            self._start_check(step, entry, max(next_check, step + lag) if self.is_rank0 else 0, vote, lag)
            return NO_ACTIONS
        agreed = self._agree(entry, next_check, vote=vote)
        self.phase = Phase.TRAINING
        # a process alone checks when poked (or right after a long pause: check_next_step),
        # or on the clock its guards need
        if self._solo and not timed:
            self._next_check = NEVER
        else:
            self._next_check = agreed.next_check if agreed.next_check > step else step + 1
        return self._act(step, agreed, entry)

    def _judge_guards(self, step: int) -> None:
        """Rank 0's guards at this check: each firing is recorded, and its command (not
        an alert's) queued like a person's, to be agreed at this very check."""
        for firing in self.guards.judge(step, self.metrics_now(), self._rate.update(step, time.time()), time.monotonic()):
            self._guard_fired(firing)

    def _guard_fired(self, firing: GuardFiring) -> str | None:
        """Record ``firing`` (rank 0) and queue its command; the command's id, or None for
        an alert or a command the ledger refused (the job is already stopping)."""
        from forgather_control.core.guards import action_command  # something fired: its rules are loaded

        command_id = None
        cmd = action_command(firing.action)
        if cmd is not None:
            try:
                entry, _ = self.ledger.submit(cmd, source="guard", guard=firing)
                command_id = entry.id
                import msgspec  # rank 0's: a firing is a record (issue 24)

                entry.guard = firing = msgspec.structs.replace(firing, command_id=command_id)
            except LedgerError as exc:
                log.info("forgather control: guard %s fired, its %s not queued: %s", firing.guard, firing.action, exc)
        log.warning("forgather control: guard %s fired at step %s: %s", firing.guard, firing.step, firing.evidence)
        self.guards.record(firing)
        self._changed()
        return command_id

    def _proposal(self, entry: Any, next_check: int, vote: int) -> Proposal:
        """This rank's part of a check: rank 0's command (``entry``), ``next_check`` and the
        lag of the check after, any rank's signal and nan vote."""
        self._check_seq += 1
        cost, self._spent = self._spent, 0.0
        return Proposal(
            seq=self._check_seq,
            command=entry.command.code if entry is not None else 0,
            arg=entry.seq if entry is not None else 0,
            flags=self._flags(entry),
            signal=min(self._signals.level, 2),
            next_check=next_check,
            guard=vote,
            lag=self._lag_wanted if self.is_rank0 else 0,
            cost=int(self._schedule.own(cost) * 1e6),  # this rank's mean of recent checks (an anomaly capped)
            knobs=tuple(self.knobs.wire(entry.options.changes)) if entry is not None and entry.command == Command.SET and entry.options else (),
        )

    def _agree(self, entry: Any, next_check: int, *, vote: int = 0) -> Proposal:
        """One check's exchange, waited for here; every rank gets the same answer."""
        synced = self._synced()
        proposal = self._proposal(entry, next_check, vote)
        if self._solo:
            agreed = proposal
        else:
            own = self._clock.interval(self.current_step)
            phase, self.phase = self.phase, Phase.AGREEMENT  # a rank stuck here waits for another rank
            agreed = self._agreement.exchange(proposal, own_us=int(own * 1e6))  # type: ignore[union-attr]
            self.phase = phase
            self._clock.mark(self.current_step)
        return self._agreed(proposal, agreed, synced)

    def _start_check(self, step: int, entry: Any, next_check: int, vote: int, lag: int) -> None:
        """Start the check at ``step``; it is resolved at ``step + lag`` (the next slow step)."""
        synced = self._synced()
        proposal = self._proposal(entry, next_check, vote)
        own = self._clock.interval(step)
        pending = self._agreement.start(proposal, own_us=int(own * 1e6))  # type: ignore[union-attr]
        self._clock.mark(step)
        self._inflight = _Inflight(pending, proposal, entry, synced)
        self._next_check = step + lag

    def _synced(self) -> tuple[int, CheckpointRecord | None]:
        """What the next check proves written on every rank: rank 0's saves reported before
        it (another rank keeps none)."""
        return (self._book.unsynced if self._book is not None else 0, self._unsynced_point)

    def _resolve(self, step: int) -> Actions:
        """The started check's answer, read at its resolution step (or earlier, when every
        rank made this step a check: check_next_step): every rank acts on it here."""
        inflight, self._inflight = self._inflight, None
        assert inflight is not None
        phase, self.phase = self.phase, Phase.AGREEMENT  # a rank stuck here waits for another rank
        agreed = inflight.pending.wait()
        self.phase = phase
        if self.is_rank0:
            # A wait means the collective had not finished in ``lag`` steps: ask for more
            # (it travels in the next proposal; every rank takes the agreed one).
            pending = inflight.pending
            self._lag_wanted = next_lag(self._lag_wanted, pending.waited, self._schedule.per_step, pending.took)
        self._agreed(inflight.proposal, agreed, inflight.synced)
        self.phase = Phase.TRAINING
        # the next check may be this very step (the resolution step): see _slow_step
        self._next_check = agreed.next_check if agreed.next_check >= step else step + 1
        return self._act(step, agreed, inflight.entry)

    def _agreed(self, proposal: Proposal, agreed: Proposal, synced: tuple[int, CheckpointRecord | None]) -> Proposal:
        """What every rank does with an answer: the saves reported before its proposal
        were finished on every rank (each had made its proposal), stragglers compared."""
        if not self._solo:
            if self.is_rank0 and time.monotonic() - self._compared_at >= COMPARE_EVERY:
                self._compare_ranks(self.current_step)
            if agreed.seq != proposal.seq:
                log.error("forgather control: ranks disagree on the check count (%s here, %s elsewhere)", proposal.seq, agreed.seq)
        self._check_seq = max(self._check_seq, agreed.seq)
        if self.is_rank0:
            self._schedule.cost(agreed.cost / 1e6)
        if agreed.lag:
            self._lag = agreed.lag  # the lag of the checks from here on, the same on every rank
        count, point = synced
        if count:
            self._receipts.sync(count)
        if point is not None and self._unsynced_point is point:
            self._unsynced_point = None
            self._complete(point)
        return agreed

    def _flags(self, entry: Any) -> int:
        """Rank 0's bits for the agreed command: a ``save`` that evaluates first, and a
        stop whose checkpoint was written after the stop was asked (during a save)."""
        if not self.is_rank0:
            return 0
        flags = 0
        if entry is not None and evaluates_first(entry.command, entry.options, configured=self.evaluates):
            flags |= FLAG_EVALUATE
        asked = [t for t in (self._signals.raised_at, entry.created_at if entry is not None and entry.command.saves_and_stops else None) if t]
        if asked and self._last_saved is not None and (self._last_saved.saved_at or 0) >= min(asked):
            flags |= FLAG_SAVED
        return flags

    def _act(self, step: int, agreed: Proposal, entry: Any, note: str | None = None) -> Actions:
        if self._stop_applied is not None:
            return NO_ACTIONS
        if agreed.signal > self._signal_applied:
            self._signal_applied = agreed.signal
            return self._apply_signal(step, agreed.signal, flags=agreed.flags, note=note)
        firing = self.guards.agreed(agreed.guard, step) if self.guards.nan is not None else None
        if firing is not None:
            acted = self._apply_guard(step, firing)
            if acted is not None:
                return acted
        if agreed.command:
            cmd = Command.from_code(agreed.command)
            if cmd == Command.SET:
                return self._apply_set(step, agreed, entry)
            return self._apply(step, cmd, entry.id if entry is not None else None, flags=agreed.flags, note=note)
        return NO_ACTIONS

    def check_next_step(self) -> None:
        """Make the next step a check. Call it on every rank at the same point, after a
        long pause the step-counted schedule cannot see (the trainer's own save or
        evaluation): a stop asked meanwhile then applies at the next step, not after
        another such pause. A command's save or evaluation does this by itself."""
        self._next_check = min(self._next_check, self.current_step + 1)

    # -- between evaluation batches --------------------------------------------------
    def evaluation_started(self, batches: float | None = None) -> None:
        """An evaluation begins, on every rank at the same point (the trainer's own or a
        commanded one). ``batches``: this rank's number of evaluation batches, when the
        trainer knows it; the ranks then agree once (one collective) that they all have
        the same number, and check between batches only if so. Without it the trainer
        keeps its ranks in step itself (HF gathers after every batch). Never raises."""
        self._eval_schedule = CheckSchedule(_eval_interval(self.check_interval))
        self._eval_next = NEVER
        if not self._ready or self._closed or self._stop_applied is not None:
            return
        try:
            if batches is not None and not self._solo:
                count = int(batches) if 0 < batches < NEVER else 0  # 0: unknown (an endless loader)
                # MAX of the count and of its negation: the largest and the smallest
                agreed = self._agreement.exchange(Proposal(seq=self._check_seq + 1, arg=count, next_check=-count))  # type: ignore[union-attr]
                self._check_seq = agreed.seq
                if not 0 < agreed.arg == -agreed.next_check:
                    return  # the ranks differ: a check could meet a rank that has finished
            self._eval_next = 1
        except Exception:
            log.exception("forgather control: could not agree on the evaluation; a stop waits for its end")

    def evaluation_batch(self, batch: int) -> Actions:
        """Call after evaluation batch ``batch`` (1, 2, ... since :meth:`evaluation_started`)
        on every rank. Returns the actions of a stop that cannot wait for the evaluation's
        end (a signal's save-and-stop, ``save-stop``, ``abort``), agreed at
        batches every rank knows in advance; ``NO_ACTIONS`` almost always. The trainer
        then ends the evaluation there and carries them out at the step it belongs to."""
        if batch < self._eval_next:
            return NO_ACTIONS
        try:
            entry = self.ledger.pending_stop() if self.is_rank0 and self._stop_applied is None else None
            if entry is not None and entry.command == Command.GRACEFUL_STOP:
                entry = None  # a graceful stop lets the trainer end its own way: after the evaluation
            agreed = self._agree(entry, self._eval_schedule.next_check(batch) if self.is_rank0 else 0)
            self._eval_next = agreed.next_check if agreed.next_check > batch else batch + 1
            step = self.current_step
            actions = self._act(step, agreed, entry, note=f"the evaluation at step {step} was cut short at batch {batch}")
            if actions.stop:
                self._eval_next = NEVER
                if self.is_rank0:
                    self._receipts.command_failed(f"the evaluation was cut short: {actions.command} applied at step {step}", Command.EVALUATE)
            return actions
        except Exception:
            log.exception("forgather control: check in the evaluation failed; a stop waits for its end")
            self._eval_next = NEVER
            return NO_ACTIONS

    def _apply(self, step: int, cmd: Command, command_id: str | None, reason: str | None = None, *, flags: int = 0, note: str | None = None) -> Actions:
        actions = actions_for(cmd, command_id, reason, flags=flags)
        saved = self._last_saved if cmd.saves and not actions.save else None  # FLAG_SAVED: written during the stop's request
        if saved is not None:
            note = "; ".join(filter(None, (note, f"the checkpoint of step {saved.step}, finished after the stop was asked, is its checkpoint")))
        if actions.save or actions.evaluate:
            self.phase = Phase.SAVE if actions.save else Phase.EVAL  # a known long phase, not a stall
            self.check_next_step()
        if self.is_rank0 and command_id is not None:
            self.ledger.mark_applied(command_id, step)
            if saved is not None:
                self._receipts.saved_already(command_id, saved, step=step)
            else:
                self._receipts.applied(command_id, cmd, step)
        if actions.stop:
            self._stop_applied = actions
            self.stop_reason = f"{reason or cmd.value} ({note})" if note else reason or cmd.value
            self.state = JobState.STOPPING
            if self.is_rank0:
                self.ledger.close_intake(f"{cmd.value} applied at step {step}")
        if self.is_rank0 and self.ledger.has_pending:
            self._wake()
        self._changed()
        return actions

    # -- knobs ------------------------------------------------------------------------
    def knob(
        self,
        name: str,
        default: KnobValue,
        *,
        min: float | None = None,
        max: float | None = None,
        above: float | None = None,
        kind: str | None = None,
        help: str | None = None,
        on_change: Any = None,
        read: Any = None,
        saved: bool = False,
        carry: bool = True,
    ) -> Knob:
        """Declare a live knob on every rank (before or during training) and get it back:
        the loop reads ``knob.value`` (a plain attribute) each step; ``set NAME=VALUE``
        changes it on every rank at one agreed step. ``default`` is the script's value, its
        kind (float, int, bool) the knob's; ``min``/``max`` bound it (inclusive), ``above``
        from below (exclusive). ``on_change(old, new)`` runs on every rank at that step.
        A knob named ``max_steps`` is the run's length: the Controller's ``max_steps``
        (progress, ETA) follows it. A relaunched job starts a knob at its last value."""
        if name == "max_steps":
            on_change = self._follows_max_steps(on_change)
        knob = self.knobs.declare(name, default, kind=kind, min=min, max=max, above=above, help=help, on_change=on_change, read=read, saved=saved, carry=carry)
        if name == "max_steps":
            self.max_steps = int(knob.value)
        if knob.origin == RESUMED:
            log.warning(
                "forgather control: knob %s starts at %s, its value in the job's last run (the script says %s; launch with --script-knobs to use the script's)",
                name,
                knob.value,
                knob.default,
            )
        self._changed()
        return knob

    def _follows_max_steps(self, on_change: Any) -> Any:
        def changed(old: KnobValue, new: KnobValue) -> None:
            if on_change is not None:
                on_change(old, new)
            # a run told to end before where it is ends where it is: its progress says so
            self.max_steps = max(int(new), self.current_step)

        return changed

    def optimizer(self, optimizer: Any, scheduler: Any = None) -> None:
        """Declare the ``lr`` and ``lr_scale`` knobs for a loop's own ``optimizer`` (and its
        learning-rate ``scheduler``): a change scales every parameter group and the
        scheduler's base rates in proportion, so the schedule keeps it (:mod:`.knobs`)."""
        from .knobs import learning_rate_knobs

        learning_rate_knobs(self, lambda: optimizer, lambda: scheduler)

    def _apply_set(self, step: int, agreed: Proposal, entry: Any) -> Actions:
        """Every rank at the agreed step: the knob changes the check carried. Rank 0's
        receipt completes at once with what changed (old -> new), and the change is a
        mark on the charts."""
        command_id = entry.id if self.is_rank0 and entry is not None else None
        changes = self.knobs.apply(agreed.knobs, step=step, command_id=command_id)
        if changes:
            log.warning("forgather control: knobs changed at step %s: %s", step, describe(changes))
        if self.is_rank0 and command_id is not None:
            self.ledger.mark_applied(command_id, step)
            if changes:
                from forgather_control.core.records import CommandResult, Mark

                self.ledger.complete(command_id, CommandResult(step=step, changes=[c.as_record() for c in changes]))
                self.history.mark(Mark(step=step, time=time.time(), kind="set", label=describe(changes)[:256]))
            else:
                self.ledger.fail(command_id, "no knob changed: the trainer refused every change (its log says why)")
        self._changed()
        return Actions(command=Command.SET, command_id=command_id)

    def watch(self, model: Any) -> bool:
        """Hook a DDP-wrapped ``model`` (every rank, once, before or during training) so
        the slow rank is named by its own time: the waits of the gradient all-reduce are
        left out (:mod:`.straggle`). The trainer integrations do it; a plain loop calls it
        with its DDP model. False for a model it cannot hook (nothing changes)."""
        try:
            return self._clock.watch(model)
        except Exception:
            log.exception("forgather control: could not watch the model's collectives")
            return False

    def _compare_ranks(self, step: int) -> None:
        """Rank 0 after a check: every rank's own time per step, the table the status shows
        and the ranks now named stragglers (a firing each: an alert, or the straggler
        guard's action)."""
        per_rank = self._agreement.per_rank if self._agreement is not None else []
        if not per_rank:
            return
        mono, wall = time.monotonic(), time.time()
        self._compared_at = mono
        watch = self.guards.stragglers
        named = watch.observe([us / 1e6 if us > 0 else None for us, _ in per_rank], mono)
        ratios = watch.ratios()
        from forgather_control.core.records import RankTime, Straggler  # rank 0's status

        self._rank_table = [RankTime(rank=r, node=node, seconds=watch.seconds(r), ratio=ratios.get(r)) for r, (_, node) in enumerate(per_rank[:1024])]
        for r, _, _ in named:
            self._named_at[r] = step
        self._named = [
            Straggler(rank=r, factor=ratios.get(r) or factor, since=wall - (mono - since), step=self._named_at.get(r), node=per_rank[r][1])
            for r, (factor, since) in sorted(watch.named.items())[:1024]
        ] or None
        for r, factor, since in named:
            self._guard_fired(self.guards.straggler(r, per_rank[r][1], factor, mono - since, step))

    def _apply_guard(self, step: int, firing: GuardFiring) -> Actions | None:
        """The nan guard, agreed by every rank at ``step``: each rank does its action
        here (rank 0 records it, and its command as a receipt naming the guard). None for
        an alert: nothing to do in the loop."""
        from forgather_control.core.guards import action_command

        command_id = self._guard_fired(firing) if self.is_rank0 else None
        cmd = action_command(firing.action)
        if cmd is None:
            return None
        reason = f"guard {firing.guard}: {firing.evidence}"
        if not self.is_rank0:
            log.warning("forgather control: %s", reason)
        return self._apply(step, cmd, command_id, reason)

    def _apply_signal(self, step: int, level: int, *, flags: int = 0, note: str | None = None) -> Actions:
        cmd = Command.ABORT if level >= 2 else Command.SAVE_AND_STOP
        reason = "second signal: stopping without saving" if level >= 2 else "signal received: saving and stopping"
        command_id = None
        if self.is_rank0:
            try:
                entry, _ = self.ledger.submit(cmd, source="signal")
                command_id = entry.id
            except LedgerError as exc:
                # A stop command is queued already: the signal's stop takes its place; the
                # queued one is dropped with a reason when the job ends.
                log.info("forgather control: signal stop not recorded as a command: %s", exc)
        log.warning("forgather control: %s at step %s%s", reason, step, f" ({note})" if note else "")
        self.stopped_by_signal = True
        return self._apply(step, cmd, command_id, reason, flags=flags, note=note)

    # -- reports from the training loop ------------------------------------------------
    def checkpoint_saved(self, path: str | os.PathLike[str], *, synced: bool = True) -> None:
        """Record a saved checkpoint; completes the oldest save command waiting for one.
        Also fine to call for the trainer's own periodic saves. Call it on every rank.

        ``synced``: every rank's part of the save is done when this is called (the
        trainer waited for all ranks, like Lightning and the plain loop). With
        ``synced=False`` (HF's Trainer writes rank-local files and does not wait), rank 0
        completes the receipt at the next agreed check, which every rank reaches only
        after its own save, or when the job ends.

        A path with nothing on disk on rank 0 is not a checkpoint: the save's receipt
        fails, naming the path, and the job's resume point stays where it was."""
        self.phase = Phase.TRAINING
        checkpoint = str(Path(path).absolute())
        if not self.is_rank0:
            # this rank's part is written; rank 0 keeps the job's record of the save
            self.last_checkpoint = checkpoint
            return
        if not os.path.exists(checkpoint):
            # A trainer that reports one path and writes another would leave a receipt
            # that says completed and a resume point that is not there: neither is kept.
            log.warning("forgather control: the trainer reported checkpoint %s, but nothing is there; it is not recorded", checkpoint)
            self._receipts.checkpoint_missing(checkpoint, step=self.current_step)
            self._changed()
            return
        from forgather_control.core.records import CheckpointRecord

        self.last_checkpoint = checkpoint
        point = CheckpointRecord(path=self.last_checkpoint, step=self.current_step, saved_at=time.time(), knobs=self.knobs.values())
        self._last_saved = point
        if synced or self._solo:
            self._complete(point)
        else:
            self._unsynced_point = point
        self._receipts.checkpoint_saved(self.last_checkpoint, step=self.current_step, synced=synced or self._solo)
        self._changed()

    def _complete(self, point: CheckpointRecord) -> None:
        """``point`` is written on every rank: the run's resume point, and one of its checkpoints."""
        from forgather_control.core.checkpoints import MAX_KEPT

        self.resume_point = point
        self._completed = [*[p for p in self._completed if p.path != point.path][-(MAX_KEPT - 1) :], point]

    def checkpoint_failed(self, reason: str) -> None:
        """The loop saved no checkpoint it can name (it failed, or the trainer did not say
        where): the oldest save waiting for one fails with ``reason``."""
        self.phase = Phase.TRAINING
        if self.is_rank0:
            self._receipts.save_failed(reason)
        self._changed()

    def evaluation_done(self, metrics: Mapping[str, object] | None = None, *, checkpoint: str | None = None, note: str | None = None) -> None:
        """Record an evaluation's metrics; completes the oldest evaluate command.
        ``checkpoint``: the evaluation made the trainer's own checkpoint policy write one
        (Lightning's ModelCheckpoint, HF's "best"); its receipt names it, with ``note``."""
        self.phase = Phase.TRAINING
        clean = json_metrics(metrics or {})
        if clean:
            # Kept apart from the per-step metrics, which step() replaces every step: the
            # last evaluation stays in the status until the next one.
            self.eval_metrics = clean
            if self.is_rank0:  # the job's history is rank 0's
                self.history.record(self.current_step, time.time(), clean)
        if self.is_rank0:
            self._receipts.evaluation_done(clean, step=self.current_step, checkpoint=checkpoint, note=note)
        self._changed()

    def command_failed(self, reason: str, command: Command | None = None) -> None:
        """The loop could not do what an applied command asked (e.g. no evaluation set up)."""
        self.phase = Phase.TRAINING
        if self.is_rank0:
            self._receipts.command_failed(reason, command)
        self._changed()

    def update_metrics(self, metrics: Mapping[str, object]) -> None:
        """Merge the trainer's latest logged values (loss, learning rate, ...) into the
        status. Never a check: log events are not step ends."""
        now = self.metrics_now()
        merged = dict(now) if isinstance(now, dict) else {}
        merged.update(metrics)
        self.metrics = merged

    def metrics_now(self) -> Any:
        """The loop's latest metrics: what it gave ``step``, or what that gives when it is
        a callable (an integration's, read only when someone looks: a status write, a
        check; the step itself then stores nothing new)."""
        metrics = self.metrics
        if callable(metrics):
            try:
                return metrics()
            except Exception:  # noqa: BLE001 - a status must not fail on the trainer's state
                return None
        return metrics

    def set_epoch(self, epoch: float | None) -> None:
        self.epoch = epoch

    # -- status ---------------------------------------------------------------------
    def status(self) -> Status:
        """The status record (status.json and GET /status), built here only. Called from
        the I/O and HTTP threads; reads only plain attributes."""
        now = time.time()
        step = self.current_step
        rate = self._rate.update(step, now)
        progress = self._stall.observe(step, now, steps_per_second=rate, phase=self.phase) if self.state == JobState.RUNNING else None
        stall = progress.stall if progress is not None else None
        eta = None
        if rate and self.max_steps and step is not None and stall is None:  # a stalled job has no ETA
            eta = max(0.0, (self.max_steps - step) / rate)
        url = self.url
        me = self._identity
        from forgather_control.core.records import Http, Status  # rank 0's

        return Status(
            host=me.host,
            boot_id=me.boot_id,
            pid=me.pid,
            pid_start_time=me.pid_start_time,
            pid_ns=me.pid_ns,
            job_id=self.job_id,
            state=self.state,
            step=step,
            max_steps=self.max_steps,
            epoch=self.epoch,
            metrics={**json_metrics(self.metrics_now()), **self.eval_metrics},
            steps_per_second=rate,
            eta_seconds=eta,
            last_checkpoint=self.last_checkpoint,
            resume_point=self.resume_point,
            checkpoints=list(self._completed) or None,
            unsynced_checkpoint=self._unsynced_point,
            world_size=self.world_size,
            stop_reason=self.stop_reason,
            stopped_by_signal=self.stopped_by_signal,
            first_step_at=self._first_step_at,
            phase=progress.phase if progress is not None else None,
            progress_at=progress.progress_at if progress is not None else None,
            stall=stall,
            commands=self.ledger.recent(20),
            pending_commands=self.ledger.pending_count(),
            control_error=self.control_error,
            http=Http(url=url) if url else None,
            started_at=self._started_at,
            updated_at=now,
            check_interval=self._schedule.interval,
            protocol=PROTOCOL,
            restarts=self._restarts,
            resumed_from=self._resumed_from,
            guards=list(self.guards.rules) or None,
            guard_events=self._guard_events(stall),
            ranks=self._rank_table,
            stragglers=self._named,
            knobs=self.knobs.settings(),
        )

    def _guard_events(self, stall: Any) -> list[GuardFiring] | None:
        """What fired, for the status; the stall guard is judged here, where the stall
        is (the I/O thread: the training thread may be the one stuck)."""
        if self.guards.stall is not None and self.is_rank0:
            firing = self.guards.stalled(stall)
            if firing is not None:
                self._guard_fired(firing)  # an abort is carried out by the launcher when the ranks cannot
        return self.guards.recent() or None

    def _metric_sample(self) -> tuple[int, Metrics] | None:
        """What the I/O thread records into the history: the step, the loop's latest
        per-step metrics and the steps per second (not the evaluation's, recorded when
        they are reported)."""
        step = self.current_step
        metrics = json_metrics(self.metrics_now())
        rate = self._rate.update(step, time.time())
        if rate is not None:
            metrics["steps_per_second"] = rate
        return step, metrics

    def _ledger_changed(self) -> None:
        self._wake()
        self._changed()

    def _wake(self) -> None:
        """Something to look at (a command, a signal). A process alone checks at its
        next step; ranks of a job wait for their next agreed check."""
        if self._solo:
            self._poke = True

    def _changed(self) -> None:
        if self._plane is not None:
            self._plane.changed()

    # -- signals --------------------------------------------------------------------
    def raise_signal_flag(self) -> None:
        """What a signal handler does: raise the level, nothing else (no I/O, no
        collective). Usable by launchers and tests without a real signal."""
        self._signals.raise_level()

    def _nothing_to_save_yet(self) -> bool:
        """A signal now finds nothing to save: no step of this run has finished (the
        model still builds, the data loader starts, the first step runs)."""
        return self._first_step_at is None and self._stop_applied is None

    def _second_signal_ends_process(self) -> bool:
        """A signal while a stop is being carried out, when that stop came from a
        signal (here or agreed from another rank) or this rank had one already."""
        return self._stop_applied is not None and (self._signal_applied >= 1 or self._signals.level >= 1)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
