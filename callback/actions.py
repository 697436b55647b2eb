"""What a command asks of the training loop, as flags the loop can branch on.

The loop should not need to know the command vocabulary: a save-and-stop is "save,
then stop", an abort is "stop" with ``abort`` set so the integration skips the save a
trainer would make at its end.
"""

from __future__ import annotations

from dataclasses import dataclass

from forgather_control.control import Command

__all__ = ["NO_ACTIONS", "Actions", "actions_for"]


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


def actions_for(cmd: Command, command_id: str | None, reason: str | None = None) -> Actions:
    return Actions(
        save=cmd.saves,
        evaluate=cmd == Command.EVALUATE,
        stop=cmd.stops,
        abort=cmd == Command.ABORT,
        command=cmd,
        command_id=command_id,
        reason=reason,
    )
