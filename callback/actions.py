"""What a command asks of the training loop, as flags the loop can branch on.

The loop should not need to know the command vocabulary: a save-and-stop is "save,
then stop", an abort is "stop" with ``abort`` set so the integration skips the save a
trainer would make at its end. A loop does what the flags say in one order: evaluate,
then save, then stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from forgather_control.core import Command

if TYPE_CHECKING:
    from forgather_control.core.records import CommandOptions

__all__ = ["FLAG_EVALUATE", "FLAG_SAVED", "NO_ACTIONS", "Actions", "actions_for", "evaluates_first"]


@dataclass(frozen=True)
class Actions:
    """What the training loop should do now. Falsy when there is nothing to do."""

    save: bool = False
    evaluate: bool = False
    stop: bool = False
    abort: bool = False
    command: Command | None = None
    command_id: str | None = None  # rank 0 only; other ranks do not see the ledger
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.save or self.evaluate or self.stop


#: The answer between checks: one shared instance, so the hot path allocates nothing.
NO_ACTIONS = Actions()


#: Bits of the agreed ``flags``, set by rank 0 so every rank does the same: the save
#: evaluates first (:func:`evaluates_first`) ...
FLAG_EVALUATE = 1
#: ... or a stop's checkpoint is on disk already (a save finished after the stop was
#: asked, as when the stop came during that save): it stops without saving again.
FLAG_SAVED = 2


def evaluates_first(cmd: Command, options: CommandOptions | None, *, configured: bool) -> bool:
    """The rule for every trainer: ``save`` writes its checkpoint after an evaluation when
    the trainer has evaluation configured, unless sent with ``--no-eval``
    (``options.evaluate`` false). ``save-stop`` and a signal's save never evaluate: they
    are stopping. What "configured" means is each integration's (``Controller.evaluates``)."""
    return cmd == Command.SAVE_CHECKPOINT and configured and not (options is not None and options.evaluate is False)


def actions_for(cmd: Command, command_id: str | None, reason: str | None = None, *, flags: int = 0) -> Actions:
    return Actions(
        save=cmd.saves and not (cmd.stops and flags & FLAG_SAVED),
        evaluate=cmd == Command.EVALUATE or bool(cmd == Command.SAVE_CHECKPOINT and flags & FLAG_EVALUATE),
        stop=cmd.stops,
        abort=cmd == Command.ABORT,
        command=cmd,
        command_id=command_id,
        reason=reason,
    )
