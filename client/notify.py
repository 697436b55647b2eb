"""Sending alerts (core/alerts.py says what and to whom): apprise URLs and commands.

:class:`Sender` sends one alert to every sink of a job: each sink is tried until it takes
the alert, with exponential backoff, within a bounded time; a sink that fails is logged
once per process, by its scheme or program name (a URL is a secret: it is never logged,
and apprise's own log, which prints URLs, is silenced). apprise is imported here only,
inside the send, on the first alert: ``forgather control`` loads it only when it sends.

:class:`Notifier` is the launcher's: a daemon thread and a bounded queue, so a slow sink
never holds up the supervision of the job (nor training, which never sees any of this).
:func:`deliver` is a listing's: synchronous, within a short budget. Both send only what
they claimed (:func:`forgather_control.core.alerts.claim`) and say in the claim how it
went (:func:`~forgather_control.core.alerts.release`).
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from forgather_control.client.jobinfo import JobInfo
from forgather_control.core.alerts import alert_json, claim, end_alert, message, read_sinks, release, sink_name, status_command, taken_over
from forgather_control.core.env import ENV_NOTIFY, ENV_NOTIFY_CMD, ENV_TOKEN
from forgather_control.core.files import RecordError
from forgather_control.core.jobs import JobPaths
from forgather_control.core.liveness import Liveness
from forgather_control.core.records import Alert, AlertSinks, Job, Status

log = logging.getLogger(__name__)

__all__ = ["LAUNCHER_BUDGET", "LISTING_BUDGET", "Notifier", "Sender", "deliver", "owed", "unsupported"]

#: Seconds the launcher spends on one alert at most, every sink and try included.
LAUNCHER_BUDGET = 30.0
#: Seconds a listing spends on all the alerts it owes, at most (``list`` stays quick).
LISTING_BUDGET = 5.0
#: Tries of one sink for one alert.
TRIES = 4
#: The first wait between two tries; each next one doubles.
FIRST_WAIT = 0.5
#: The longest a single try of one sink may take (connect and answer, or a command's run).
TRY_TIMEOUT = 8.0
#: Schemes whose receiver reads our alert itself: apprise posts it as the message.
_RECORD_SCHEMES = ("json", "jsons")
#: Variables a notify command does not inherit: the sinks themselves, a token.
_SECRET_ENV = (ENV_NOTIFY, ENV_NOTIFY_CMD, ENV_TOKEN)


def _apprise() -> Any:
    """apprise, imported on the first send; its logger silenced (it logs whole URLs), and
    urllib3's debug lines (each request's path: a webhook's secret) kept out of the logs."""
    import apprise

    quiet = logging.getLogger("apprise")
    quiet.setLevel(logging.CRITICAL + 1)
    quiet.propagate = False
    http = logging.getLogger("urllib3")
    if http.getEffectiveLevel() < logging.WARNING:
        http.setLevel(logging.WARNING)
    return apprise


def unsupported(urls: Sequence[str]) -> list[str]:
    """The URLs (by scheme, never whole) that apprise cannot send to: checked at launch,
    so a mistyped sink is refused before the job starts, not found out at 3 a.m."""
    apprise = _apprise()
    return [sink_name(u) for u in urls if apprise.Apprise.instantiate(u) is None]


