"""One job for the page: its details, its metric history, and its commands, through the
same calls as ``forgather control status`` and ``save``/``eval``/``stop``/``save-stop``/
``abort``/``set`` (:func:`~forgather_control.client.lookup.open_job`, :class:`JobHandle`).

A ``set`` from the knob panel goes through :meth:`JobHandle.set`, as ``forgather control
set`` does: checked against the knobs the job's status shows
(:func:`~forgather_control.core.knobs.check_changes`, the rule rank 0 applies again), so
a refused change is never sent and its message is the page's answer. The panel asks
first what a change would do (:meth:`JobView.check_knobs`: the same check, old -> new).

A job in a folder is opened afresh for each request (milliseconds: its records are read
and judged again, and the channel is chosen again, so a job whose server has come up
since is reached over HTTP). A Ray job costs a round of the cluster to find, so its
handle is kept for a while.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from forgather_control.client.handle import JobHandle
from forgather_control.client.sources import JobSource
from forgather_control.core.commands import PLAIN_VERBS, Command, UnknownCommand, new_key, parse_command
from forgather_control.core.errors import ControlError, JobEnded, Unreachable
from forgather_control.core.files import RecordError
from forgather_control.core.knobs import KnobError, check_changes, describe
from forgather_control.core.metrics import VIEW_POINTS, view
from forgather_control.core.records import CommandOptions, JobDetails, KnobChange, MetricHistory, Text, decode, encode
from forgather_control.core.safe import json_safe, scrub

from .config import UiConfig

#: The page's buttons send the CLI's verbs (their labels and questions are in
#: static/js/job.js); one table, so a verb added to the CLI is a button the server takes.
BUTTONS: dict[str, Command] = PLAIN_VERBS
#: Seconds a Ray job's handle is kept before the cluster is asked again.
KEEP_RAY_HANDLE = 30.0


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

    def close(self) -> None:
        with self._lock:
            for _, h, _ in self._kept.values():
                h.close()
            self._kept.clear()


def _asked(changes: object) -> list[KnobChange]:
    """A set's ``changes`` as the page sent them: ``[{name, value}, ...]``."""
    try:
        return [KnobChange(name=c.name, value=c.value) for c in decode({"changes": changes}, CommandOptions, name="set").changes or []]
    except RecordError as exc:
        raise KnobError(f'{exc}; send changes as [{{"name": "lr_scale", "value": 0.5}}, ...]') from None


class UnknownButton(ControlError):
    """A command the page does not offer."""

    exit_code = 2
