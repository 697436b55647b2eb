"""Receipts for commands whose result only the training loop knows.

A save applies at an agreed step, but the checkpoint's path exists only once the loop
has written it and called ``checkpoint_saved(path)``; an evaluation's metrics only once
it calls ``evaluation_done(metrics)``. Until then the command stays ``applied`` in the
ledger, and a client waiting on it waits here. A loop that never reports must not leave
a client waiting forever: the receipt fails at the next check with a reason that names
the call to make. When the job ends every open receipt gets a final state. A ``pause`` is followed to
the job's end: its checkpoint is noted when the loop reports it, and it completes when
the job has ended, with that checkpoint and the final state (``paused``), so
``pause --wait`` returns once nothing of the job trains.

Only rank 0 holds a ledger that sees commands applied; on the other ranks nothing ever
waits here and every call is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import msgspec

from forgather_control.core import Command, Ledger, LedgerError
from forgather_control.core.records import CheckpointRecord, CommandResult, Metrics
from forgather_control.core.states import JobState

__all__ = ["REPORTED", "Receipts", "Waiting"]

#: Commands whose result the training loop reports (a checkpoint path, metrics).
REPORTED = frozenset({Command.SAVE_CHECKPOINT, Command.SAVE_AND_STOP, Command.PAUSE, Command.EVALUATE})


class Waiting(NamedTuple):
    """A command applied at ``step`` whose result the loop has not reported yet."""

    command_id: str
    command: Command
    step: int


class Receipts:
    """Rank 0's open receipts, completed by the loop's reports, in the order applied.

    Called from the training thread only (the ledger itself is thread-safe).
    """

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._waiting: list[Waiting] = []
        # Saves reported on rank 0 but maybe still being written on other ranks: a
        # trainer that writes rank-local files (HF) does not wait for the others.
        self._unsynced: list[tuple[str, CommandResult]] = []
        # (step, metrics) of the last evaluation: a save at the same step carries them.
        self._last_eval: tuple[int, Metrics] | None = None

    @property
    def waiting(self) -> tuple[Waiting, ...]:
        """Commands waiting for the loop's report, oldest first."""
        return tuple(self._waiting)

    @property
    def unsynced(self) -> int:
        """Saves reported here whose other ranks may still be writing."""
        return len(self._unsynced)

    # -- the check ------------------------------------------------------------------
    def applied(self, command_id: str, command: Command, step: int) -> None:
        """``command`` applied at ``step``; wait for its report if the loop makes one."""
        if command in REPORTED:
            self._waiting.append(Waiting(command_id, command, step))

    def expire(self, step: int) -> None:
        """Fail the receipts a check at ``step`` proves will never be reported: the loop
        has gone past the step that applied them without reporting. A save-and-stop is
        left to the end of the job, which follows it (so is a pause)."""
        if not self._waiting:
            return
        still = []
        for waiting in self._waiting:
            try:
                done = self._ledger.get(waiting.command_id).state.final
            except LedgerError:
                done = True  # gone from the ledger's history: nobody waits for it
            if done:
                continue
            if step > waiting.step and not waiting.command.saves_and_stops:
                what = "checkpoint (call checkpoint_saved(path))" if waiting.command.saves else "evaluation (call evaluation_done(metrics))"
                self._ledger.fail(waiting.command_id, f"the training loop did not report the {what} after step {waiting.step}")
                continue
            still.append(waiting)
        self._waiting = still

    def sync(self, count: int | None = None) -> None:
        """Every rank reached an agreed check, so every rank finished its earlier saves:
        complete the saves that waited for that (the first ``count``: those reported before
        a check that was started then and resolved now)."""
        count = len(self._unsynced) if count is None else count
        done, self._unsynced = self._unsynced[:count], self._unsynced[count:]
        for command_id, result in done:
            self._saved(command_id, result)

    # -- the loop's reports -----------------------------------------------------------
    def checkpoint_saved(self, checkpoint: str, *, step: int, synced: bool = True) -> None:
        """A checkpoint written at ``step``: completes the oldest save waiting for one, at
        once when every rank's part is known to be written (``synced``), else at the
        next agreed check (:meth:`sync`)."""
        waiting = self._take(lambda cmd: cmd.saves)
        if waiting is None:
            return  # the trainer's own periodic save: nothing waited for it
        result = CommandResult(checkpoint=checkpoint, step=waiting.step, saved_at_step=step)
        if self._last_eval is not None and self._last_eval[0] == step:
            result = msgspec.structs.replace(result, metrics=self._last_eval[1])  # "evaluate first": the checkpoint's metrics
        if synced:
            self._saved(waiting.command_id, result)
        else:
            self._unsynced.append((waiting.command_id, result))

    def _saved(self, command_id: str, result: CommandResult) -> None:
        """A save's checkpoint is written on every rank: its receipt completes, a pause's
        holds it until the job has ended (:meth:`settle`)."""
        try:
            paused = self._ledger.get(command_id).command == Command.PAUSE
        except LedgerError:
            return  # gone from the ledger's history: nobody waits for it
        if paused:
            self._ledger.note_result(command_id, result)
        else:
            self._ledger.complete(command_id, result)

    def saved_already(self, command_id: str, checkpoint: CheckpointRecord, *, step: int) -> None:
        """A stop applied at ``step`` whose checkpoint was written already (it finished
        after the stop was asked): complete it with that checkpoint."""
        result = CommandResult(checkpoint=checkpoint.path, step=step, saved_at_step=checkpoint.step)
        self._saved(command_id, result)

    def checkpoint_missing(self, checkpoint: str, *, step: int) -> None:
        """The loop reported ``checkpoint`` at ``step`` but nothing is on disk there: the
        oldest save waiting for one fails, naming the path (never ``completed`` for a
        checkpoint that does not exist)."""
        self.save_failed(f"the trainer reported checkpoint {checkpoint} at step {step}, but nothing is on disk at that path; no checkpoint was recorded")

    def save_failed(self, reason: str) -> None:
        """The oldest save waiting for a checkpoint fails with ``reason``."""
        waiting = self._take(lambda cmd: cmd.saves)
        if waiting is not None:
            self._ledger.fail(waiting.command_id, reason)

    def evaluation_done(self, metrics: Metrics, *, step: int, checkpoint: str | None = None, note: str | None = None) -> None:
        """An evaluation's (JSON-safe) metrics at ``step``: completes the oldest evaluate,
        naming the ``checkpoint`` the trainer's own policy wrote after it (with ``note``)."""
        self._last_eval = (step, metrics)
        waiting = self._take(lambda cmd: cmd == Command.EVALUATE)
        if waiting is not None:
            self._ledger.complete(waiting.command_id, CommandResult(metrics=metrics, step=waiting.step, checkpoint=checkpoint), reason=note)

    def command_failed(self, reason: str, command: Command | None = None) -> None:
        """The loop could not do what the oldest applied ``command`` (any, when None) asked."""
        waiting = self._take(lambda cmd: command is None or cmd == command)
        if waiting is not None:
            self._ledger.fail(waiting.command_id, reason)

    def _take(self, matches: Callable[[Command], bool]) -> Waiting | None:
        """Remove and return the oldest waiting receipt whose command ``matches``."""
        for i, waiting in enumerate(self._waiting):
            if matches(waiting.command):
                del self._waiting[i]
                return waiting
        return None

    # -- the end of the job -------------------------------------------------------------
    def settle(self, state: JobState, *, step: int, stop_reason: str | None = None, stopped: bool = False, error: str | None = None) -> None:
        """The job ended in ``state`` at ``step``: nothing stays open. Queued commands are
        dropped with the reason; a stop completes with the final state and step (so
        ``stop --wait`` returns when the job has really ended); a result the loop never
        reported fails, naming what happened. ``stopped``: a stop command or signal
        ended the job (``stop_reason`` says which)."""
        ledger = self._ledger
        self.sync()
        ledger.close_intake(f"the job has ended ({state.value})")
        if stopped:
            why = f"the job stopped ({stop_reason or state.value}) at step {step} before the command could apply"
        else:
            why = f"training ended ({state.value}) at step {step} before the command could apply (no training step came after it)"
        abort = ledger.pending_abort() if state == JobState.ABORTED else None
        if abort is not None:  # the job ended before its ranks agreed on the abort: it is done
            first = error.strip().splitlines()[0][:200] if error and error.strip() else ""
            why_abort = f"the job ended at step {step} before its ranks agreed on the abort" + (f" ({first})" if first else "") + "; nothing was saved"
            ledger.complete(abort.id, CommandResult(final_state=state.value, final_step=step), reason=why_abort)
        ledger.drop_pending(why)
        for entry in ledger.open_entries():
            cmd = entry.command
            saved = isinstance(cmd, Command) and cmd.saves_and_stops and entry.result is not None and bool(entry.result.checkpoint)
            if saved and entry.result is not None:  # its checkpoint, and how the job ended
                ledger.complete(entry.id, msgspec.structs.replace(entry.result, final_state=state.value, final_step=step))
            elif cmd in (Command.GRACEFUL_STOP, Command.ABORT):
                ledger.complete(entry.id, CommandResult(step=entry.step, final_state=state.value, final_step=step))
            elif error:
                ledger.fail(entry.id, f"the job failed before the command completed: {error}")
            else:
                ledger.fail(entry.id, f"the job ended ({state.value}) before the training loop reported the {cmd.value} result")
