"""Rank 0's I/O, off the training thread: status.json, heartbeat, and the inbox.

A round of the rank's control loop (:mod:`forgather_control.core.rankloop`: the one
thread that also watches the launcher and answers stack requests) every
``poll_interval``, or at once when the ledger changes: it picks up command files from
``inbox/`` and rewrites status.json when something changed or the heartbeat is due. Any
error here is logged and recorded; it never reaches the training loop.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable

from forgather_control.core import JobPaths, Ledger, LedgerError, UnknownCommand, rankloop, read_json, write_json_atomic
from forgather_control.core.files import TEMP_PREFIX, RecordError, remove_quietly
from forgather_control.core.records import CommandFile, Status, decode, encode
from forgather_control.core.vanished import folder_gone

log = logging.getLogger(__name__)

#: At most this many inbox files are taken per poll; the rest wait for the next one.
INBOX_BATCH = 64
#: A command file that does not parse yet is left alone this long (seconds on our own
#: clock, with its size and mtime unchanged) before it is dropped as garbage: a tool that
#: writes in place instead of renaming a finished file is caught mid-write otherwise.
INBOX_GRACE = 5.0
_ID_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class Publisher:
    def __init__(
        self,
        *,
        paths: JobPaths,
        ledger: Ledger,
        status: Callable[[], Status],
        poll_interval: float = 0.5,
        heartbeat_interval: float = 2.0,
        inbox: bool = True,
        inbox_grace: float = INBOX_GRACE,
        clock: Callable[[], float] = time.monotonic,
        on_tick: Callable[[], None] | None = None,
        loop: rankloop.ControlLoop | None = None,
    ) -> None:
        self.paths = paths
        #: more I/O work for each tick (the metric history); must not raise
        self.on_tick = on_tick
        self.ledger = ledger
        self.status = status
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.inbox = inbox
        self.inbox_grace = inbox_grace
        self._clock = clock
        # name -> ((size, mtime_ns), first seen on time.monotonic()) for files that did
        # not parse; our clock, not the file's mtime, which on shared storage is another
        # host's clock.
        self._unparsed: dict[str, tuple[tuple[int, int], float]] = {}
        self._loop = loop
        self._task: rankloop.Task | None = None
        self._dirty = True
        self._last_write = 0.0
        self._lock = threading.Lock()  # one status writer at a time (the loop + final write)
        self.errors = 0

    @property
    def alive(self) -> bool:
        """The I/O round runs in the control loop (an error in one round never ends it)."""
        task = self._task
        return task is not None and task.active

    @property
    def unparsed(self) -> frozenset[str]:
        """Inbox files that did not parse yet and are given their grace."""
        return frozenset(self._unparsed)

    def start(self) -> None:
        """Run :meth:`tick` every ``poll_interval`` in the control loop."""
        if self._task is None:
            loop = self._loop if self._loop is not None else rankloop.shared()
            self._task = loop.every(self.poll_interval, self.tick, name="the I/O round (status.json, inbox)")

    def changed(self) -> None:
        """Something in the status worth writing now (a ledger transition)."""
        self._dirty = True
        task = self._task
        if task is not None:
            task.poke()

    def stop(self, timeout: float = 5.0) -> None:
        """No more rounds; a round under way has ended when this returns (within ``timeout``)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel(timeout)

    def tick(self) -> None:
        """One round of work; safe to call from any thread, never raises."""
        try:
            if self.inbox:
                self.poll_inbox()
            now = time.time()
            if self._dirty or now - self._last_write >= self.heartbeat_interval:
                self.write_status()
            if self.on_tick is not None:
                self.on_tick()
        except Exception as exc:
            self.errors += 1
            if not folder_gone(self.paths.dir, exc, log):
                log.exception("forgather control I/O failed; training goes on")

    def write_status(self, *, ended_at: float | None = None, error: str | None = None) -> None:
        """Write status.json now (with the heartbeat); the final write adds when the job
        ended and its error."""
        with self._lock:
            self._dirty = False
            status = self.status()
            now = time.time()
            status.heartbeat_at = now
            if ended_at is not None:
                status.ended_at = ended_at
                status.error = error
            write_json_atomic(self.paths.status, encode(status))
            self._last_write = now

    def poll_inbox(self) -> int:
        """Take command files from the inbox into the ledger; returns how many."""
        try:
            with os.scandir(self.paths.inbox) as it:
                names = sorted(
                    e.name for e in it if e.name.endswith(".json") and not e.name.startswith((TEMP_PREFIX, ".")) and not e.is_dir(follow_symlinks=False)
                )
        except FileNotFoundError:
            return 0
        for gone in self._unparsed.keys() - set(names):
            del self._unparsed[gone]
        taken = 0
        for name in names[:INBOX_BATCH]:
            path = self.paths.inbox / name
            # A file another user put here is not obeyed: the job and its inbox are its launcher's uid's.
            record = read_json(path, max_bytes=4096, quiet=True, owner=os.geteuid())
            if record is None:
                if self._still_writing(name):
                    continue
                # Once more, aloud: the log says why it goes (or it has just been finished).
                record = read_json(path, max_bytes=4096, owner=os.geteuid())
            self._unparsed.pop(name, None)
            remove_quietly(path)
            taken += 1
            if record is not None:
                self._take(record, name)
        return taken

    def _still_writing(self, name: str) -> bool:
        """True while an unparsable regular file may still be growing (see INBOX_GRACE)."""
        try:
            st = os.lstat(self.paths.inbox / name)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False  # links and folders never become commands: drop them now
        sig = (st.st_size, st.st_mtime_ns)
        now = self._clock()
        seen = self._unparsed.get(name)
        if seen is None or seen[0] != sig:
            self._unparsed[name] = (sig, now)  # new, or changed since: the clock restarts
            return self.inbox_grace > 0
        return now - seen[1] < self.inbox_grace

    def _take(self, raw: object, name: str) -> None:
        """Queue the command a file names, or record why not (a rejected receipt, under the
        file's id when it has a usable one: its sender looks for that)."""
        try:
            record = decode(raw, CommandFile, name=f"command file {name}")
        except RecordError as exc:
            log.warning("refused command file %s: %s", name, exc)
            self.ledger.reject("?", reason=str(exc), source="file")
            return
        cid = record.id if record.id and len(record.id) <= 64 and set(record.id) <= _ID_OK else None
        key = record.key if record.key is not None and len(record.key) <= 128 else None
        command = record.command
        try:
            self.ledger.submit(command if command is not None else repr(None), key=key, source="file", command_id=cid, options=record.options)
        except (LedgerError, UnknownCommand) as exc:
            log.warning("refused command file %s: %s", name, exc)
            self.ledger.reject(str(command), reason=str(exc), key=key, source="file", command_id=cid)
