"""What the status says about training's progress: its metrics and its speed.

Both are read from the I/O and HTTP threads while the training thread runs, and both
end up in JSON that other programs parse, so they take whatever the loop hands over
(tensors, numpy scalars, NaN) and never fail on it.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forgather_control.core.records import Metrics

__all__ = ["StepRate", "json_metrics"]

#: At most this many metrics, and this many characters of a string one, reach the status.
MAX_METRICS = 64
MAX_TEXT = 200


def json_metrics(metrics: Any) -> Metrics:
    """The loop's metrics as plain JSON values: tensors and numpy scalars become numbers,
    a non-finite float its name ("nan", "inf"); anything else is left out."""
    out: Metrics = {}
    if not isinstance(metrics, dict):
        return out
    for k, v in list(metrics.items())[:MAX_METRICS]:
        try:
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, bool) or v is None:
                out[str(k)] = v
            elif isinstance(v, str):
                out[str(k)] = v[:MAX_TEXT]
            elif isinstance(v, (int, float)):
                out[str(k)] = v if math.isfinite(v) else str(v)
        except Exception:  # noqa: BLE001 - a metric is the user's object; skip what will not convert
            continue
    return out


class StepRate:
    """Steps per second, measured over at least ``window`` seconds and smoothed, so a
    status read twice in a row does not divide by a few microseconds.

    Only steps this run made count: nothing is measured while the step is still the one
    the run started at (``start``: 0, or the resumed checkpoint's step), so a resumed
    loop's first report (step 908 after a status that said 0) is a starting point, not
    908 steps in a second."""

    def __init__(self, window: float = 1.0, *, start: int = 0) -> None:
        self.window = window
        self._start: int | None = start
        self._rate: float | None = None
        self._sample: tuple[int, float] | None = None  # (step, time) the rate counts from
        self._lock = threading.Lock()  # the I/O and HTTP threads both ask

    def update(self, step: int, now: float) -> float | None:
        """The rate at ``step`` seen at time ``now``; None until one window has passed.
        A step below the last sample (a restart of the count) starts measuring again."""
        with self._lock:
            if self._start is not None:
                if step == self._start:
                    return None  # the loop has not reported a step of this run yet
                self._start = None
            sample = self._sample
            if sample is None or step < sample[0]:
                self._sample = (step, now)
                return self._rate
            dt = now - sample[1]
            if dt >= self.window:
                inst = (step - sample[0]) / dt
                self._rate = inst if self._rate is None else 0.5 * self._rate + 0.5 * inst
                self._sample = (step, now)
            return self._rate
