"""A job's checkpoints across its runs, and the one a restarted run resumes from.

Each run's rank 0 reports the newest checkpoint every rank has finished writing
(status.json ``resume_point``), and each of them (``checkpoints``). The launcher keeps
those in job.json ``checkpoints``, oldest first, across any number of runs, crashes and
requeues: a run that saves nothing inherits what the runs before it saved, and a record
rewritten at the start of a run carries the history forward instead of dropping it.

A checkpoint can vanish (a user deletes it, a retention policy prunes it): resume takes
the newest one that still exists, and says which newer ones it skipped.

A roll back (``forgather control resume --from``, :func:`roll_back`) resumes from an older
checkpoint of the history: the newer ones stay on disk and in the history, marked left
behind, and resume passes them over from then on unless one is named again.

A record is not proof: whoever can write the job folder can name any path in it. A run
resumes only from a checkpoint its own user owns, inside its output directory
(``$FORGATHER_OUTPUT_DIR``, else the launch's working directory), links resolved
(:class:`Scope`); the launcher and the ranks ask the same rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from forgather_control.core.env import ENV_OUTPUT_DIR
from forgather_control.core.records import UNSET, CheckpointRecord, Job, KnobValue, Status, UnsetType

__all__ = ["MAX_KEPT", "Checkpoint", "Scope", "Skipped", "choose", "find", "history", "roll_back"]

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
    #: the job's knob values when it was written (:func:`~.knobs.carry_from`)
    knobs: dict[str, KnobValue] | None = field(default=None, compare=False, hash=False)
    #: a roll back went to an older checkpoint: resume no longer takes this one unless named
    left_behind: bool = field(default=False, compare=False)

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
        knobs = dict(raw.knobs) if raw.knobs else None
        return cls(path=path, step=raw.step, run=ran or 0, saved_at=raw.saved_at, knobs=knobs, left_behind=bool(raw.left_behind))

    def as_record(self) -> CheckpointRecord:
        knobs = dict(self.knobs) if self.knobs else None
        return CheckpointRecord(path=self.path, step=self.step, run=self.run, saved_at=self.saved_at, knobs=knobs, left_behind=self.left_behind or None)

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
        named = (*(status.checkpoints or ()), *named)  # each of the run's, not only its newest
        for raw in named:
            point = Checkpoint.parse(raw, run=run if run is not None else status.restarts or 0)
            if point is not None:
                found.append(point)
    newest: dict[str, Checkpoint] = {}
    for point in sorted(found, key=_order):
        before = newest.pop(point.path, None)
        if before is not None and before.left_behind and _order(before) == _order(point):
            point = replace(point, left_behind=True)  # the same save, named again by its run's status
        newest[point.path] = point  # a path saved again counts at its latest
    return sorted(newest.values(), key=_order)[-MAX_KEPT:]


def find(points: list[Checkpoint], ref: str | int) -> Checkpoint | None:
    """The checkpoint of the history ``ref`` names: a step (the newest saved at it), or a
    path (as recorded, or the same file)."""
    if isinstance(ref, int):
        at = [p for p in points if p.step == ref]
        return at[-1] if at else None
    for point in reversed(points):
        if point.path == ref or os.path.normpath(point.path) == os.path.normpath(ref):
            return point
    for point in reversed(points):
        if os.path.realpath(point.path) == os.path.realpath(ref):
            return point
    return None


def roll_back(points: list[Checkpoint], target: Checkpoint) -> list[Checkpoint]:
    """The history once a relaunch goes back to ``target``: every checkpoint after it left
    behind (kept, on disk and here), ``target`` itself no longer so."""
    if target not in points:
        raise ValueError(f"{target.describe()} is not in the job's history")
    at = points.index(target)
    return [*points[:at], replace(target, left_behind=False), *(replace(p, left_behind=True) for p in points[at + 1 :])]


@dataclass(frozen=True)
class Scope:
    """Where a run may resume from: a checkpoint inside ``output_dir`` that ``uid`` owns,
    both judged on the path with every link resolved (a link inside that points out is
    outside). A checkpoint folder's own files are not each checked: only its owner
    could have put them there, unless it let others write into it."""

    output_dir: str
    uid: int

    @classmethod
    def here(cls) -> Scope:
        """This process's: ``$FORGATHER_OUTPUT_DIR`` (else the working directory) and its uid.
        The launcher and its ranks share both (torchrun keeps the env and the cwd)."""
        return cls(os.environ.get(ENV_OUTPUT_DIR) or os.getcwd(), os.getuid())

    def refuses(self, path: str) -> str | None:
        """Why this run must not resume from ``path``; None when it may."""
        root, real = os.path.realpath(self.output_dir), os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            via = f" (a link to {real})" if real != os.path.normpath(path) else ""
            return f"outside the job's output directory {root}{via} (${ENV_OUTPUT_DIR} names it)"
        try:
            owner = os.stat(real).st_uid
        except FileNotFoundError:
            return "no longer on disk"
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        if owner != self.uid:
            return f"owned by uid {owner}, not by the job's user (uid {self.uid})"
        return None


@dataclass(frozen=True)
class Skipped:
    """A newer checkpoint that resume passed over, and why."""

    point: Checkpoint
    reason: str

    def describe(self) -> str:
        return f"{self.point.describe()}: {self.reason}"


def choose(points: list[Checkpoint], *, exists: Callable[[str], bool] = os.path.exists, scope: Scope | None = None) -> tuple[Checkpoint | None, list[Skipped]]:
    """The newest checkpoint that still exists (and, with ``scope``, that this run may
    resume from), and the newer ones passed over with the reason; one left behind by a
    roll back is passed over without one."""
    skipped: list[Skipped] = []
    for point in reversed(points):
        if point.left_behind:
            continue  # a roll back went past it: taken only when named again
        why = "no longer on disk" if not exists(point.path) else scope.refuses(point.path) if scope is not None else None
        if why is None:
            return point, skipped
        skipped.append(Skipped(point, why))
    return None, skipped
