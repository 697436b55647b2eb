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

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from forgather_control.core.records import UNSET, CheckpointRecord, Job, Status, UnsetType

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
    def parse(cls, raw: CheckpointRecord | str | UnsetType | None, *, run: int | None = None) -> Checkpoint | None:
        """A checkpoint from a record's field (a checked record, or a bare path from older
        records); None for anything that is not one (paths are absolute: a relative one
        means nothing to a relaunch in another folder). ``run`` fills a missing run."""
        if isinstance(raw, str):
            raw = CheckpointRecord(path=raw)
        if not isinstance(raw, CheckpointRecord):
            return None
        path = raw.path
        if path is None or not os.path.isabs(path) or len(path) > _MAX_PATH or "\x00" in path:
            return None
        ran = raw.run if raw.run is not None else run
        return cls(path=path, step=raw.step, run=ran or 0, saved_at=raw.saved_at)

    def as_record(self) -> CheckpointRecord:
        return CheckpointRecord(path=self.path, step=self.step, run=self.run, saved_at=self.saved_at)

    def describe(self) -> str:
        return self.path + (f" (step {self.step})" if self.step is not None else "")


def _order(point: Checkpoint) -> tuple[int, int, float]:
    return (point.run, point.step if point.step is not None else -1, point.saved_at or 0.0)


def history(
    job: Job | None,
    status: Status | None = None,
    *,
    run: int | None = None,
    clean_exit: bool = False,
) -> list[Checkpoint]:
    """Every completed checkpoint the records know, oldest first, one per path, at most
    :data:`MAX_KEPT`. ``status`` is run ``run``'s status.json; with ``clean_exit`` (every
    rank of that run exited 0, so every rank finished its saves) its unsynced checkpoint
    counts too."""
    found: list[Checkpoint] = []
    if job is not None:
        found += [p for p in (Checkpoint.parse(r) for r in job.checkpoints or ()) if p is not None]
        if not found:  # a record written before the history existed
            legacy = Checkpoint.parse(job.last_checkpoint, run=job.restarts or 0)
            found += [legacy] if legacy is not None else []
    if status is not None:
        named: Iterable[CheckpointRecord | str | UnsetType | None] = (status.resume_point, status.unsynced_checkpoint) if clean_exit else (status.resume_point,)
        if status.resume_point is UNSET:
            named = (status.last_checkpoint,)  # a status from before resume points were recorded
        for raw in named:
            point = Checkpoint.parse(raw, run=run if run is not None else status.restarts or 0)
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
