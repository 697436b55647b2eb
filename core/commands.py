"""The command vocabulary: the commands, their verbs and wire codes, a receipt's states,
and the ledger's refusals.

A command's life: ``queued`` -> ``applied`` (at a step, on every rank) -> ``completed``
(with its result) or ``failed`` / ``dropped`` (with a reason), kept by rank 0's
:class:`~.ledger.Ledger`. Every rank decodes the agreed command from here; no typed
record is loaded for it (a rank other than 0 never holds a ledger: issue 24).
"""

from __future__ import annotations

import enum
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forgather_control.core.records import Receipt


class Command(str, enum.Enum):
    SAVE_CHECKPOINT = "save_checkpoint"
    EVALUATE = "evaluate"
    SAVE_AND_STOP = "save_and_stop"
    GRACEFUL_STOP = "graceful_stop"
    ABORT = "abort"
    #: change live knobs (``options.changes``), on every rank at the agreed step
    SET = "set"
    #: save, then stop, and the job ends ``paused`` (resumable; a SLURM job is not requeued)
    PAUSE = "pause"

    def __str__(self) -> str:
        return self.value

    @property
    def code(self) -> int:
        """Small positive int for the agreement tensor; 0 means "no command"."""
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Command:
        return _BY_CODE[int(code)]

    @property
    def stops(self) -> bool:
        return self in (Command.SAVE_AND_STOP, Command.GRACEFUL_STOP, Command.ABORT, Command.PAUSE)

    @property
    def saves(self) -> bool:
        return self in (Command.SAVE_CHECKPOINT, Command.SAVE_AND_STOP, Command.PAUSE)

    @property
    def saves_and_stops(self) -> bool:
        """Save a checkpoint, then stop, with nothing in between (no evaluation, none of the
        trainer's end-of-training logic): ``save-stop`` and ``pause``."""
        return self in (Command.SAVE_AND_STOP, Command.PAUSE)


_CODES = {c: i for i, c in enumerate(Command, start=1)}
_BY_CODE = {i: c for c, i in _CODES.items()}

#: CLI verb -> command.
CLI_VERBS: dict[str, Command] = {
    "save": Command.SAVE_CHECKPOINT,
    "eval": Command.EVALUATE,
    "save-stop": Command.SAVE_AND_STOP,
    "stop": Command.GRACEFUL_STOP,
    "abort": Command.ABORT,
    "pause": Command.PAUSE,
    "set": Command.SET,
}
#: The verbs that need nothing but the job (buttons on the page, a guard's action).
PLAIN_VERBS: dict[str, Command] = {v: c for v, c in CLI_VERBS.items() if c != Command.SET}
VALID_COMMANDS: tuple[str, ...] = tuple(c.value for c in Command)
_VERBS = {command.value: verb for verb, command in CLI_VERBS.items()}


def verb(name: object) -> str:
    """What a person typed for command ``name`` (``save`` for ``save_checkpoint``): the
    command line shows verbs, the HTTP API and ``--json`` keep the wire names. Anything
    else comes back as it was given."""
    return _VERBS.get(name, str(name)) if isinstance(name, str) else str(name)


#: An abort a launched job's ranks have not applied this long after its launcher first
#: saw it (they are hung: no agreed step comes) is carried out by the launcher: it ends
#: every rank (seconds).
ABORT_GRACE = 10.0


class UnknownCommand(ValueError):
    pass


def parse_command(name: object) -> Command:
    """Accept the wire name or the CLI verb; the error lists what is valid."""
    if isinstance(name, str):
        if name in CLI_VERBS:
            return CLI_VERBS[name]
        try:
            return Command(name)
        except ValueError:
            pass
    raise UnknownCommand(f"unknown command {name!r}; valid commands: {', '.join(VALID_COMMANDS)}")


class State(str, enum.Enum):
    SENT = "sent"  # in the job's inbox, not yet taken by rank 0 (file channel only)
    QUEUED = "queued"
    APPLIED = "applied"
    COMPLETED = "completed"
    FAILED = "failed"
    DROPPED = "dropped"
    REJECTED = "rejected"

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        return self in (State.COMPLETED, State.FAILED, State.DROPPED, State.REJECTED)

    @classmethod
    def parse(cls, value: object) -> State | None:
        """The state a receipt names, or None for anything else."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value) if isinstance(value, str) else None
        except ValueError:
            return None


def is_final_receipt(entry: Receipt | None) -> bool:
    """True for a receipt in a final state."""
    state = State.parse(entry.state) if entry is not None else None
    return state is not None and state.final


class LedgerError(Exception):
    """Base for refusals; ``http_status`` is what the server answers, ``refused`` what
    its body names (a client maps it to its own error: a knob refusal's exit code)."""

    http_status = 400
    refused: str | None = None


class QueueFull(LedgerError):
    http_status = 429


class StopPending(LedgerError):
    http_status = 409


class UnknownEntry(LedgerError):
    http_status = 404


class KeyConflict(LedgerError):
    """An idempotency key already names another command: one key, one command."""

    http_status = 409


class IdConflict(LedgerError):
    """A command id (the file channel's) already names another command, or the same one
    under another key: one id, one command."""

    http_status = 409


def refusal_id(command_id: str) -> str:
    """The id of the rejected receipt for a command file whose ``command_id`` another
    command holds: a new id, tied to the file's by its prefix (ids stay within 64)."""
    return f"{command_id[:40]}-refused-{secrets.token_hex(4)}"


def is_refusal_of(receipt_id: str | None, command_id: str) -> bool:
    """True when ``receipt_id`` is a :func:`refusal_id` of ``command_id``."""
    return bool(command_id) and isinstance(receipt_id, str) and receipt_id.startswith(f"{command_id[:40]}-refused-")


class BadOptions(LedgerError):
    """Options a command does not take, or of the wrong type."""

    http_status = 422


class KnobRefused(BadOptions):
    """A ``set`` its job refuses: a knob it does not have, a value out of its range."""

    refused = "knob"


def new_command_id() -> str:
    return "c-" + secrets.token_hex(6)


def new_key() -> str:
    """An idempotency key for a command sent without one: every command carries a key,
    so a retry after an unknown outcome can never queue it twice."""
    return "k-" + secrets.token_hex(8)
