"""One job for the page: its details, its metric history, and its commands, through the
same calls as ``forgather control status`` and ``save``/``eval``/``stop``/``save-stop``/
``abort``/``set`` (:func:`~forgather_control.client.lookup.open_job`, :class:`JobHandle`).

A ``set`` from the knob panel goes through :meth:`JobHandle.set`, as ``forgather control
set`` does: checked against the knobs the job's status shows
(:func:`~forgather_control.core.knobs.check_changes`, the rule rank 0 applies again), so
a refused change is never sent and its message is the page's answer. The panel asks
first what a change would do (:meth:`JobView.check_knobs`: the same check, old -> new).

The Logs tab reads one rank's log at a time through ``client/logs.py`` (its tail, then
what came after the offset it returned), after the job is found as every other route
finds it (so another user's private job is refused the same way). Resume and "resume
from here" go through ``client/resume.py`` (:func:`~forgather_control.client.resume.prepare`,
then :meth:`Resumption.start`, detached: the launcher runs in the background as the
user who runs the page server), asked first (:meth:`JobView.plan_resume`: what it would
start, nothing started), one at a time per job.

A job in a folder is opened afresh for each request (milliseconds: its records are read
and judged again, and the channel is chosen again, so a job whose server has come up
since is reached over HTTP). A Ray job costs a round of the cluster to find, so its
handle is kept for a while.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from forgather_control.client.handle import JobHandle
from forgather_control.client.logs import LocalLogs, NoLogs, open_logs, read_rank
from forgather_control.client.resume import Resumption, prepare
from forgather_control.client.sources import JobSource, LocalSource, RaySource
from forgather_control.core.commands import PLAIN_VERBS, Command, UnknownCommand, new_key, parse_command
from forgather_control.core.errors import ControlError, JobEnded, NotResumable, Unreachable
from forgather_control.core.files import RecordError
from forgather_control.core.knobs import KnobError, check_changes, describe
from forgather_control.core.liveness import Liveness
from forgather_control.core.logs import LogText
from forgather_control.core.metrics import VIEW_POINTS, view
from forgather_control.core.records import CommandOptions, JobDetails, KnobChange, MetricHistory, Text, decode, encode
from forgather_control.core.safe import json_safe, scrub

from .config import ENV_UI_TOKEN, UiConfig

#: The page's buttons send the CLI's verbs (their labels and questions are in
#: static/js/job.js); one table, so a verb added to the CLI is a button the server takes.
BUTTONS: dict[str, Command] = PLAIN_VERBS
#: Seconds a Ray job's handle is kept before the cluster is asked again.
KEEP_RAY_HANDLE = 30.0
#: Lines of a rank's log the Logs tab opens with, and the most it may ask for.
LOG_TAIL = 200
MAX_LOG_TAIL = 1000


class PageJob(JobDetails):
    """``GET /api/jobs/<id>``: ``status --json`` of the job, plus what the page needs to
    offer its buttons: whether it takes commands now, and why not."""

    #: the job lives or waits to run (``live`` is the library's: whether its server answered)
    active: bool = False
    final: bool = False
    channel: Text | None = None
    controllable: bool = False
    why_not: Text | None = None


class PageHistory(MetricHistory):
    """``GET /api/jobs/<id>/metrics``: the :func:`~forgather_control.core.metrics.view` of
    the job's history, and its bound: at most ``max_points`` a series, whatever the file
    holds (the page keeps what comes after, one poll at a time, to as many again)."""

    max_points: int = VIEW_POINTS


class JobView:
    """Details, history and commands of the jobs a :class:`UiConfig` finds (its source;
    ``source``: one already made from it)."""

    def __init__(self, config: UiConfig, *, source: JobSource | None = None) -> None:
        self.config = config
        self.source = source if source is not None else config.source()
        self._kept: dict[str, tuple[float, JobHandle, threading.Lock]] = {}
        self._resuming: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def handle(self, job_id: str) -> Iterator[JobHandle]:
        """The job's handle, for one request (a slow source's is kept a while)."""
        if not self.source.slow:
            with self.source.open(job_id, timeout=self.config.timeout) as h:
                yield h
            return
        with self._lock:
            kept = self._kept.get(job_id)
            if kept is not None and time.monotonic() - kept[0] > KEEP_RAY_HANDLE:
                kept[1].close()
                kept = None
            if kept is None:
                h = self.source.open(job_id, timeout=self.config.timeout)
                kept = self._kept[job_id] = (time.monotonic(), h, threading.Lock())
        with kept[2]:  # a handle's connection serves one request at a time
            yield kept[1]

    def details(self, job_id: str) -> PageJob:
        """``status --json`` of the job, plus what the page needs to know to offer its
        buttons: whether it takes commands now, and why not."""
        with self.handle(job_id) as h:
            d = PageJob.of(h.details())
            d.active, d.final, d.channel = d.state.live, d.state.final, h.channel
            try:
                h.check_controllable()
                d.controllable = True
            except (JobEnded, Unreachable) as exc:
                d.why_not = str(exc)
        return d

    def metrics(self, job_id: str, since: int | None) -> dict[str, Any]:
        """The view of the job's history after step ``since``: a read of at most
        ``MAX_BYTES`` and an answer of at most ``VIEW_POINTS`` points a series."""
        with self.handle(job_id) as h:
            found = view(h.metrics(since=since))
        return json_safe(encode(PageHistory(version=found.version, job_id=found.job_id, series=found.series, marks=found.marks)))

    def send(self, job_id: str, button: str, key: str | None = None) -> dict[str, Any]:
        """Send the command a button names; the receipt (queued, or sent to the inbox)."""
        command = BUTTONS.get(button)
        if command is None:
            try:
                command = parse_command(button)
            except UnknownCommand as exc:
                raise UnknownButton(f"unknown command {button!r}; the buttons are {', '.join(BUTTONS)}") from exc
        with self.handle(job_id) as h:
            receipt = h.send(command, key=key or new_key())
        return json_safe(scrub(encode(receipt)))

    def check_knobs(self, job_id: str, changes: object) -> dict[str, Any]:
        """What a ``set`` of ``changes`` (``[{name, value}, ...]``, a value as typed) would
        change, checked as :meth:`JobHandle.set` checks it and sent nowhere: ``changes``
        (each ``{name, value, old}``: the value converted, ``old`` the job's now) and
        ``text`` (``lr_scale 1 -> 0.5``). A refusal raises :class:`KnobError`."""
        asked = _asked(changes)
        with self.handle(job_id) as h:
            h.check_controllable()
            knobs = h.knobs()
        if knobs is None:
            raise KnobError(f"job {job_id} is not running: its knobs are checked, and changed, while it trains")
        now = {k.name: k.value for k in knobs}
        checked = [KnobChange(name=c.name, value=c.value, old=now.get(c.name)) for c in check_changes(knobs, asked)]
        return json_safe(scrub({"changes": [encode(c) for c in checked], "text": describe(checked)}))

    def set_knobs(self, job_id: str, changes: object, key: str | None = None) -> dict[str, Any]:
        """Send a ``set`` of ``changes`` through :meth:`JobHandle.set` (checked against the
        job's knobs first, then by rank 0: a refusal raises BadKnob, nothing queued); the
        receipt."""
        asked = _asked(changes)
        with self.handle(job_id) as h:
            receipt = h.set(asked, key=key or new_key())
        return json_safe(scrub(encode(receipt)))

    def entry(self, job_id: str, command_id: str, key: str | None) -> dict[str, Any] | None:
        with self.handle(job_id) as h:
            found = h.entry(command_id, key)
        return json_safe(scrub(encode(found))) if found is not None else None

    # -- logs -------------------------------------------------------------------------
    def logs(self, job_id: str, rank: int | None = None, after: int | None = None, lines: int = LOG_TAIL) -> dict[str, Any]:
        """One rank's log (``rank`` None: the first with one): its last ``lines`` lines, or
        (``after``: an offset a previous answer gave) what came after, at most
        :data:`~forgather_control.core.logs.READ_BYTES` of it. The job is found first as
        every route finds it (JobNotFound, PrivateJob); NoLogs when it has no log (of
        that rank) yet. Lines are printable text (:func:`~forgather_control.core.logs.clean_lines`)."""
        lines = max(1, min(MAX_LOG_TAIL, lines))
        if isinstance(self.source, RaySource):
            return self._ray_logs(job_id, rank, after, lines)
        found = self.source.find(job_id, timeout=self.config.timeout)
        info = found.info
        if info is None:  # a local source always reads the job's folder
            raise NoLogs(f"job {job_id}'s folder is not on this machine")
        with LocalLogs(info.paths).open() as folder:
            ranks = folder.ranks()
        which = _log_rank(found.job_id, ranks, rank)
        text = read_rank(info.paths.root, found.job_id, which, after, lines=lines)
        return _log_answer(found.job_id, ranks, text, ended=info.state.final or info.liveness == Liveness.DEAD)

    def _ray_logs(self, job_id: str, rank: int | None, after: int | None, lines: int) -> dict[str, Any]:
        assert isinstance(self.source, RaySource)
        source = open_logs(job_id, jobs_dir=self.source.jobs_dir, ray=self.source.address, timeout=max(self.config.timeout, 15.0))
        which = 0 if rank is None else rank
        for _ in range(2):
            read = source.read([which], tail=None if after is not None else lines, after={} if after is None else {which: after}, partial=False)
            if read.texts or rank is not None or not read.have or which == read.have[0]:
                break
            which = read.have[0]  # no rank 0 here: the first rank that has a log
        if not read.texts:
            _log_rank(read.job_id, read.have, which)  # says which ranks have one
            raise NoLogs(f"job {read.job_id} has no log of rank {which}" + (f"; {'; '.join(read.notes)}" if read.notes else ""))
        return _log_answer(read.job_id, read.have, read.texts[0], ended=read.ended, notes=read.notes)

    # -- resume -----------------------------------------------------------------------
    def plan_resume(self, job_id: str, from_: str | int | None = None) -> dict[str, Any]:
        """What a resume of the job (``from_``: a step or a checkpoint's path, a roll back)
        would start, checked as ``forgather control resume`` checks it; nothing started.
        A refusal raises NotResumable with the reason."""
        plan = self._prepare(job_id, from_)
        return _resumption(plan)

    def resume(self, job_id: str, from_: str | int | None = None) -> dict[str, Any]:
        """Resume the job (``from_``: a roll back): its launcher started again in the
        background (:meth:`Resumption.start`, detached; under SLURM, submitted), once
        its new run has recorded its start. One resume of a job at a time."""
        with self._lock:
            busy = self._resuming.get(job_id)
            if busy is None:
                busy = self._resuming[job_id] = threading.Lock()
        if not busy.acquire(blocking=False):
            raise NotResumable(f"job {job_id} is being resumed already; wait for that one to start")
        try:
            plan = self._prepare(job_id, from_)
            done = plan.start(detach=True)
        finally:
            busy.release()
        return {**_resumption(plan), **json_safe(done.as_dict())}

    def _prepare(self, job_id: str, from_: str | int | None) -> Resumption:
        if not isinstance(self.source, LocalSource):
            raise NotResumable(
                f"job {job_id}: this page looks across a Ray cluster; a resume starts the job again from its folder: "
                f"run `forgather control resume {job_id}` on the node that holds it"
            )
        # the page's own token is not the job's: a relaunch takes only the secrets a launch would have
        environ = {k: v for k, v in os.environ.items() if k != ENV_UI_TOKEN}
        return prepare(job_id, jobs_dir=self.source.root, from_=from_, environ=environ)

    def close(self) -> None:
        with self._lock:
            for _, h, _ in self._kept.values():
                h.close()
            self._kept.clear()


def _log_rank(job_id: str, ranks: list[int], rank: int | None) -> int:
    """The rank to read: ``rank``, or the first with a log; NoLogs naming those that have one."""
    if not ranks:
        raise NoLogs(f"job {job_id} has no rank's log yet")
    if rank is None:
        return ranks[0]
    if rank not in ranks:
        raise NoLogs(f"job {job_id} has no log of rank {rank}; rank(s) {', '.join(str(r) for r in ranks)} have one")
    return rank


def _log_answer(job_id: str, ranks: list[int], text: LogText, *, ended: bool, notes: list[str] | None = None) -> dict[str, Any]:
    """``GET /api/jobs/<id>/logs``."""
    return {
        "job_id": job_id,
        "ranks": list(ranks),
        "rank": text.rank,
        "host": text.host,
        "lines": list(text.lines),
        "offset": text.offset,
        "skipped": text.skipped,
        "ended": ended,
        "notes": list(notes or []),
    }


def _resumption(plan: Resumption) -> dict[str, Any]:
    """What a resume starts, for the page's question and its answer (no environment)."""
    point = plan.resume_from
    return {
        "job_id": plan.job_id,
        "run": plan.run,
        "how": plan.how,
        "resume_from": point.path if point is not None else None,
        "resume_step": point.step if point is not None else None,
        "left_behind": [{"path": p.path, "step": p.step} for p in plan.left_behind],
        "skipped": [s.describe() for s in plan.skipped],
        "text": plan.describe(),
    }


def _asked(changes: object) -> list[KnobChange]:
    """A set's ``changes`` as the page sent them: ``[{name, value}, ...]``."""
    try:
        return [KnobChange(name=c.name, value=c.value) for c in decode({"changes": changes}, CommandOptions, name="set").changes or []]
    except RecordError as exc:
        raise KnobError(f'{exc}; send changes as [{{"name": "lr_scale", "value": 0.5}}, ...]') from None


class UnknownButton(ControlError):
    """A command the page does not offer."""

    exit_code = 2
