"""Is training stuck? Rank 0's I/O round tells from the step, never from ``step()``.

A hang (a rank waiting in a collective for another stuck in a data loader, a deadlock,
a dead peer) leaves the step where it is while every process still runs. The I/O round
(in the rank's control thread) notes when it last saw the step move; when that is longer
ago than the stall threshold, the status says so, with what rank 0 itself is doing: waiting in the agreement
collective (so another rank has not arrived), or in the training code. All times are
rank 0's own clock, so a reader on a host whose clock is off still reads them right.

The threshold adapts to the job: a generous multiple of the recent time per step, never
below a floor of minutes (a slow evaluation or checkpoint save of the trainer's own is
not a stall), unless set (``FORGATHER_STALL_AFTER``). A save or an evaluation the
control plane commanded is a known long phase, not a stall, up to a long cap.
"""

from __future__ import annotations

import enum
import threading
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from forgather_control.core.records import Stall

__all__ = ["FLOOR", "MULTIPLE", "Phase", "Progress", "StallWatch"]

#: The least time without a step that counts as a stall (seconds).
FLOOR = 300.0
#: ... and at least this many times the recent time per step.
MULTIPLE = 20.0
#: A commanded save or evaluation may take this long before it too is called a stall.
LONG_PHASE = 3600.0


class Phase(str, enum.Enum):
    """What rank 0's training thread is doing, as far as the control plane knows."""

    TRAINING = "training"  # in the loop's own code (between two steps)
    AGREEMENT = "agreement"  # in the agreement all-reduce: waiting for the other ranks
    SAVE = "save"  # a commanded save
    EVAL = "eval"  # a commanded evaluation

    def __str__(self) -> str:
        return self.value


class Progress(NamedTuple):
    """What one look says for the status: the phase, when the step last moved (rank 0's
    clock), and the stall when it has stood still past the threshold."""

    phase: str
    progress_at: float
    stall: Stall | None = None


class StallWatch:
    """When the step last moved, and whether that is a stall. ``observe`` is called by
    the I/O round (and the HTTP thread), with its own clock's time."""

    def __init__(self, *, stall_after: float | None = None) -> None:
        self.stall_after = stall_after
        self._step: int | None = None
        self._moved_at: float | None = None
        self._lock = threading.Lock()

    def threshold(self, steps_per_second: float | None) -> float:
        if self.stall_after is not None:
            return self.stall_after
        if steps_per_second:
            return max(FLOOR, MULTIPLE / steps_per_second)
        return FLOOR

    def observe(self, step: int, now: float, *, steps_per_second: float | None, phase: Phase) -> Progress:
        """This look: when the step last moved, and a ``stall`` record when it has not
        moved for longer than the threshold."""
        with self._lock:
            if step != self._step or self._moved_at is None:
                self._step, self._moved_at = step, now
            moved_at = self._moved_at
        still = now - moved_at
        after = self.threshold(steps_per_second)
        if phase in (Phase.SAVE, Phase.EVAL):
            after = max(after, LONG_PHASE)
        if still <= after:
            return Progress(phase.value, moved_at, None)
        from forgather_control.core.records import Stall  # here: only rank 0 writes a status (issue 24)

        stall = Stall(for_=round(still, 1), after=after, step=step, phase=phase.value)
        return Progress(phase.value, moved_at, stall)
