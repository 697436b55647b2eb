"""What a command asks of the training loop, as flags the loop can branch on.

The loop should not need to know the command vocabulary: a save-and-stop is "save,
then stop", an abort is "stop" with ``abort`` set so the integration skips the save a
trainer would make at its end.
"""

from __future__ import annotations

from dataclasses import dataclass

from forgather_control.core import Command
from forgather_control.core.records import CommandOptions

__all__ = ["FLAG_NO_EVAL", "NO_ACTIONS", "Actions", "actions_for", "option_flags"]


@dataclass(frozen=True)
class Actions:
    """What the training loop should do now. Falsy when there is nothing to do."""

    save: bool = False
    #: a save that skips the evaluation a trainer with evaluation set up runs first
    save_without_eval: bool = False
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


#: A save that skips the evaluation a trainer would run first (``save --no-eval``).
FLAG_NO_EVAL = 1


def option_flags(options: CommandOptions | None) -> int:
    """A command's options as the bits every rank receives with it."""
    return FLAG_NO_EVAL if options is not None and options.evaluate is False else 0


def actions_for(cmd: Command, command_id: str | None, reason: str | None = None, *, flags: int = 0) -> Actions:
    return Actions(
        save=cmd.saves,
        save_without_eval=cmd.saves and bool(flags & FLAG_NO_EVAL),
        evaluate=cmd == Command.EVALUATE,
        stop=cmd.stops,
        abort=cmd == Command.ABORT,
        command=cmd,
        command_id=command_id,
        reason=reason,
    )
