"""Rank 0's I/O, off the training thread: status.json, heartbeat, and the inbox.

One daemon thread wakes every ``poll_interval`` (or at once when the ledger changes),
picks up command files from ``inbox/``, and rewrites status.json when something changed
or the heartbeat is due. Any error here is logged and recorded; it never reaches the
training loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from forgather.control import JobPaths, Ledger, LedgerError, UnknownCommand, read_json, write_json_atomic
from forgather.control.files import TEMP_PREFIX, remove_quietly

log = logging.getLogger(__name__)

#: At most this many inbox files are taken per poll; the rest wait for the next one.
INBOX_BATCH = 64
_ID_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class Publisher:
    def __init__(
        self,
        *,
        paths: JobPaths,
        ledger: Ledger,
        status: Callable[[], dict[str, Any]],
        poll_interval: float = 0.5,
        heartbeat_interval: float = 2.0,
        inbox: bool = True,
    ) -> None:
        self.paths = paths
        self.ledger = ledger
        self.status = status
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.inbox = inbox
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dirty = True
        self._last_write = 0.0
        self._lock = threading.Lock()  # one status writer at a time (thread + final write)
        self._thread = threading.Thread(target=self._loop, name="forgather-control-io", daemon=True)
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def changed(self) -> None:
        """Something in the status worth writing now (a ledger transition)."""
        self._dirty = True
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.tick()

    def tick(self) -> None:
        """One round of work; safe to call from any thread, never raises."""
        try:
            if self.inbox:
                self.poll_inbox()
            now = time.time()
            if self._dirty or now - self._last_write >= self.heartbeat_interval:
                self.write_status()
        except Exception:
            self.errors += 1
            log.exception("forgather control I/O failed; training goes on")

    def write_status(self, extra: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._dirty = False
            data = self.status()
            now = time.time()
            data["heartbeat_at"] = now
            if extra:
                data.update(extra)
            write_json_atomic(self.paths.status, data)
            self._last_write = now

    def poll_inbox(self) -> int:
        """Take command files from the inbox into the ledger; returns how many."""
        try:
            names = sorted(n for n in os.listdir(self.paths.inbox) if n.endswith(".json") and not n.startswith((TEMP_PREFIX, ".")))
        except FileNotFoundError:
            return 0
        taken = 0
        for name in names[:INBOX_BATCH]:
            path = self.paths.inbox / name
            record = read_json(path, max_bytes=4096)
            remove_quietly(path)
            taken += 1
            if record is None:
                continue  # read_json said why
            self._take(record, name)
        return taken

    def _take(self, record: dict, name: str) -> None:
        cid = record.get("id")
        if not (isinstance(cid, str) and 0 < len(cid) <= 64 and set(cid) <= _ID_OK):
            cid = None
        key = record.get("key") if isinstance(record.get("key"), str) and len(record["key"]) <= 128 else None
        command = record.get("command")
        try:
            self.ledger.submit(command if isinstance(command, str) else repr(command), key=key, source="file", command_id=cid)
        except (LedgerError, UnknownCommand) as exc:
            log.warning("refused command file %s: %s", name, exc)
            self.ledger.reject(str(command), reason=str(exc), key=key, source="file", command_id=cid)
