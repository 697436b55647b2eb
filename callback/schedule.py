"""When the ranks of a job check for commands next.

Rank 0 picks the next check step and it travels in the agreed tensor, so every rank
knows it in advance and the steps between checks cost one comparison. The pick follows
the measured step time: a check about once per ``interval`` seconds keeps the
all-reduce well under 1% of training, while a command still applies within a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["GAP_GROWTH", "MAX_GAP", "NEVER", "CheckSchedule"]

#: A next check that the step counter never reaches (a process alone, or no agreement).
NEVER = 1 << 62
#: The gap between checks is at most this many steps ...
MAX_GAP = 100_000
#: ... and grows at most this factor per check: one fast step after a slow stretch (a
#: save, an evaluation) must not push the next check minutes away.
GAP_GROWTH = 4


class CheckSchedule:
    """Rank 0's choice of the next agreed check, from the time the last gap took.

    ``clock`` is injectable (seconds, monotonic) so the cadence can be tested by moving
    time by hand instead of patching the process's clock.
    """

    def __init__(self, interval: float = 1.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = float(interval)
        self._clock = clock
        self._last_step = 0
        self._last_time: float | None = None  # None: no check timed yet

    def next_check(self, step: int, max_steps: int | None = None) -> int:
        """The step of the check after the one at ``step``: at most one check per step,
        about one per ``interval``; ``max_steps`` (when known and still ahead) is always
        a check, so a command that arrives near the end still applies."""
        now = self._clock()
        last_step, last_time = self._last_step, self._last_time
        self._last_step, self._last_time = step, now
        if last_time is None or step <= last_step:
            nxt = step + 1
        else:
            prev_gap = step - last_step
            per_step = (now - last_time) / prev_gap
            gap = int(self.interval / per_step) if per_step > 0 else prev_gap * GAP_GROWTH
            nxt = step + max(1, min(gap, prev_gap * GAP_GROWTH, MAX_GAP))
        if max_steps and step < max_steps < nxt:
            nxt = max_steps
        return nxt
