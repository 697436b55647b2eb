"""Rank 0's metric history, recorded from the I/O round, never from ``step()``.

The training thread only leaves its latest metrics in an attribute (what it always
did); the I/O round (in the rank's control thread) samples them at each tick (twice a second by default),
together with the step and the steps per second, and writes ``metrics.json`` every few
seconds when something was added. An evaluation's metrics are recorded when the loop
reports them (rare, and already off the hot path). So recording costs ``step()`` nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from forgather_control.core.files import RecordError
from forgather_control.core.jobs import JobPaths
from forgather_control.core.metrics import FILENAME, History, read_history
from forgather_control.core.records import Metrics
from forgather_control.core.vanished import folder_gone

log = logging.getLogger(__name__)

__all__ = ["WRITE_EVERY", "HistoryRecorder", "load_or_new"]

#: Seconds between writes of metrics.json (at most; only when it changed).
WRITE_EVERY = 5.0

Sample = Callable[[], "tuple[int, Metrics] | None"]


def load_or_new(paths: JobPaths, *, continued: bool) -> History:
    """The job's history to add to: the earlier runs' curves when this run continues
    them (it resumed from a checkpoint), else a fresh one."""
    if continued:
        try:
            return History.from_record(read_history(paths))
        except RecordError as exc:
            log.warning("forgather control: starting a new metric history: %s", exc)
    return History(paths.job_id)


class HistoryRecorder:
    """Samples ``sample()`` (the step and the loop's latest metrics) into ``history`` and
    writes it at most every ``write_every`` seconds; ``tick`` never raises."""

    def __init__(self, paths: JobPaths, history: History, sample: Sample, *, write_every: float = WRITE_EVERY, clock: Callable[[], float] = time.time) -> None:
        self.paths = paths
        self.history = history
        self.sample = sample
        self.write_every = write_every
        self._clock = clock
        self._written = -1
        self._last_write = 0.0
        self._last_step: int | None = None

    def tick(self) -> None:
        try:
            now = self._clock()
            taken = self.sample()
            if taken is not None:
                step, metrics = taken
                if step != self._last_step and step > 0:
                    self._last_step = step
                    self.history.record(step, now, metrics)
            if self.history.version != self._written and now - self._last_write >= self.write_every:
                self.flush()
        except Exception as exc:  # the I/O round goes on; the curves are not worth a training run
            if not folder_gone(self.paths.dir, exc, log):
                log.exception("forgather control: could not record the metric history")

    def flush(self) -> None:
        """Write metrics.json now if anything was added since the last write."""
        version = self.history.version
        if version == self._written:
            return
        self.history.write(self.paths.dir / FILENAME)
        self._written, self._last_write = version, self._clock()
