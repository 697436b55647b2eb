"""A job's checkpoints across its runs, and the one a restarted run resumes from.

Each run's rank 0 reports the newest checkpoint every rank has finished writing
(status.json ``resume_point``). The launcher keeps those in job.json ``checkpoints``,
oldest first, across any number of runs, crashes and requeues: a run that saves nothing
inherits what the runs before it saved, and a record rewritten at the start of a run
carries the history forward instead of dropping it.

A checkpoint can vanish (a user deletes it, a retention policy prunes it): resume takes
the newest one that still exists, and says which newer ones it skipped. Pure functions
over records; the file system is asked only through the injected ``exists``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_KEPT", "Checkpoint", "choose", "history"]

#: Checkpoints kept in job.json; older ones are forgotten (not deleted from disk).
MAX_KEPT = 20
_MAX_PATH = 4096


@dataclass(frozen=True)
class Checkpoint:
    """One completed checkpoint: where, at which step, in which run of the job."""

    path: str
    step: int | None = None
    run: int = 0
    saved_at: float | None = None

    @classmethod
    def parse(cls, raw: object, *, run: int | None = None) -> Checkpoint | None:
        """A checkpoint from a record's field (a dict, or a bare path from older
        records); None for anything that is not one (paths are absolute: a relative one
        means nothing to a relaunch in another folder). ``run`` fills a missing run."""
        if isinstance(raw, str):
            raw = {"path": raw}
        if not isinstance(raw, dict):
            return None
        path = raw.get("path")
        if not isinstance(path, str) or not os.path.isabs(path) or len(path) > _MAX_PATH or "\x00" in path:
            return None
        step, saved_at, ran = raw.get("step"), raw.get("saved_at"), raw.get("run", run)
        return cls(
            path=path,
            step=step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None,
            run=ran if isinstance(ran, int) and not isinstance(ran, bool) and ran >= 0 else 0,
            saved_at=float(saved_at) if isinstance(saved_at, (int, float)) and not isinstance(saved_at, bool) and math.isfinite(saved_at) else None,
        )

    def as_record(self) -> dict[str, Any]:
        return {"path": self.path, "step": self.step, "run": self.run, "saved_at": self.saved_at}

    def describe(self) -> str:
        return self.path + (f" (step {self.step})" if self.step is not None else "")


def _order(point: Checkpoint) -> tuple[int, int, float]:
    return (point.run, point.step if point.step is not None else -1, point.saved_at or 0.0)


def history(
    job: dict[str, Any] | None,
    status: dict[str, Any] | None = None,
    *,
    run: int | None = None,
    clean_exit: bool = False,
) -> list[Checkpoint]:
    """Every completed checkpoint the records know, oldest first, one per path, at most
    :data:`MAX_KEPT`. ``status`` is run ``run``'s status.json; with ``clean_exit`` (every
    rank of that run exited 0, so every rank finished its saves) its unsynced checkpoint
    counts too."""
    job = job or {}
    found: list[Checkpoint] = []
    kept = job.get("checkpoints")
    found += [p for p in (Checkpoint.parse(r) for r in (kept if isinstance(kept, list) else ()) if isinstance(r, dict)) if p is not None]
    if not found:  # a record written before the history existed
        legacy = Checkpoint.parse(job.get("last_checkpoint"), run=_int(job.get("restarts")))
        found += [legacy] if legacy is not None else []
    if status:
        fields: Iterable[str] = ("resume_point", "unsynced_checkpoint") if clean_exit else ("resume_point",)
        if "resume_point" not in status:
            fields = ("last_checkpoint",)  # a status from before resume points were recorded
        for name in fields:
            point = Checkpoint.parse(status.get(name), run=run if run is not None else _int(status.get("restarts")))
            if point is not None:
                found.append(point)
    newest: dict[str, Checkpoint] = {}
    for point in sorted(found, key=_order):
        newest.pop(point.path, None)
        newest[point.path] = point  # a path saved again counts at its latest
    return sorted(newest.values(), key=_order)[-MAX_KEPT:]


def choose(points: list[Checkpoint], *, exists: Callable[[str], bool] = os.path.exists) -> tuple[Checkpoint | None, list[Checkpoint]]:
    """The newest checkpoint that still exists, and the newer ones that are gone."""
    gone: list[Checkpoint] = []
    for point in reversed(points):
        if exists(point.path):
            return point, gone
        gone.append(point)
    return None, gone


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
