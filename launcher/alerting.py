"""The launcher's alerts (node 0): it watches this run's status.json for events while the
job runs, and tells the run's end from the outcome it records.

The watch runs on the supervising loop's round (:meth:`LaunchAlerts.tick`, at most once a
second: one small read), the sending on the :class:`~forgather_control.client.notify.Notifier`'s
daemon thread: a sink that hangs never holds up supervision. At the end the launcher
waits a bounded time for what is queued (:data:`~forgather_control.client.notify.LAUNCHER_BUDGET`);
an alert it could not finish keeps its claim without 'sent', for the next ``list``.
Why each event is sent once, by one process: docs/design-notes.md, "Alerts: who sends, once".
"""

from __future__ import annotations

import logging
import time

from forgather_control.client.notify import LAUNCHER_BUDGET, Notifier, Sender, unsupported
from forgather_control.core.alerts import END_EVENTS, describe_sinks, end_alert, events, status_command, write_sinks
from forgather_control.core.host import local_host
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import AlertSinks, Status, load_or_none
from forgather_control.core.states import JobState

from .config import LaunchError

log = logging.getLogger(__name__)

__all__ = ["LaunchAlerts", "check_sinks", "describe_sinks"]


def check_sinks(sinks: AlertSinks | None) -> None:
    """Refuse, before anything starts, a URL apprise cannot send to (named by its scheme)."""
    if sinks is None or not sinks.urls:
        return
    bad = unsupported(sinks.urls)
    if bad:
        raise LaunchError(f"notify: apprise does not know how to send to {', '.join(bad)}; see https://github.com/caronc/apprise/wiki for its URLs")


class LaunchAlerts:
    """Node 0's alerts for one run: ``tick`` on each supervising round, ``end`` once."""

    def __init__(self, paths: JobPaths, *, run: int, sinks: AlertSinks, interval: float = 1.0, budget: float = LAUNCHER_BUDGET) -> None:
        self.paths = paths
        self.run = run
        self.interval = interval
        self.budget = budget
        self.command = status_command(paths.job_id, paths.root)
        self.host = local_host().hostname
        self.notifier = Notifier(paths, Sender(sinks, budget=budget))
        self._previous: Status | None = None
        self._last = 0.0
        self._ended = False
        self._failing = False

    @classmethod
    def start(cls, paths: JobPaths, *, run: int, sinks: AlertSinks | None) -> LaunchAlerts | None:
        """Write notify.json (0600; removed when this launch names no sink) and, with sinks,
        the watch that sends to them."""
        write_sinks(paths, sinks)
        return None if sinks is None else cls(paths, run=run, sinks=sinks)

    def tick(self, *, force: bool = False) -> None:
        """Read status.json (at most once per ``interval``) and queue its new events; never raises."""
        now = time.monotonic()
        if self._ended or (not force and now - self._last < self.interval):
            return
        self._last = now
        try:
            current = load_or_none(self.paths.status, Status)
            if current is None or (current.restarts or 0) != self.run:
                return
            new = events(self._previous, current, job_id=self.paths.job_id, run=self.run, command=self.command, now=time.time(), host=self.host, ends=False)
            for alert in new:
                self.notifier.submit(alert)
            self._previous = current
            self._failing = False
        except Exception:
            if not self._failing:
                self._failing = True
                log.exception("the launcher could not look for alerts this round; the job runs on")

    def end(self, state: JobState, *, reason: str | None, step: int | None) -> None:
        """The run's end, as the launcher recorded it, then a bounded wait for the queue."""
        if self._ended:
            return
        self.tick(force=True)  # what fired just before the end
        self._ended = True
        try:
            event = state.value if state.value in END_EVENTS else JobState.STOPPED.value  # requeued, paused: it stopped, and waits
            why = reason
            if state == JobState.REQUEUED:
                why = f"{reason + '; ' if reason else ''}requeued: it runs again when SLURM starts it"
            host = (self._previous.host if self._previous is not None else None) or self.host
            told = {"job_id": self.paths.job_id, "run": self.run, "state": state.value, "step": step, "host": host, "command": self.command}
            self.notifier.submit(end_alert(event=event, reason=why, now=time.time(), **told))
        except Exception:
            log.exception("could not send the job's end as an alert")
        self.notifier.close(timeout=self.budget + 5.0)
