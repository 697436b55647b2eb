"""Is control attached to a launched job, and what its user is told when it is not.

A job launched with control has it once rank 0 publishes this run's status (status.json
whose ``restarts`` is the launcher's run count): a Controller runs, the user's own or the
one a trainer's callback starts. A script whose trainer never starts one (a plain loop
without a Controller, a trainer we do not patch) would otherwise look ``starting`` for
ever: after ``--no-control-after`` seconds its
launcher says so once and records it (job.json ``no_control_since``), readers show it
with the words made here (never with text taken from a record), and a stop signal ends
its workers at once: nobody can save.
"""

from __future__ import annotations

from forgather_control.core.records import NoControl, Status
from forgather_control.core.states import is_final

__all__ = ["ADD_CONTROL", "no_control_notice", "no_control_why", "nothing_to_save", "nothing_to_save_reason", "published"]

#: What to add, for each kind of script; the same words in the launcher's warning, in
#: ``list``/``status`` and on the web page.
ADD_CONTROL = (
    "a plain loop: use forgather_control.callback.Controller (README, 'Plain loops'); "
    "a trainer forgather does not patch: add its control callback "
    "(forgather_control.callback.TrainerControlCallback for HF-style callbacks, LightningControlCallback for Lightning); "
    "HuggingFace, Lightning and Forgather trainers get it automatically"
)


def published(status: Status | None, run: int) -> bool:
    """Has rank 0 published run ``run``'s status? A previous run's status.json (another
    run count, or none) says nothing about this run."""
    return status is not None and status.restarts is not None and status.restarts == run


def nothing_to_save(status: Status | None, run: int) -> bool:
    """Has run ``run`` nothing to save yet? So until its rank 0 reports a first finished
    training step (``first_step_at``): before the trainer exists, while the model builds,
    during the first step. A stop signal then ends the run at once instead of waiting
    for a step that may come only after the grace."""
    if not published(status, run):
        return True
    assert status is not None
    return status.first_step_at is None and not is_final(status.state)


def nothing_to_save_reason(signal_name: str) -> str:
    """Why a run a stop signal ended before its first step saved nothing (job.json
    ``reason``, status.json ``stop_reason``, the launcher's last line)."""
    return f"{signal_name} came before this run's first training step: nothing to save yet, so it stopped at once (a relaunch starts where this run started)"


def no_control_why(after: float) -> str:
    """One line: what is known, worded so that it stays true while a model still loads."""
    return f"no control attached yet after {after:g}s: rank 0 has not started a Controller in this run"


def no_control_notice(after: float | None, since: float | None = None) -> NoControl:
    """The ``no_control`` of ``list --json`` / ``status --json``: ``after`` (the launcher's
    threshold, seconds, from job.json), ``since`` (when the launcher judged it, its clock),
    ``why`` and ``add`` (sentences for a person)."""
    secs = float(after) if after is not None else None
    why = no_control_why(secs) if secs is not None else "no control attached yet: rank 0 has not started a Controller in this run"
    return NoControl(after=secs, since=since, why=why, add=ADD_CONTROL)
