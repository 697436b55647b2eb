"""Has this run got control attached yet? The launcher's watch, and what it says.

Control is attached once rank 0 publishes this run's status (:func:`published`). After
``--no-control-after`` seconds without it the launcher warns once (naming what to add)
and records ``no_control_since`` in job.json, which ``list``, ``status`` and the web page
show as ``uncontrolled``; from then a stop signal goes to the workers at once (nobody can
save, and waiting ``--grace`` for a save only delays the end). Before that, a script may
still be loading its model: the signal becomes a save_and_stop in the inbox, as for a
job with control, which its Controller takes when it starts. When rank 0 publishes after
all, the record is cleared and the launcher says so.

Until rank 0 reports this run's first finished step the run has nothing to save
(:func:`~forgather_control.core.attachment.nothing_to_save`): a stop signal then ends it
at once, outcome ``stopped``, "nothing to save yet", instead of waiting ``--grace`` for a
Controller or a first step that may come only after it.

:class:`AttachWatch` is the decision, pure (the caller passes its clock's ``now``);
:class:`ControlAttach` reads status.json, writes job.json and logs around it.
"""

from __future__ import annotations

import enum
import logging
import signal
import time
from collections.abc import Callable

from forgather_control.core.attachment import ADD_CONTROL, no_control_why, nothing_to_save, published
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import Status, load_or_none

log = logging.getLogger(__name__)

__all__ = ["AttachWatch", "Change", "ControlAttach", "passed_on_reason"]


class Change(enum.Enum):
    """What a look found that is news."""

    #: rank 0 published before the threshold: nothing was ever said
    ATTACHED = "attached"
    #: the threshold passed without it: say so, once
    MISSING = "missing"
    #: rank 0 published after the warning: take it back
    CLEARED = "cleared"


class AttachWatch:
    """Attached, not yet, warn once, cleared: from whether this run's status is
    published and the caller's monotonic ``now``. Once attached, a run stays attached
    (a status.json rewritten or removed later does not undo a step taken under control)."""

    def __init__(self, *, after: float, started: float) -> None:
        self.after = after
        self.started = started
        self.attached = False
        self.warned = False

    def look(self, is_published: bool, now: float) -> Change | None:
        if self.attached:
            return None
        if is_published:
            self.attached = True
            return Change.CLEARED if self.warned else Change.ATTACHED
        if not self.warned and now - self.started >= self.after:
            self.warned = True
            return Change.MISSING
        return None

    @property
    def missing(self) -> bool:
        """Warned, and not attached since."""
        return self.warned and not self.attached


class ControlAttach:
    """The watch over this node's launcher's records. ``record(**fields)`` updates
    job.json (node 0; a no-op elsewhere); every node's launcher warns in its own log."""

    def __init__(
        self,
        paths: JobPaths,
        *,
        run: int,
        after: float,
        record: Callable[..., None],
        clock: Callable[[], float] = time.monotonic,
        interval: float = 1.0,
    ) -> None:
        self.paths = paths
        self.run = run
        self.record = record
        self.clock = clock
        self.interval = interval
        self.watch = AttachWatch(after=after, started=clock())
        self._last: float | None = None

    def _record(self, **fields: object) -> None:
        try:
            self.record(**fields)
        except Exception:
            log.exception("could not record whether control is attached; the job runs on")

    def tick(self) -> None:
        """One look per ``interval`` from the supervising loop; never raises into it."""
        if self.watch.attached:
            return
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        self._look(now)

    def may_save_now(self) -> bool:
        """May a stop signal ask for a save (read now: a signal arrived)? Yes unless the
        job has been judged uncontrolled (``--no-control-after`` passed with no control):
        a script still loading its model starts its Controller later and takes the
        save_and_stop waiting in its inbox, so a preempted job that was still loading
        stops saved (75) and is requeued. Records that cannot be read count as yes: the
        save path loses nothing, bounded by the grace."""
        if not self.watch.attached:
            self._look(self.clock())
        return not self.watch.missing

    def nothing_to_save_now(self) -> bool:
        """Has this run nothing to save yet (read now: a signal arrived)? Records that
        cannot be read count as no, and so does a status.json gone with the job's folder
        (removed while the job trains), or after this run's rank 0 had published: the
        save path loses nothing, bounded by the grace."""
        try:
            status = load_or_none(self.paths.status, Status)
            if status is None and (self.watch.attached or not self.paths.inbox.is_dir()):
                return False
        except Exception:
            log.exception("could not read %s to tell whether the run has anything to save", self.paths.status)
            return False
        return nothing_to_save(status, self.run)

    def _look(self, now: float) -> bool:
        """Look at this run's status and say what changed; False when it could not be read."""
        try:
            status = load_or_none(self.paths.status, Status)
        except Exception:
            log.exception("could not read %s to tell whether control is attached", self.paths.status)
            return False
        change = self.watch.look(published(status, self.run), now)
        if change is Change.MISSING:
            # the record first, then the message: whoever reads the message finds the record written
            self._record(no_control_since=time.time())
            log.warning(
                "%s (job %s). Until it does, `forgather control` commands wait in its inbox and a stop signal "
                "ends the workers without saving. To attach control: %s. If the script is still loading, "
                "this clears itself when its Controller starts",
                no_control_why(self.watch.after),
                self.paths.job_id,
                ADD_CONTROL,
            )
        elif change is Change.CLEARED:
            self._record(no_control_since=None)
            log.warning("control attached after all: rank 0 published job %s's status", self.paths.job_id)
        return True


def passed_on_reason(signum: int, *, control: bool) -> str:
    """Why a stop signal went straight to the workers and nothing was saved (job.json
    ``reason``, status.json ``error``, the launcher's last line)."""
    name = signal.Signals(signum).name
    if not control:
        return f"{name} stopped the workers at once: the job runs without control (--no-control), so no save was possible"
    return (
        f"{name} reached the launcher of a job with no control attached in this run (rank 0 had not started a Controller): "
        f"it went to the workers at once, so no save was possible. To attach control: {ADD_CONTROL}"
    )
