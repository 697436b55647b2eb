"""The ledger every accepted command lives in, on rank 0 (the job's one authority).

A command's life: ``queued`` -> ``applied`` (at a step, on every rank) -> ``completed``
(with its result) or ``failed`` / ``dropped`` (with a reason). A command refused at the
door (full queue, job stopping) over the file channel is recorded as ``rejected`` so the
client that dropped the file learns why. Nothing is silently lost. The vocabulary
(commands, states, refusals) is :mod:`.commands`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from forgather_control.core.commands import (
    BadOptions,
    Command,
    IdConflict,
    KeyConflict,
    KnobRefused,
    QueueFull,
    State,
    StopPending,
    UnknownCommand,
    UnknownEntry,
    new_command_id,
    parse_command,
    refusal_id,
)
from forgather_control.core.records import CommandOptions, CommandResult, GuardFiring, Receipt


@dataclass
class Entry:
    """One command's life in the ledger (changed in place as it moves on); its receipt,
    the record status.json and HTTP replies carry, is :meth:`as_record`."""

    id: str
    command: Command | str  # a str only for a rejected, unknown command
    state: State = State.QUEUED
    key: str | None = None
    source: str = "http"
    seq: int = 0
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    step: int | None = None
    result: CommandResult | None = None
    reason: str | None = None
    options: CommandOptions | None = None
    #: the guard that queued it (source "guard"), with its evidence
    guard: GuardFiring | None = None

    def as_record(self) -> Receipt:
        return Receipt(
            id=self.id,
            command=str(self.command),
            state=self.state.value,
            key=self.key,
            source=self.source,
            seq=self.seq,
            created_at=self.created_at,
            updated_at=self.updated_at,
            step=self.step,
            result=self.result,
            reason=self.reason,
            options=self.options,
            guard=self.guard,
        )


#: Options a command may carry (the fields of :class:`~.records.CommandOptions`), their
#: type and the commands that take them.
COMMAND_OPTIONS: dict[str, tuple[type, frozenset[Command]]] = {
    "evaluate": (bool, frozenset({Command.SAVE_CHECKPOINT})),
    "changes": (list, frozenset({Command.SET})),
}


def parse_options(command: Command, options: CommandOptions | None) -> CommandOptions | None:
    """A command's options, checked: each set option of the right type and for a command
    that takes it (a ``set`` needs its changes: their names and values are the job's to
    check, :mod:`.knobs`); None when none is set."""
    if command == Command.SET and (options is None or not getattr(options, "changes", None)):
        raise KnobRefused("set needs at least one change: options.changes, [{name, value}, ...]")
    if options is None:
        return None
    if not isinstance(options, CommandOptions):
        raise BadOptions(f"options must be CommandOptions, not {type(options).__name__}")
    given = {name: getattr(options, name) for name in COMMAND_OPTIONS if getattr(options, name) is not None}
    for name, value in given.items():
        kind, commands = COMMAND_OPTIONS[name]
        if command not in commands:
            raise BadOptions(f"option {name!r} is for {', '.join(sorted(c.value for c in commands))}, not {command.value}")
        if type(value) is not kind:
            raise BadOptions(f"option {name!r} must be a {kind.__name__}")
    return options if given else None


def _named(what: Entry | Command | str, options: CommandOptions | None = None) -> str:
    """A command as a refusal names it: with its options when it has any."""
    if isinstance(what, Entry):
        return _named(what.command, what.options)
    given = [f"{name}={getattr(options, name)}" for name in COMMAND_OPTIONS if name != "changes" and options is not None and getattr(options, name) is not None]
    changes = getattr(options, "changes", None) or []
    given += [f"{c.name}={c.value}" for c in changes]
    return f"{what} ({', '.join(given)})" if given else str(what)


class Ledger:
    """Thread-safe record of commands; written by the HTTP thread, the inbox poller and
    the training thread. Bounded: at most ``max_pending`` queued, ``history`` kept.

    ``on_change`` is called (outside the lock) after every transition so the owner can
    persist status.json promptly; it must not raise, and errors in it are swallowed.
    """

    def __init__(
        self,
        *,
        max_pending: int = 16,
        history: int = 200,
        on_change: Callable[[], None] | None = None,
        vet: Callable[[Command, CommandOptions | None], CommandOptions | None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        #: the job's own check of a command's options (its knobs); raises BadOptions
        self.vet = vet
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._keys: dict[str, str] = {}
        self._queue: deque[str] = deque()
        self._seq = itertools.count(1)
        self._stop_accepted: Entry | None = None
        self.max_pending = max_pending
        self.history = history
        self.on_change = on_change
        #: Cheap flag the training thread reads on every step; no lock needed to read.
        self.has_pending = False

    # -- intake -------------------------------------------------------------------
    def submit(
        self,
        command: Command | str,
        *,
        key: str | None = None,
        source: str = "http",
        command_id: str | None = None,
        options: CommandOptions | None = None,
        guard: GuardFiring | None = None,
    ) -> tuple[Entry, bool]:
        """Queue a command. Returns ``(entry, created)``. One rule for both channels: an id
        or a key names one command. The same command again (same command and options;
        under an id, also the same key) is the first: its entry, ``created=False``. An id
        that names another command, or the same one under another key, is refused
        (IdConflict), and so is a key that names another command (KeyConflict): nothing
        is queued."""
        cmd = parse_command(command) if not isinstance(command, Command) else command
        opts = parse_options(cmd, options)
        if self.vet is not None:
            opts = self.vet(cmd, opts)  # refused before anything is recorded
        with self._lock:
            if command_id is not None and command_id in self._entries:
                first = self._entries[command_id]
                if first.command == cmd and first.options == opts and first.key == key:
                    return first, False
                raise IdConflict(
                    f"command id {command_id!r} already names {_named(first)} (key {first.key!r}, {first.state}); "
                    f"an id names one command: send {_named(cmd, opts)} with a new id"
                )
            if key is not None and key in self._keys and self._keys[key] in self._entries:
                first = self._entries[self._keys[key]]
                if first.command != cmd or first.options != opts:
                    raise KeyConflict(
                        f"key {key!r} already names {_named(first)} ({first.id}, {first.state}); a key names one command: send this one with a new key"
                    )
                return first, False
            if self._stop_accepted is not None and not (cmd == Command.ABORT and self._stop_accepted.command != Command.ABORT):
                raise StopPending(
                    f"the job is already stopping ({self._stop_accepted.reason or self._stop_accepted.command}"
                    f", command {self._stop_accepted.id}); no further commands are accepted"
                )
            if len(self._queue) >= self.max_pending:
                raise QueueFull(f"{len(self._queue)} commands are already queued (the limit is {self.max_pending}); wait for them to apply and retry")
            entry = Entry(
                id=command_id or new_command_id(),
                command=cmd,
                key=key,
                source=source,
                seq=next(self._seq),
                options=opts,
                guard=guard,
            )
            self._entries[entry.id] = entry
            if key is not None:
                self._keys[key] = entry.id
            self._queue.append(entry.id)
            if cmd.stops:
                self._stop_accepted = entry
            self.has_pending = True
            self._trim()
        self._changed()
        return entry, True

    def reject(self, command: str, *, reason: str, key: str | None = None, source: str = "file", command_id: str | None = None) -> Entry:
        """Record a refusal that has no reply channel (the file inbox), under the file's
        id; when another command holds that id, under a :func:`refusal_id` of it (the
        same refusal again is the first)."""
        try:
            cmd: Command | str = parse_command(command)
        except UnknownCommand:
            cmd = str(command)[:64]
        entry = Entry(
            id=command_id or new_command_id(),
            command=cmd,
            key=key,
            source=source,
            state=State.REJECTED,
            reason=reason,
        )
        with self._lock:
            taken = self._entries.get(entry.id)
            if taken is not None:
                if taken.state == State.REJECTED and taken.command == cmd and taken.key == key:
                    return taken
                entry.id = refusal_id(entry.id)
            self._entries[entry.id] = entry
            self._trim()
        self._changed()
        return entry

    # -- the training side ----------------------------------------------------------
    def next_pending(self) -> Entry | None:
        """The oldest queued command, left queued (it is removed when applied)."""
        with self._lock:
            while self._queue:
                entry = self._entries.get(self._queue[0])
                if entry is not None and entry.state == State.QUEUED:
                    return entry
                self._queue.popleft()
            self.has_pending = False
            return None

    def mark_applied(self, command_id: str, step: int) -> Entry:
        with self._lock:
            entry = self._get(command_id)
            if self._queue and self._queue[0] == command_id:
                self._queue.popleft()
            else:
                try:
                    self._queue.remove(command_id)
                except ValueError:
                    pass
            self.has_pending = bool(self._queue)
            entry.state = State.APPLIED
            entry.step = int(step)
            entry.updated_at = time.time()
        self._changed()
        return entry

    def note_result(self, command_id: str, result: CommandResult) -> Entry:
        """Record what an applied command has done so far (a pause's checkpoint) and leave
        it open: it completes later (a pause when the job has ended, with its final state)."""
        with self._lock:
            entry = self._get(command_id)
            if entry.state.final:
                return entry
            entry.result = result
            entry.updated_at = time.time()
        self._changed()
        return entry

    def complete(self, command_id: str, result: CommandResult | None = None, *, reason: str | None = None) -> Entry:
        return self._finish(command_id, State.COMPLETED, result=result, reason=reason)

    def fail(self, command_id: str, reason: str) -> Entry:
        return self._finish(command_id, State.FAILED, reason=reason)

    def drop_pending(self, reason: str) -> list[Entry]:
        """Drop every queued command (the job is ending before they could apply)."""
        dropped: list[Entry] = []
        with self._lock:
            for cid in list(self._queue):
                entry = self._entries.get(cid)
                if entry is not None and entry.state == State.QUEUED:
                    entry.state = State.DROPPED
                    entry.reason = reason
                    entry.updated_at = time.time()
                    dropped.append(entry)
            self._queue.clear()
            self.has_pending = False
        if dropped:
            self._changed()
        return dropped

    def open_entries(self) -> list[Entry]:
        """Applied but not yet finished (a save waiting for its checkpoint path)."""
        with self._lock:
            return [e for e in self._entries.values() if e.state == State.APPLIED]

    def close_intake(self, reason: str) -> None:
        """Refuse everything from now on (the job is ending)."""
        with self._lock:
            if self._stop_accepted is None:
                self._stop_accepted = Entry(id="-", command=Command.GRACEFUL_STOP, reason=reason)

    # -- reading --------------------------------------------------------------------
    def get(self, command_id: str) -> Entry:
        with self._lock:
            return self._get(command_id)

    def recent(self, n: int = 20) -> list[Receipt]:
        """The receipts of the last ``n`` commands, oldest first."""
        with self._lock:
            return [e.as_record() for e in list(self._entries.values())[-n:]]

    def pending_stop(self) -> Entry | None:
        """The stop accepted and not applied yet (``save_and_stop``, ``pause``,
        ``graceful_stop`` or ``abort``), wherever it waits in the queue."""
        with self._lock:
            e = self._stop_accepted
            return e if e is not None and e.id != "-" and e.state == State.QUEUED else None

    def pending_abort(self) -> Entry | None:
        """The abort accepted and not applied yet (the ranks have not agreed on it)."""
        with self._lock:
            e = self._stop_accepted
            return e if e is not None and e.command == Command.ABORT and e.state == State.QUEUED else None

    def pending_count(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def stopping(self) -> bool:
        return self._stop_accepted is not None

    # -- internals ------------------------------------------------------------------
    def _get(self, command_id: str) -> Entry:
        entry = self._entries.get(command_id)
        if entry is None:
            raise UnknownEntry(f"no command {command_id!r} in this job's ledger")
        return entry

    def _finish(self, command_id: str, state: State, *, result: CommandResult | None = None, reason: str | None = None) -> Entry:
        with self._lock:
            entry = self._get(command_id)
            if entry.state.final:
                return entry
            entry.state = state
            if result is not None:
                entry.result = result
            if reason is not None:
                entry.reason = reason
            entry.updated_at = time.time()
        self._changed()
        return entry

    def _trim(self) -> None:
        queued = set(self._queue)
        while len(self._entries) > self.history:
            for cid, entry in self._entries.items():
                if cid not in queued and entry.state.final:
                    del self._entries[cid]
                    if entry.key is not None:
                        self._keys.pop(entry.key, None)
                    break
            else:
                return

    def _changed(self) -> None:
        cb = self.on_change
        if cb is None:
            return
        try:
            cb()
        except Exception:  # noqa: BLE001 - the owner logs; we never raise into callers  # pragma: no cover
            pass
