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

import itertools
import math
import threading
from pathlib import Path
from typing import Any

from forgather_control.core.files import RecordError, read_record, write_json_atomic
from forgather_control.core.jobs import JobPaths

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
        rest = range(self.old, len(self.steps))
        for column in (self.steps, self.times, self.values):
            column[:] = [column[i] for i in keep] + [column[i] for i in rest]
        self.old = len(keep)


class History:
    """Bounded series of (step, time, value), safe to append from any thread."""

    def __init__(self, job_id: str, *, dense: int = DENSE) -> None:
        self.job_id = job_id
        self.dense = dense
        self._series: dict[str, _Series] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change: a writer knows when to write

    def record(self, step: int, time: float, values: dict[str, Any]) -> None:
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

    def as_record(self, since: int | None = None) -> dict[str, Any]:
        """The history as JSON-ready data, only points after ``since`` when given."""
        with self._lock:
            out = {}
            for name, s in self._series.items():
                start = 0 if since is None else _first_after(s.steps, since)
                out[name] = {"step": s.steps[start:], "time": s.times[start:], "value": s.values[start:]}
        return {"version": VERSION, "job_id": self.job_id, "series": out}

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.as_record())

    @classmethod
    def from_record(cls, data: dict[str, Any], *, dense: int = DENSE) -> History:
        """A history continued from a checked record (a restarted run keeps its curves)."""
        history = cls(str(data.get("job_id") or ""), dense=dense)
        for name, points in data.get("series", {}).items():
            series = history._series[name] = _Series()
            for step, time, value in zip(points["step"], points["time"], points["value"], strict=True):
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


def read_history(paths: JobPaths, since: int | None = None) -> dict[str, Any]:
    """A job's recorded history (empty when it has none), checked like any record:
    raises RecordError when the file is there but is not a history."""
    raw = read_record(paths.dir / FILENAME, max_bytes=16 << 20)
    if raw is None:
        return {"version": VERSION, "job_id": paths.job_id, "series": {}}
    return check_history(raw, name=str(paths.dir / FILENAME), job_id=paths.job_id, since=since)


def check_history(raw: dict[str, Any], *, name: str, job_id: str, since: int | None = None) -> dict[str, Any]:
    """A history read from a file or a server, checked: series of steps (ascending
    integers), times and values (finite numbers or null) of one length."""
    series = raw.get("series")
    if not isinstance(series, dict) or len(series) > MAX_SERIES * 2:
        raise RecordError(f"{name}: 'series' must be an object of at most {MAX_SERIES * 2} series")
    out: dict[str, Any] = {}
    for key, points in series.items():
        if not isinstance(key, str) or len(key) > _NAME_MAX or not isinstance(points, dict):
            raise RecordError(f"{name}: series {key!r} is not a series")
        steps, times, vals = points.get("step"), points.get("time"), points.get("value")
        if not (isinstance(steps, list) and isinstance(times, list) and isinstance(vals, list) and len(steps) == len(times) == len(vals)):
            raise RecordError(f"{name}: series {key!r} must have step, time and value lists of one length")
        ok = all(isinstance(s, int) and not isinstance(s, bool) for s in steps) and all(a < b for a, b in itertools.pairwise(steps))
        ok = ok and all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in times)
        ok = ok and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)) for v in vals)
        if not ok:
            raise RecordError(f"{name}: series {key!r} holds something that is not a point (or steps out of order)")
        start = 0 if since is None else _first_after(steps, since)
        out[key] = {"step": steps[start:], "time": times[start:], "value": vals[start:]}
    return {"version": VERSION, "job_id": job_id, "series": out}
