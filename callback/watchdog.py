"""A worker ends when its launcher is gone: no orphans, whatever killed the launcher.

``forgather launch`` names itself to its workers (``FORGATHER_LAUNCHER_PID``, pid and
start time). When the launcher no longer runs (``kill -9``, an OOM kill, a node agent
that took it) or the worker's own parent (torchrun) is gone, nothing is left to
supervise the job, stop it at the end of its grace or reap it. The worker then ends at
once; rank 0 first writes the job's final state, ``failed`` with the reason, so ``list``
and ``status`` say what happened instead of showing a job that runs forever.

Rank 0 looks once a second, in its control loop (:mod:`forgather_control.core.rankloop`).
The other ranks have no such thread (issue 24): the kernel sends them
:data:`ORPHAN_SIGNAL` when their parent dies (``PR_SET_PDEATHSIG``; torchrun dies with
the launcher by its own death signal, ``launcher/run.py``) and the main thread looks then,
from a Python handler. That signal also comes when the parent *thread* ends (torchrun
starts its workers from its main thread); the look then finds the parent still there and
does nothing. A rank whose main thread is in C when its parent dies ends when that call
returns: a collective fails once its peers are gone (rank 0 ends by its own look).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from forgather_control.core import rankloop
from forgather_control.core.deathsig import death_signal_setter
from forgather_control.core.env import ENV_JOB_ID, ENV_JOBS_DIR, ENV_LAUNCHER_PID
from forgather_control.core.files import remove_quietly, write_json_atomic
from forgather_control.core.jobs import JobPaths, is_valid_job_id
from forgather_control.core.states import JobState, is_final

log = logging.getLogger(__name__)

__all__ = ["INTERVAL", "ORPHAN_SIGNAL", "LauncherWatch", "launcher_from_env"]

#: Seconds between looks: a worker outlives its launcher by about this long.
INTERVAL = 1.0
#: The worker's exit code when its launcher is gone (as if killed by SIGKILL).
EXIT_ORPHANED = 137
#: The signal the kernel sends a rank other than 0 when its parent dies.
ORPHAN_SIGNAL = signal.SIGRTMIN + 7


def launcher_from_env(env: dict[str, str] | os._Environ[str] = os.environ) -> tuple[int, float | None] | None:
    """``(pid, start time)`` of the launcher that started this worker, or None."""
    raw = env.get(ENV_LAUNCHER_PID, "")
    pid, _, started = raw.partition(":")
    if not pid.isdigit():
        return None
    try:
        return int(pid), float(started) if started else None
    except ValueError:
        return int(pid), None


class LauncherWatch:
    """Watches the launcher (and this worker's parent) from the control loop
    (:meth:`start`) or on its parent's death signal (:meth:`arm`); ``final_record`` runs
    once when either is gone, then ``exit_process`` ends the process (both injected for
    tests)."""

    def __init__(
        self,
        launcher: tuple[int, float | None],
        *,
        interval: float = INTERVAL,
        exit_process: Callable[[int], None] = os._exit,
        final_record: Callable[[str], None] | None = None,
    ) -> None:
        self.launcher_pid, self.launcher_started = launcher
        self.interval = interval
        self._exit = exit_process
        self._final_record = final_record
        self._parent = os.getppid()
        self._task: rankloop.Task | None = None
        self._armed = False

    def start(self, loop: rankloop.ControlLoop | None = None) -> LauncherWatch:
        if self._task is None:
            self._task = (loop or rankloop.shared()).every(self.interval, self._look, name="the launcher watch")
        return self

    def arm(self) -> LauncherWatch:
        """Look when the kernel says this process's parent died (:data:`ORPHAN_SIGNAL`),
        with no thread; where it cannot (not Linux, not the main thread), the loop looks."""
        set_death_signal = death_signal_setter(ORPHAN_SIGNAL)
        if set_death_signal is None or threading.current_thread() is not threading.main_thread():
            return self.start()
        if not self._armed:
            self._armed = True
            signal.signal(ORPHAN_SIGNAL, self._on_death_signal)
            signal.siginterrupt(ORPHAN_SIGNAL, False)
            set_death_signal()
            if os.getppid() != self._parent:  # it died before the kernel was asked
                self._look()
        return self

    def _on_death_signal(self, signum: int, frame: object) -> None:
        if self._armed:
            self._look()

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        if self._armed:
            self._armed = False  # the handler stays (the signal's default would end the process)
            set_death_signal = death_signal_setter(0)
            if set_death_signal is not None:
                set_death_signal()

    def gone(self) -> str | None:
        """Why this worker is orphaned, or None while its launcher and parent run."""
        if os.getppid() != self._parent:
            return f"its parent (pid {self._parent}, torchrun) is gone"
        # here: a rank other than 0 looks only when its parent died (issue 24)
        from forgather_control.core.liveness import pid_alive
        from forgather_control.core.records import Identity

        if not pid_alive(Identity(pid=self.launcher_pid, pid_start_time=self.launcher_started)):
            return f"the launcher (pid {self.launcher_pid}) is gone"
        return None

    def _look(self) -> None:
        why = self.gone()
        if why is None:
            return
        self.stop()  # once: the worker ends here (an injected exit returns; it is not asked again)
        log.error("forgather: %s; nothing supervises this job any more: ending this worker", why)
        if self._final_record is not None:
            try:
                self._final_record(why)
            except Exception:  # the worker ends either way
                log.exception("forgather: could not record the job's end")
        self._exit(EXIT_ORPHANED)


def record_orphaned(paths: JobPaths, why: str) -> None:
    """Rank 0's last word: the job failed because its launcher died. Its endpoint goes
    (nobody serves it), and a final state already written is left as it is."""
    from forgather_control.core.records import Endpoint, Status, encode, load_or_none

    status = load_or_none(paths.status, Status) or Status()
    if not is_final(status.state):
        now = time.time()
        status.state = JobState.FAILED
        status.error = f"{why}: the launcher died, so every rank stopped (relaunch the job to resume from its last checkpoint)"
        status.ended_at = status.heartbeat_at = now
        write_json_atomic(paths.status, encode(status))
    endpoint = load_or_none(paths.endpoint, Endpoint)
    if endpoint is not None and endpoint.pid == os.getpid():
        remove_quietly(paths.endpoint)


class LauncherGone(RuntimeError):
    """What a worker records as its failure when its launcher is gone."""


def watch_launcher(rank: int, run: int = 0) -> LauncherWatch | None:
    """Start watching the launcher named in the environment (a launched worker only): in
    the control loop on rank 0, on the parent's death signal elsewhere
    (:func:`~forgather_control.core.rankloop.keeps_thread`). Whichever rank notices
    first records the launcher's death as the job's root cause (the others then fail in
    a collective, later); rank 0 also writes the final state."""
    launcher = launcher_from_env()
    if launcher is None:
        return None
    job_id, jobs_dir = os.environ.get(ENV_JOB_ID, ""), os.environ.get(ENV_JOBS_DIR, "")
    if not (is_valid_job_id(job_id) and jobs_dir):
        return _begin(LauncherWatch(launcher), rank)
    paths = JobPaths(Path(jobs_dir), job_id)

    def final(why: str) -> None:
        from forgather_control.core.failures import record_failure

        record_failure(paths, rank=rank, run=run, exc=LauncherGone(f"{why}: the launcher died, so every rank stopped"))
        if rank == 0:
            record_orphaned(paths, why)

    return _begin(LauncherWatch(launcher, final_record=final), rank)


def _begin(watch: LauncherWatch, rank: int) -> LauncherWatch:
    return watch.start() if rankloop.keeps_thread(rank) else watch.arm()
