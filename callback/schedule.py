"""When the ranks of a job check for commands next.

Rank 0 picks the next check step and it travels in the agreed tensor, so every rank
knows it in advance and the steps between checks cost one comparison. The pick follows
the measured step time: a check about once per ``interval`` seconds.

The interval itself follows from measured costs unless a person fixed it
(``check_interval``): each check carries the slowest rank's mean time in control a check,
and rank 0 spaces checks so that this is ``CHECK_SHARE`` of the time between them
(:func:`interval_for`), never closer than ``FASTEST`` (a command then applies within
about a tenth of a second; closer checks buy nothing a person notices). A command should
apply within half a second (issue 24) and waits up to one interval for the next check,
so the interval stays within ``LATENCY_INTERVAL`` as long as the checks then cost at most
``MAX_SHARE``; a dearer check (many ranks, busy cores) is spaced out instead of slowing
training, never further than ``SLOWEST``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = [
    "CHECK_SHARE",
    "FASTEST",
    "GAP_GROWTH",
    "LAG_TIME",
    "LAG_WAIT",
    "LATENCY_INTERVAL",
    "MAX_GAP",
    "MAX_LAG",
    "MAX_SHARE",
    "NEVER",
    "SLOWEST",
    "CheckSchedule",
    "interval_for",
    "next_lag",
]

#: A next check that the step counter never reaches (a process alone, or no agreement).
NEVER = 1 << 62
#: The gap between checks is at most this many steps ...
MAX_GAP = 100_000
#: ... and grows at most this factor per check: one fast step after a slow stretch (a
#: save, an evaluation) must not push the next check minutes away.
GAP_GROWTH = 4
#: The share of training time the checks take when they are cheap, by their measured
#: cost (issue 24's budget is 0.3% in all, and the ranks' counts leave some out: the
#: steps between checks, with their caches cold after a training step, about 3 us each
#: at 10 ms steps, 0.03%) ...
CHECK_SHARE = 0.001
#: The closest and furthest checks are apart when the interval follows the cost (seconds).
FASTEST = 0.1
SLOWEST = 2.0
#: ... while a command waits up to an interval for its check, then the lag and its
#: step (about 60 ms in all at 10 ms steps): checks at most this far apart apply it
#: within a third of a second, within a quarter on average (issue 24: 0.5 s and 0.25 s) ...
LATENCY_INTERVAL = 0.25
#: ... as long as they then cost at most this share: a check of 0.5 ms comes every 0.25
#: s, one of 1 ms every 0.5 s (where a command waits longer: the budget comes first).
MAX_SHARE = 0.002
#: The interval follows the mean cost of this many recent checks (each rank's own, the
#: slowest rank's counts: :meth:`CheckSchedule.own`): a share is a mean, and
#: the checks that stall recur (here about one in fifteen waits ~4 ms in gloo as it is
#: issued, right after the loop's own collective); a median left them out and the share
#: came out twice the target ...
COST_WINDOW = 32
#: ... each counted at most this long (seconds), so that one anomaly (a debugger, a
#: swapped-out page) does not space out the next minute of checks: any cost above
#: MAX_SHARE * SLOWEST already means the slowest interval.
COST_CAP = 4 * MAX_SHARE * SLOWEST


#: A started check whose answer was not in when its resolution step came (a wait longer
#: than this, seconds) asks for one more step of lag, up to MAX_LAG; a check that was in
#: long before (a tenth of it) for one less ...
LAG_WAIT = 0.0005
MAX_LAG = 16
#: ... but the lag spans at most this long in steps, or as long as the collective took
#: (and at least one step): every step of lag is a step later that a command applies,
#: while a short wait is a cost the interval already pays for (a check's cost includes
#: its wait). Under load a wait is common, and a lag counted in steps alone grew to 16
#: slow steps: half a second of a command's latency. At thousands of ranks the
#: collective itself takes tenths of a second, and the lag grows to hide it.
LAG_TIME = 0.05


def next_lag(lag: int, waited: float, per_step: float | None, took: float = 0.0) -> int:
    """The lag rank 0 asks for after a check resolved with a wait of ``waited`` seconds,
    its collective having taken ``took`` seconds from its start, at ``per_step`` seconds a
    step (None: not measured yet)."""
    span = max(LAG_TIME, took)
    most = MAX_LAG if not per_step or per_step <= 0 else max(1, min(MAX_LAG, int(span / per_step)))
    if waited > LAG_WAIT:
        lag += 1
    elif waited < LAG_WAIT / 10:
        lag -= 1
    return max(1, min(lag, most))


def interval_for(
    cost: float, *, share: float = CHECK_SHARE, fastest: float = FASTEST, slowest: float = SLOWEST, latency: float = LATENCY_INTERVAL, most: float = MAX_SHARE
) -> float:
    """Seconds between checks that each cost ``cost`` seconds of the slowest rank's time:
    ``cost / share``, but no more than ``latency`` while the checks then cost at most
    ``most`` of the time, within [fastest, slowest]."""
    return min(slowest, max(fastest, min(cost / share, max(latency, cost / most))))


class CheckSchedule:
    """Rank 0's choice of the next agreed check, from the time the last gap took.

    ``clock`` is injectable (seconds, monotonic) so the cadence can be tested by moving
    time by hand instead of patching the process's clock.
    """

    def __init__(self, interval: float | None = 1.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        #: None: the interval follows the measured cost of the checks (:meth:`cost`)
        self.fixed = interval is not None
        self.interval = float(interval) if interval is not None else FASTEST
        self._costs: deque[float] = deque(maxlen=COST_WINDOW)
        self._clock = clock
        self._last_step = 0
        self._last_time: float | None = None  # None: no check timed yet
        #: seconds a step, as the last gap between checks measured it (None: not yet)
        self.per_step: float | None = None

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
            per_step = self.per_step = (now - last_time) / prev_gap
            gap = int(self.interval / per_step) if per_step > 0 else prev_gap * GAP_GROWTH
            nxt = step + max(1, min(gap, prev_gap * GAP_GROWTH, MAX_GAP))
        if max_steps and step < max_steps < nxt:
            nxt = max_steps
        return nxt

    def own(self, seconds: float) -> float:
        """What this rank sends as a check's cost: ``seconds`` it spent in control since its
        last proposal, counted (at most COST_CAP) into the mean of its last COST_WINDOW.
        MAX then hands rank 0 the slowest rank's mean. The mean of each check's slowest
        rank would count the stall of a different rank at each check as one rank's: at 8
        ranks on 2 cores, twice any rank's own share (spaced by it, the checks cost 0.15%
        where 0.2% was meant)."""
        self._costs.append(min(max(0.0, seconds), COST_CAP))
        return sum(self._costs) / len(self._costs)

    def cost(self, seconds: float) -> None:
        """The slowest rank's mean cost of a check (:meth:`own`, through MAX): the
        interval follows, unless it was fixed."""
        if not self.fixed:
            self.interval = interval_for(max(0.0, seconds))
