"""A job's metric history: the curves a person looks at, kept small however long it runs.

Rank 0 records what the loop logs (loss, learning rate, grad norm, steps per second, and
each evaluation's metrics) into ``metrics.json`` in the job folder, off the training
thread, and keeps it after the job ends. A series keeps its newest ``DENSE`` points as
they came and, before them, at most as many older ones spread evenly over the steps, so
the file stays a few hundred kilobytes whether the job ran a thousand steps or a
million, and the whole run's shape survives.

Readers (the job server, the CLI, the web page) get the same shape::

    {"version": 1, "job_id": "...", "series": {"loss": {"step": [...], "time": [...], "value": [...]}}}
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from forgather_control.core.files import write_json_atomic
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import MetricHistory, Series, decode, encode, load

__all__ = ["DENSE", "FILENAME", "MAX_SERIES", "History", "read_history"]

FILENAME = "metrics.json"
#: Points each series keeps dense (its newest); the older ones are thinned to as many.
DENSE = 2048
#: At most this many series (a loop that logs a thousand names gets its first 32).
MAX_SERIES = 32
_NAME_MAX = 128
VERSION = 1


class _Series:
    """One curve: the newest ``dense`` points as they came, and before them the older
    ones kept one per ``width`` steps, ``width`` doubling whenever they outgrow ``dense``:
    at most ``2 * dense`` points, spread evenly over every step the job ran."""

    __slots__ = ("old", "steps", "times", "values", "width")

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.times: list[float] = []
        self.values: list[float | None] = []
        self.old = 0  # how many points at the front are the thinned, older part
        self.width = 1

    def add(self, step: int, time: float, value: float | None, dense: int) -> None:
        if self.steps and self.steps[-1] == step:
            self.times[-1], self.values[-1] = time, value
            return
        if self.steps and step < self.steps[-1]:
            return  # a step from the past (a restarted loop): the history keeps order
        self.steps.append(step)
        self.times.append(time)
        self.values.append(value)
        while len(self.steps) - self.old > dense:  # the oldest dense point joins the older part
            i = self.old
            if i == 0 or self.steps[i] >= self.steps[i - 1] + self.width:
                self.old += 1
            else:
                del self.steps[i], self.times[i], self.values[i]
            if self.old > dense:
                self._widen()

    def _widen(self) -> None:
        self.width *= 2
        keep = [0]
        for i in range(1, self.old):
            if self.steps[i] >= self.steps[keep[-1]] + self.width:
                keep.append(i)
        picked = [*keep, *range(self.old, len(self.steps))]
        self.steps[:] = [self.steps[i] for i in picked]
        self.times[:] = [self.times[i] for i in picked]
        self.values[:] = [self.values[i] for i in picked]
        self.old = len(keep)


class History:
    """Bounded series of (step, time, value), safe to append from any thread."""

    def __init__(self, job_id: str, *, dense: int = DENSE) -> None:
        self.job_id = job_id
        self.dense = dense
        self._series: dict[str, _Series] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change: a writer knows when to write

    def record(self, step: int, time: float, values: Mapping[str, object]) -> None:
        """Add one point per numeric value at ``step`` (a value already recorded at this
        step replaces it; a step before the last is ignored)."""
        with self._lock:
            for name, value in values.items():
                number = _number(value)
                if number is _SKIP or not isinstance(name, str) or len(name) > _NAME_MAX:
                    continue
                series = self._series.get(name)
                if series is None:
                    if len(self._series) >= MAX_SERIES:
                        continue
                    series = self._series[name] = _Series()
                series.add(step, time, number, self.dense)
            self.version += 1

    def as_record(self, since: int | None = None) -> MetricHistory:
        """The history as its record, only points after ``since`` when given."""
        with self._lock:
            out = {}
            for name, s in self._series.items():
                start = 0 if since is None else _first_after(s.steps, since)
                out[name] = Series(step=s.steps[start:], time=s.times[start:], value=s.values[start:])
        return MetricHistory(version=VERSION, job_id=self.job_id, series=out)

    def write(self, path: Path) -> None:
        write_json_atomic(path, encode(self.as_record()))

    @classmethod
    def from_record(cls, data: MetricHistory, *, dense: int = DENSE) -> History:
        """A history continued from a checked record (a restarted run keeps its curves)."""
        history = cls(data.job_id, dense=dense)
        for name, points in data.series.items():
            series = history._series[name] = _Series()
            for step, time, value in zip(points.step, points.time, points.value, strict=True):
                series.add(step, time, value, dense)
        return history


def _first_after(steps: list[int], since: int) -> int:
    lo, hi = 0, len(steps)
    while lo < hi:
        mid = (lo + hi) // 2
        if steps[mid] <= since:
            lo = mid + 1
        else:
            hi = mid
    return lo


_SKIP = object()


def _number(value: Any) -> Any:
    """A value a curve can show: a finite number, or None for NaN and infinities (a
    diverging loss is worth a gap in the curve); anything else is skipped."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return _SKIP
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _SKIP
    return float(value) if math.isfinite(value) else None


def read_history(paths: JobPaths, since: int | None = None) -> MetricHistory:
    """A job's recorded history (empty when it has none), checked like any record:
    raises RecordError when the file is there but is not a history."""
    found = load(paths.dir / FILENAME, MetricHistory, max_bytes=16 << 20)
    if found is None:
        return MetricHistory(version=VERSION, job_id=paths.job_id)
    return MetricHistory(version=VERSION, job_id=paths.job_id, series=found.series).since(since)


def check_history(raw: object, *, name: str, job_id: str, since: int | None = None) -> MetricHistory:
    """A history read from a server, checked: series of steps (ascending integers),
    times and values (finite numbers or null) of one length."""
    found = decode(raw, MetricHistory, name=name)
    return MetricHistory(version=VERSION, job_id=job_id, series=found.series).since(since)
