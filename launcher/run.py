"""Execute a plan: the only code in forgather that starts torchrun and handles signals.

How a stop signal becomes ``save_and_stop`` (measured on SLURM 22.05, see slurm/README.md):
SLURM's ``--signal`` and ``scancel --signal`` reach *every* process of the job step -
the launcher, torchrun and each worker - while a ``kill`` from a user reaches the
launcher alone. So the launcher does not forward signals to the workers (a worker that
got SLURM's signal directly would count the forwarded copy as a second signal and
abort instead of saving). Instead:

- torchrun starts with SIGUSR1/SIGUSR2 ignored, which it and its workers inherit, so
  neither can be killed by them by default action; the bootstrap then installs its
  handlers in the workers, and their Controllers raise the agreed signal flag;
- the launcher, on its first SIGTERM/SIGINT/SIGUSR1/SIGUSR2/SIGHUP, drops one
  ``save_and_stop`` command (with an idempotency key) into the job's inbox; rank 0
  picks it up within about a second and every rank applies it at the same step (or
  between evaluation batches). When a worker's own signal got there first, the command
  is refused as "already stopping": either way the job saves once;
- before this run's first training step (no trainer yet, a model still building, a
  first step still running) there is nothing to save: the first signal stops torchrun
  and its workers at once, and the outcome says "nothing to save yet" (exit 75);
- after ``--grace`` seconds torchrun's process group gets SIGTERM, then SIGKILL;
- a job judged uncontrolled (``--no-control-after`` passed and rank 0 never published
  this run's status: launcher/attach.py) has nobody to take a save, so the first signal
  goes to torchrun at once as SIGTERM, and torchrun terminates its workers, as it does for
  a signal of its own; the outcome says that no save was possible (exit 128+N);
- a second signal escalates at once (SIGTERM to the group, SIGKILL shortly after), a
  third kills the group.

torchrun runs in its own session, and the launcher makes itself a child subreaper, so
on the way out it can find and kill every descendant, including ones that left the
process group; it never exits while one of them is left.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from forgather_control.client.transport import FileTransport
from forgather_control.core import Command, JobPaths, JobState
from forgather_control.core.alerts import hide_notify
from forgather_control.core.attachment import nothing_to_save_reason
from forgather_control.core.deathsig import death_signal_setter
from forgather_control.core.env import ENV_DETACHED, ENV_LOG_SOCKET
from forgather_control.core.files import ensure_private_dir
from forgather_control.core.logs import LOGS_DIR, max_bytes_from
from forgather_control.core.outcome import launch_exit_code

from .alerting import LaunchAlerts
from .attach import ControlAttach, passed_on_reason
from .config import LaunchError, no_control_after
from .duties import NodeDuties, Overdue
from .output import OutputPump
from .plan import Plan, child_env
from .proctree import ProcessTree
from .records import JobRecords, launcher_identity, launcher_stop_key, read_previous
from .relaunch import record_relaunch, resumed_sinks

log = logging.getLogger(__name__)

__all__ = ["STOP_SIGNALS", "Supervisor", "execute", "exit_code_of"]

#: Signals that ask the job to save and stop (the first) or escalate (the next).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
#: Ignored in torchrun and inherited by its workers, so they never die of them.
IGNORED_IN_CHILDREN: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2)
#: Seconds between SIGTERM and SIGKILL to torchrun's process group.
KILL_TIMEOUT = 5.0


def exit_code_of(returncode: int) -> int:
    """A shell-style exit code: 128+N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    """Runs one torchrun, turns stop signals into the stop protocol, leaves no process.

    ``on_stop(signum)`` runs (in the main thread) on the first signal when the job has
    control (``may_save()``, asked at that moment, says a save can be asked for; without
    it, always); otherwise the first signal terminates torchrun, which stops its workers,
    and ``passed_on`` keeps the signal.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        grace: float,
        on_stop: Callable[[int], None] | None = None,
        cwd: str | None = None,
        kill_timeout: float = KILL_TIMEOUT,
        poll_interval: float = 0.2,
        duties: Callable[[], Overdue | None] | None = None,
        may_save: Callable[[], bool] | None = None,
        nothing_yet: Callable[[], bool] | None = None,
        on_reaped: Callable[[], None] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.grace = grace
        self.on_stop = on_stop
        #: may a stop signal ask this run for a save now (launcher/attach.py)? None: yes
        self.may_save = may_save
        #: does this run have nothing to save yet (no first step)? None: never asked
        self.nothing_yet = nothing_yet
        #: the first stop signal, when it went straight to torchrun (no control to save)
        self.passed_on: int | None = None
        #: the first stop signal, when it came before the run's first step and stopped it at once
        self.before_first_step: int | None = None
        #: the control plane's work on each round (launcher/duties.py); an overdue abort
        #: it returns ends every process of the job at once
        self.duties = duties
        #: runs once every process of the job is gone (the ranks' output is read to its end)
        self.on_reaped = on_reaped
        #: the abort the launcher carried out itself (the ranks were hung)
        self.forced_abort: Overdue | None = None
        self.cwd = cwd
        self.kill_timeout = kill_timeout
        self.poll_interval = poll_interval
        self.signals: list[int] = []
        self.escalated = False
        self.proc: subprocess.Popen | None = None
        self.leftovers: list[int] = []
        self._pending: collections.deque[int] = collections.deque()
        self._wake = threading.Event()
        self._tree: ProcessTree | None = None
        self._term_at: float | None = None
        self._kill_at: float | None = None
        self._termed = False
        self._last_snapshot = 0.0
        self._previous: dict[int, object] = {}

    @property
    def stop_requested(self) -> bool:
        return bool(self.signals)

    # -- the run --------------------------------------------------------------------
    def run(self) -> int:
        """Start torchrun, supervise it, clean up; returns its exit code (128+N if killed).
        The stop signals stay caught (and only recorded) until :meth:`release`: a signal
        while the launcher writes the job's end (SLURM ends a step's other nodes when one
        exits) must not kill it half-way."""
        _become_subreaper()
        main = threading.current_thread() is threading.main_thread()
        self._previous = {s: signal.getsignal(s) for s in STOP_SIGNALS} if main else {}
        try:
            if main:
                for s in IGNORED_IN_CHILDREN:
                    signal.signal(s, signal.SIG_IGN)  # inherited through exec by torchrun and its workers
            # torchrun dies with the launcher: a launcher killed by SIGKILL cannot stop it, and its
            # workers then see their parent gone and end too (callback/watchdog.py).
            die_with_us = death_signal_setter()
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, start_new_session=True, preexec_fn=die_with_us)
            # every process under the launcher (orphans are its children: a subreaper), and torchrun's session
            self._tree = ProcessTree(os.getpid(), include_root=False, session=self.proc.pid)
            if main:
                for s in STOP_SIGNALS:
                    signal.signal(s, self._on_signal)
            log.info("torchrun started (pid %d): %s", self.proc.pid, " ".join(self.argv))
            returncode = self._supervise()
        finally:
            self._reap()
            if self.on_reaped is not None:
                try:
                    self.on_reaped()
                except Exception:
                    log.exception("after the job's processes ended")
        return exit_code_of(returncode)

    def release(self) -> None:
        """Give the stop signals back their earlier handlers (the job's end is written)."""
        for s, h in self._previous.items():
            try:
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        self._previous = {}

    def _on_signal(self, signum: int, frame: object) -> None:
        # A handler only records; the loop acts (no I/O or locks inside a handler).
        self._pending.append(signum)
        self._wake.set()

    def _supervise(self) -> int:
        assert self.proc is not None
        while True:
            returncode = self.proc.poll()
            if returncode is not None:
                return returncode
            self._snapshot()
            while self._pending:
                self._handle(self._pending.popleft())
            if self.duties is not None and self.forced_abort is None and not self.escalated:
                overdue = self.duties()
                if overdue is not None:
                    log.warning("%s", overdue.reason)
                    self.forced_abort = overdue
                    self._kill_all()
            now = time.monotonic()
            if self._term_at is not None and now >= self._term_at and not self._termed:
                log.warning("the job did not stop within the grace period (%gs): terminating torchrun", self.grace)
                self._terminate()
            if self._kill_at is not None and now >= self._kill_at:
                log.warning("torchrun still runs %gs after SIGTERM: killing its process group", self.kill_timeout)
                self._signal_group(signal.SIGKILL)
                self._kill_at = None
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _handle(self, signum: int) -> None:
        self.signals.append(signum)
        name = signal.Signals(signum).name
        now = time.monotonic()
        if len(self.signals) == 1:
            if self.on_stop is not None and self._may_save() and self._nothing_yet():
                log.warning("%s before this run's first training step: nothing to save yet; stopping torchrun and its workers now", name)
                self.before_first_step = signum
                self._terminate()
            elif self.on_stop is not None and self._may_save():
                log.warning("%s: asking every rank to save and stop (grace %gs)", name, self.grace)
                try:
                    self.on_stop(signum)
                except Exception:
                    log.exception("could not ask the job to stop; torchrun will be terminated after the grace period")
                self._term_at = now + self.grace
            else:
                why = "no control attached, nothing can save" if self.on_stop is not None else "no control"
                log.warning("%s: stopping torchrun and its workers now (%s; SIGKILL after %gs)", name, why, self.grace)
                self.passed_on = signum
                self._send(signal.SIGTERM, group=False)
                self._termed = True
                self._kill_at = now + self.grace
        else:
            log.warning("%s again: escalating, killing torchrun and every worker now, without saving", name)
            self.escalated = True
            self._kill_all()

    def _may_save(self) -> bool:
        return _asked(self.may_save, if_unknown=True, what="whether control is attached")

    def _nothing_yet(self) -> bool:
        return _asked(self.nothing_yet, if_unknown=False, what="whether the run has anything to save")

    def _kill_all(self) -> None:
        """Every process of the job, at once: a second signal means the user will not
        wait for a save (or for torchrun to pass SIGTERM on and wait in its turn)."""
        if self._tree is None:
            self._signal_group(signal.SIGKILL)
            return
        self._tree.track()
        self.leftovers = [p.pid for p in self._tree.kill(timeout=10)]

    def _terminate(self) -> None:
        self._termed = True
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.kill_timeout
        self._kill_at = deadline if self._kill_at is None else min(self._kill_at, deadline)

    def _send(self, sig: int, *, group: bool) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _signal_group(self, sig: int) -> None:
        self._send(sig, group=True)

    # -- no process left behind -------------------------------------------------------
    def _snapshot(self) -> None:
        now = time.monotonic()
        if self._tree is None or now - self._last_snapshot < 1.0:
            return
        self._last_snapshot = now
        self._tree.track()

    def _reap(self) -> None:
        """Kill whatever torchrun left: every process seen under the launcher (as a
        subreaper, orphans are our children) and what is still in torchrun's session,
        and wait for them."""
        if self.proc is None or self._tree is None:
            return
        self.leftovers = [p.pid for p in self._tree.kill(timeout=10)]
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            log.error("torchrun (pid %d) did not die", self.proc.pid)
        if self.leftovers:
            log.error("processes survived SIGKILL: %s", self.leftovers)


def _become_subreaper() -> None:
    """Orphans of torchrun's workers get reparented to us, not to init, so we can find
    (and reap) them. Linux only; elsewhere the process-group kill still applies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_CHILD_SUBREAPER = 36
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        pass


def _asked(probe: Callable[[], bool] | None, *, if_unknown: bool, what: str) -> bool:
    """``probe``'s answer; ``if_unknown`` (the save path, which loses nothing within the
    grace) when there is no probe or it fails."""
    if probe is None:
        return if_unknown
    try:
        return probe()
    except Exception:
        log.exception("could not tell %s; asking for a save", what)
        return if_unknown


def _drop_stop_command(paths: JobPaths, key: str) -> Callable[[int], None]:
    """on_stop for a job with control: one save_and_stop in the inbox (file channel), so
    it works before rank 0 serves HTTP and on nodes that share only the jobs dir. A job
    folder removed while the job trains is made again first: rank 0 still reads its inbox
    there, and writes its records there again (the run's end included)."""

    def on_stop(signum: int) -> None:
        if not paths.inbox.is_dir():
            paths.create(mark=False)  # refuses a folder another user made meanwhile
            ensure_private_dir(paths.nodes)  # the launchers' node records go there again
            log.warning("the job's folder %s was gone; made it again to deliver the stop", paths.dir)
        entry = FileTransport(paths).send(Command.SAVE_AND_STOP, key)
        log.info("queued save_and_stop %s for job %s (inbox)", entry.id, paths.job_id)

    return on_stop


def execute(
    plan: Plan,
    *,
    base_env: Mapping[str, str] | None = None,
    argv: Sequence[str] = (),
    cwd: str | None = None,
    runner: Callable[[Sequence[str]], subprocess.CompletedProcess] | None = None,
) -> int:
    """Run the plan on this node: claim the job id, write the records, supervise
    torchrun, record the outcome, and (node 0, SLURM, --requeue, stopped by a signal
    after a clean save) run ``scontrol requeue`` once. Returns the job's exit code."""
    base_env = os.environ if base_env is None else base_env
    cwd = cwd or os.getcwd()
    paths = JobPaths(Path(plan.jobs_dir), plan.job_id)
    roll_back = plan.config.resume.roll_back if plan.config.resume is not None else None
    previous = read_previous(paths, plan.placement, node_rank=plan.node_rank, script_knobs=plan.config.script_knobs, roll_back=roll_back)
    if previous.restarts != plan.restarts or previous.resume_from != plan.resume_from or previous.knobs != plan.knobs:
        plan = plan.with_history(
            restarts=previous.restarts,
            resume_from=previous.resume_from,
            resume_step=previous.resume_step,
            resume_gone=tuple(p.describe() for p in previous.gone),
            knobs=previous.knobs,
        )
    records = JobRecords(paths, plan)
    try:
        log_bytes = max_bytes_from(base_env)
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    after = no_control_after(plan.config, base_env) if plan.config.control else None
    alerts: LaunchAlerts | None = None
    try:
        records.claim(previous)
        records.start(previous, argv=hide_notify(argv), cwd=cwd, no_control_after=after)
        if plan.node_rank == 0:  # node 0 alone tells (docs/design-notes.md, "Alerts: who sends, once")
            record_relaunch(paths, plan, env=base_env, cwd=cwd)
            alerts = LaunchAlerts.start(paths, run=plan.restarts, sinks=resumed_sinks(paths, plan))
    except OSError as exc:
        raise LaunchError(
            f"cannot write the job's records in {paths.dir}: {exc}; pass --jobs-dir (or set FORGATHER_JOBS_DIR) to a folder you can write, shared by every node"
        ) from None
    on_stop = _drop_stop_command(paths, launcher_stop_key(plan.job_id, plan.restarts)) if plan.config.control else None
    env = child_env(plan, base_env, launcher=launcher_identity())
    env.pop(ENV_LOG_SOCKET, None)
    pump = _capture_output(plan, paths, log_bytes) if plan.config.control else None
    if pump is not None:
        env[ENV_LOG_SOCKET] = pump.address
    sup = Supervisor(plan.argv, env, grace=plan.config.grace, on_stop=on_stop, cwd=cwd, on_reaped=pump.close if pump is not None else None)
    if plan.config.control:
        duties = NodeDuties(paths, node_rank=plan.node_rank, run=plan.restarts, torchrun=lambda: sup.proc.pid if sup.proc is not None else None)
        attach = ControlAttach(paths, run=plan.restarts, after=after or 0.0, record=records.update_job)
        sup.may_save = attach.may_save_now
        sup.nothing_yet = attach.nothing_to_save_now

        def tick() -> Overdue | None:
            attach.tick()
            return duties.tick()

        sup.duties = tick
    if alerts is not None:
        sup.duties = _with_alerts(alerts, sup.duties)
    try:
        return _finish(plan, records, sup, runner, alerts)
    finally:
        sup.release()
        if pump is not None:
            pump.close()


def _capture_output(plan: Plan, paths: JobPaths, max_bytes: int) -> OutputPump | None:
    """This node's ranks' stdout and stderr, to the terminal and to their logs in the job
    folder (launcher/output.py); None, said once, when it cannot be set up (the ranks then
    write to the terminal directly, as under torchrun alone)."""
    detached = os.environ.get(ENV_DETACHED) == "1"  # its terminal is a log file: bounded like a rank's
    pump = OutputPump(
        paths.dir, max_bytes=max_bytes, host=socket.gethostname(), node=plan.node_rank, run=plan.restarts, terminal_bytes=max_bytes if detached else None
    )
    try:
        pump.start()
    except OSError as exc:
        log.warning("the ranks' output is not kept in %s/%s (%s); it still reaches this terminal", paths.dir, LOGS_DIR, exc)
        pump.close()
        return None
    return pump


def _with_alerts(alerts: LaunchAlerts, duties: Callable[[], Overdue | None] | None) -> Callable[[], Overdue | None]:
    """The supervising round's duties, and a look for events to alert (queued, never sent here)."""

    def tick() -> Overdue | None:
        alerts.tick()
        return duties() if duties is not None else None

    return tick


def _finish(plan: Plan, records: JobRecords, sup: Supervisor, runner, alerts: LaunchAlerts | None = None) -> int:
    """Supervise the run to its end and record how it ended; returns the exit code."""
    try:
        code = sup.run()
    except BaseException as exc:
        error = f"launcher: {type(exc).__name__}: {exc}"
        records.finish(JobState.FAILED, -1, error=error)
        if alerts is not None:
            alerts.end(JobState.FAILED, reason=error, step=_step(records))
        raise
    forced = sup.forced_abort
    passed_on = passed_on_reason(sup.passed_on, control=plan.config.control) if sup.passed_on is not None else None
    early = nothing_to_save_reason(signal.Signals(sup.before_first_step).name) if sup.before_first_step is not None else None
    outcome = records.outcome(
        code, escalated=sup.escalated, signalled=sup.stop_requested, forced=forced.reason if forced else None, passed_on=passed_on, nothing_saved=early
    )
    requeue = plan.placement.requeue_argv
    state = outcome.state
    requeued_at = None
    # Requeue a run a signal stopped: not one whose ranks had applied a user's stop before
    # the signal came (srun ending this node after another node's launcher exited).
    stopped_whole = code == 0 or sup.before_first_step is not None  # every rank ended after its save, or had none to make
    if requeue and sup.stop_requested and outcome.by_signal and not sup.escalated and stopped_whole and state == JobState.STOPPED:
        state = JobState.REQUEUED
        requeued_at = time.time()
    elif requeue and sup.stop_requested:
        log.warning("not requeueing: the job ended %s (exit code %d)%s", state, code, " after escalation" if sup.escalated else "")
    exit_code = launch_exit_code(state, by_signal=outcome.by_signal, worker_code=code, passed_on=sup.passed_on)
    records.finish(
        state,
        exit_code,
        reason=outcome.reason,
        receipt=forced.receipt(time.time()) if forced else None,
        torchrun_exit_code=code,
        signals=[signal.Signals(s).name for s in sup.signals] or None,
        leftover_pids=sup.leftovers or None,
        requeued_at=requeued_at,
    )
    if state == JobState.REQUEUED:
        _requeue(requeue, records, runner)
    log.warning("job %s %s (exit code %d)%s", plan.job_id, state, exit_code, f": {outcome.reason}" if outcome.reason else "")
    if alerts is not None:
        alerts.end(state, reason=outcome.reason, step=_step(records))
    return exit_code


def _step(records: JobRecords) -> int | None:
    """The step this run's rank 0 last recorded, for the end's alert."""
    try:
        status = records.this_runs_status()
    except Exception:  # noqa: BLE001 - an alert without its step is still an alert
        return None
    return status.step if status is not None else None


def _requeue(argv: Sequence[str], records: JobRecords, runner) -> None:
    """``scontrol requeue <id>``, once. SLURM then ends this run; the rerun reuses the
    job id and resumes from the checkpoint recorded in job.json."""
    log.warning("requeueing: %s", " ".join(argv))
    try:
        if runner is not None:
            proc = runner(argv)
        else:
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("could not run %s: %s", " ".join(argv), exc)
        records.update_job(state=JobState.STOPPED, requeue_error=str(exc))
        return
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout or "").strip()
        log.error("%s failed (exit %d): %s. Is the job submitted with --requeue?", " ".join(argv), proc.returncode, err)
        records.update_job(state=JobState.STOPPED, requeue_error=err or f"exit {proc.returncode}")
