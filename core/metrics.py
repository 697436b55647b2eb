"""A job's metric history: the curves a person looks at, kept small however long it runs.

Rank 0 records what the loop logs (loss, learning rate, grad norm, steps per second, and
each evaluation's metrics) into ``metrics.json`` in the job folder, off the training
thread, and keeps it after the job ends. A series keeps its newest ``DENSE`` points as
they came and, before them, at most as many older ones spread evenly over the steps, so
the file stays a few hundred kilobytes whether the job ran a thousand steps or a
million, and the whole run's shape survives.

Readers (the job server, the CLI, the web page) get the same shape::

    {"version": 1, "job_id": "...", "series": {"loss": {"step": [...], "time": [...], "value": [...]}}}

A reader that draws a history (the web page) shows its :func:`view`: at most
``VIEW_POINTS`` points a series, the extremes kept, whoever wrote the file and however long.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from forgather_control.core.files import write_json_atomic
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import Mark, MetricHistory, Series, decode, encode, load

__all__ = ["DENSE", "FILENAME", "MAX_BYTES", "MAX_MARKS", "MAX_SERIES", "VIEW_POINTS", "History", "check_history", "downsample", "read_history", "view"]

FILENAME = "metrics.json"
#: Points each series keeps dense (its newest); the older ones are thinned to as many.
DENSE = 2048
#: At most this many series (a loop that logs a thousand names gets its first 32).
MAX_SERIES = 32
#: The most points a series of a :func:`view` holds: as many as a series of this writer's
#: ever does (``2 * DENSE``), so only a history another writer made is thinned.
VIEW_POINTS = 2 * DENSE
#: The marks kept (knob changes drawn on the charts): the newest this many.
MAX_MARKS = 256
#: The largest metrics.json read (this writer's, 32 series of 4,096 points at most, stays
#: under 8 MiB): a larger one is refused unread.
MAX_BYTES = 16 << 20
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
        self._marks: list[Mark] = []
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

    def mark(self, mark: Mark) -> None:
        """Add a mark (a knob change) to draw at its step; the newest MAX_MARKS stay."""
        with self._lock:
            self._marks.append(mark)
            del self._marks[:-MAX_MARKS]
            self.version += 1

    def as_record(self, since: int | None = None) -> MetricHistory:
        """The history as its record, only points (and marks) after ``since`` when given."""
        with self._lock:
            out = {}
            for name, s in self._series.items():
                start = 0 if since is None else _first_after(s.steps, since)
                out[name] = Series(step=s.steps[start:], time=s.times[start:], value=s.values[start:])
            marks = [m for m in self._marks if since is None or m.step > since]
        return MetricHistory(version=VERSION, job_id=self.job_id, series=out, marks=marks)

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
        history._marks = list(data.marks[-MAX_MARKS:])
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
    found = load(paths.dir / FILENAME, MetricHistory, max_bytes=MAX_BYTES)
    if found is None:
        return MetricHistory(version=VERSION, job_id=paths.job_id)
    return MetricHistory(version=VERSION, job_id=paths.job_id, series=found.series, marks=found.marks).since(since)


def check_history(raw: object, *, name: str, job_id: str, since: int | None = None) -> MetricHistory:
    """A history read from a server, checked: series of steps (ascending integers),
    times and values (finite numbers or null) of one length."""
    found = decode(raw, MetricHistory, name=name)
    return MetricHistory(version=VERSION, job_id=job_id, series=found.series, marks=found.marks).since(since)


def view(history: MetricHistory, since: int | None = None, points: int = VIEW_POINTS) -> MetricHistory:
    """What a reader draws of ``history``: each series' points after ``since`` (all of
    them for None) through :func:`downsample`, at most ``points`` a series. Its cost is
    linear in the points given (read from a file: at most ``MAX_BYTES`` of it)."""
    found = history.since(since)
    return MetricHistory(version=found.version, job_id=found.job_id, series={k: downsample(s, points) for k, s in found.series.items()}, marks=found.marks)


def downsample(series: Series, points: int = VIEW_POINTS) -> Series:
    """``series`` in at most ``points`` points (itself when it has no more): its first
    and last point, and between them, cut into ``(points - 2) // 2`` runs of consecutive
    points, each run's lowest and highest point (one when they are one; a run with no
    number keeps its first point, a gap). A spike or a dip anywhere stays in the view."""
    n = len(series.step)
    if points < 4:
        raise ValueError(f"a view holds at least 4 points a series, not {points}")
    if n <= points:
        return series
    runs = (points - 2) // 2
    values = series.value
    keep = [0]
    for r in range(runs):
        lo, hi = 1 + r * (n - 2) // runs, 1 + (r + 1) * (n - 2) // runs
        run = values[lo:hi]
        if None in run:
            numbers = [(v, i) for i, v in enumerate(run) if v is not None]
            if not numbers:
                keep.append(lo)
                continue
            low, high = min(numbers)[1], max(numbers, key=lambda p: (p[0], -p[1]))[1]
        else:
            low, high = run.index(min(run)), run.index(max(run))  # type: ignore[type-var]
        keep.extend(sorted({lo + low, lo + high}))
    keep.append(n - 1)
    return Series(step=[series.step[i] for i in keep], time=[series.time[i] for i in keep], value=[values[i] for i in keep])