class Sender:
    """Sends alerts to one job's sinks. ``budget``: seconds one alert may take, all tries
    included; ``sleep`` and ``clock`` are the test's to replace."""

    def __init__(
        self,
        sinks: AlertSinks,
        *,
        tries: int = TRIES,
        first_wait: float = FIRST_WAIT,
        budget: float = LAUNCHER_BUDGET,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sinks = sinks
        self.tries = max(1, tries)
        self.first_wait = first_wait
        self.budget = budget
        base = os.environ if env is None else env
        self.env = {k: v for k, v in base.items() if k not in _SECRET_ENV}
        self.sleep = sleep
        self.clock = clock
        self._warned: set[int] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Sender({len(self.sinks.urls)} URL(s), {len(self.sinks.cmds)} command(s))"  # never the URLs

    @property
    def targets(self) -> list[str | list[str]]:
        return [*self.sinks.urls, *self.sinks.cmds]

    def send(self, alert: Alert, *, deadline: float | None = None) -> tuple[bool, str | None]:
        """Send ``alert`` to every sink, each until it takes it, ``tries`` times at most,
        waiting ``first_wait``, then twice as long, between rounds, and never past
        ``deadline`` (this object's clock; default: ``budget`` from now). Returns whether
        any sink took it and, if some did not, which (by name)."""
        end = self.clock() + self.budget if deadline is None else deadline
        pending = list(range(len(self.targets)))
        took = 0
        wait = self.first_wait
        tried = 0
        while pending and tried < self.tries:
            tried += 1
            failed = []
            for i in pending:
                left = end - self.clock()
                if left <= 0:
                    failed.append(i)
                    continue
                if self._try(self.targets[i], alert, min(TRY_TIMEOUT, left)):
                    took += 1
                else:
                    failed.append(i)
            pending = failed
            if not pending or tried >= self.tries or self.clock() + wait >= end:
                break
            self.sleep(wait)
            wait *= 2
        if not pending:
            return True, None
        names = [f"{sink_name(self.targets[i])} (sink {i + 1} of {len(self.targets)})" for i in pending]
        for i, name in zip(pending, names, strict=True):
            with self._lock:
                first = i not in self._warned
                self._warned.add(i)
            if first:
                log.warning(
                    "alert %s of job %s: %s did not take it after %d tr%s; this sink's later failures are not logged",
                    alert.key,
                    alert.job_id,
                    name,
                    tried,
                    "y" if tried == 1 else "ies",
                )
        return took > 0, f"not taken by {', '.join(names)} after {tried} tr{'y' if tried == 1 else 'ies'}"

    def _try(self, target: str | list[str], alert: Alert, timeout: float) -> bool:
        try:
            if isinstance(target, str):
                return self._post(target, alert, timeout)
            return self._run(target, alert, timeout)
        except Exception as exc:  # noqa: BLE001 - a sink's failure is the sink's, never the caller's (its text may hold the URL)
            log.debug("alert sink %s: %s", sink_name(target), type(exc).__name__)
            return False

    def _post(self, url: str, alert: Alert, timeout: float) -> bool:
        apprise = _apprise()
        plugin = apprise.Apprise.instantiate(url)
        if plugin is None:
            return False
        plugin.socket_connect_timeout = max(0.1, min(4.0, timeout))
        plugin.socket_read_timeout = max(0.1, timeout)
        title, body = message(alert)
        if url.split("://", 1)[0].lower() in _RECORD_SCHEMES:
            body = alert_json(alert).decode()  # the record itself, for a program to read
        box = apprise.Apprise()
        box.add(plugin)
        return bool(box.notify(body=body, title=title))

    def _run(self, argv: list[str], alert: Alert, timeout: float) -> bool:
        """The command, without a shell, the alert's JSON on its stdin; it took the alert
        when it exits 0. Its output is not kept (it may echo what it was given)."""
        done = subprocess.run(
            list(argv),
            input=alert_json(alert),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env,
            timeout=timeout,
            check=False,
            close_fds=True,
        )
        return done.returncode == 0


def _send_claimed(paths: JobPaths, sender: Sender, alert: Alert, *, deadline: float | None = None) -> None:
    took, why = sender.send(alert, deadline=deadline)
    try:
        release(paths, alert.key, sent=took, why=why, now=time.time())
    except OSError as exc:
        log.debug("could not record how alert %s went: %s", alert.key, exc)


class Notifier:
    """The launcher's sender: :meth:`submit` claims an alert and queues it (never blocks);
    a daemon thread sends; :meth:`close` waits, boundedly, for what is queued."""

    def __init__(self, paths: JobPaths, sender: Sender, *, maxsize: int = 64) -> None:
        self.paths = paths
        self.sender = sender
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._work, name="forgather-alerts", daemon=True)
        self._thread.start()
        self._full_said = False

    def submit(self, alert: Alert) -> bool:
        """Claim ``alert`` and queue it; False when another process has it, or it could not
        be claimed or queued (said once)."""
        try:
            if not claim(self.paths, alert, now=time.time()):
                return False
        except OSError as exc:
            log.warning("could not claim alert %s of job %s (%s); it is not sent", alert.key, alert.job_id, exc)
            return False
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            if not self._full_said:
                self._full_said = True
                log.warning("too many alerts waiting to be sent; alert %s of job %s (and others like it) dropped", alert.key, alert.job_id)
            release(self.paths, alert.key, sent=False, why="dropped: too many alerts waiting", now=time.time())
            return False
        return True

    def _work(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            try:
                _send_claimed(self.paths, self.sender, alert)
            except Exception:
                log.exception("sending alert %s failed", alert.key)

    def close(self, timeout: float) -> bool:
        """Let what is queued be sent, waiting ``timeout`` seconds at most; True when all was.
        An alert left unsent keeps its claim without 'sent': a later ``list`` takes it over
        (this process is then gone)."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return False
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if alive:
            log.warning("alerts still being sent after %.0fs; leaving them to the next `forgather control list`", timeout)
        return not alive


def deliver(owed: Sequence[tuple[JobPaths, AlertSinks, Alert]], *, budget: float = LISTING_BUDGET) -> None:
    """A listing's alerts (each already claimed by it), sent within ``budget`` seconds in
    all: every try of every sink stops at the deadline, and an alert it cuts short is
    recorded as failed."""
    deadline = time.monotonic() + budget
    senders: dict[str, Sender] = {}
    for paths, sinks, alert in owed:
        sender = senders.setdefault(str(paths.dir), Sender(sinks, tries=2, first_wait=0.25, budget=budget))
        _send_claimed(paths, sender, alert, deadline=deadline)


def owed(info: JobInfo, *, now: float) -> list[tuple[JobPaths, AlertSinks, Alert]]:
    """What a listing that judged ``info`` owes its sinks, each claimed by it now: a dead
    job's end (its launcher died too: nobody else will tell), and any alert of the job
    whose claimant died before it could say 'sent'. Only the job's owner reads its
    notify.json (0600), so only the owner's listing sends. Nothing when the job has no
    sinks; a sinks file that is a link or not the owner's is refused, said once."""
    paths = info.paths
    try:
        sinks = read_sinks(paths)
    except RecordError as exc:
        log.warning("job %s: not alerting: %s", info.job_id, exc)
        return []
    if sinks is None:
        return []
    out: list[Alert] = []
    try:
        if info.liveness == Liveness.DEAD:
            job, status = info.job or Job(), info.current_status or Status()
            run = job.restarts if job.restarts is not None else (status.restarts or 0)
            alert = end_alert(
                event="dead",
                job_id=info.job_id,
                run=run,
                state="dead",
                step=status.step if status.step is not None else job.final_step,
                reason=info.evidence or None,
                host=status.host or job.host,
                command=status_command(info.job_id, paths.root),
                now=now,
            )
            if claim(paths, alert, now=now):
                out.append(alert)
        out += taken_over(paths, now=now)
    except OSError as exc:
        log.debug("job %s: alerts not claimed: %s", info.job_id, exc)
    return [(paths, sinks, a) for a in out]
