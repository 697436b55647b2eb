"""Kill a process tree: a root and every descendant it had, and wait for them.

A process group is not a tree: a worker's child may call ``setsid`` (or ``setpgid``) and
leave it, and a descendant whose parent died is reparented (to init, or to a child
subreaper), so walking the root's children at the end misses it. A ``ProcessTree``
therefore remembers every process from the moment it is seen (``track()``, called while
the tree runs), and at the end (``kill()``) stops what it knows with SIGSTOP, looks again
until no new process shows up (a stopped process cannot fork), sends SIGKILL to all of
them, waits, and returns the survivors.

A pid is never signalled on its number alone: every signal goes through a
``psutil.Process``, which checks the process's start time first, so a pid recycled by
an unrelated process is left alone. A session's members are signalled only while a
process already known to be ours is still in it (a session id cannot be recycled while
a member lives).
"""

from __future__ import annotations

import os
import signal
import time

import psutil

__all__ = ["ProcessTree", "is_alive"]


def is_alive(p: psutil.Process) -> bool:
    """Running and not a zombie. False for a pid that another process now has."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _exists(p: psutil.Process) -> bool:
    """Alive or a zombie not yet reaped: either way its pid is still its own."""
    try:
        return p.is_running()
    except psutil.Error:
        return False


class ProcessTree:
    """The processes under ``root``, each remembered from the moment it is seen.

    ``include_root``: the root is part of the tree (a child we started); False when the
    root is this process itself (a launcher tracking its own descendants).
    ``session``: a session whose members belong to the tree too, found by scanning: the
    session of a root started with ``start_new_session``, which catches a member whose
    parent died before ``track()`` saw it.
    """

    def __init__(self, root: int, *, include_root: bool = True, session: int | None = None) -> None:
        self.session = session
        self._seen: set[psutil.Process] = set()
        try:
            self.root: psutil.Process | None = psutil.Process(root)
        except psutil.Error:
            self.root = None
        if include_root and self.root is not None:
            if self.root.pid == os.getpid():
                raise ValueError("a tree that includes this process cannot be killed by it")
            self._seen.add(self.root)
        self._exclude = None if include_root else self.root

    @property
    def known(self) -> list[psutil.Process]:
        """Every process seen so far, dead or alive."""
        return sorted(self._seen, key=lambda p: p.pid)

    def alive(self) -> list[psutil.Process]:
        """The processes seen so far that still run."""
        return [p for p in self.known if is_alive(p)]

    def track(self) -> list[psutil.Process]:
        """Look at the tree now and remember every process in it; returns those alive."""
        table = _process_table()
        if self._owns_session():
            self._remember(p for p, _, _ in table if _in_session(p, self.session))
        children: dict[int, list[tuple[psutil.Process, float]]] = {}
        for p, ppid, born in table:
            children.setdefault(ppid, []).append((p, born))
        todo = [p for p in (self.root, *self._seen) if p is not None and _exists(p)]
        while todo:
            parent = todo.pop()
            try:
                born = parent.create_time()
            except psutil.Error:
                continue
            # a "child" older than its parent is a recycled pid's, not this parent's
            found = [c for c, c_born in children.get(parent.pid, ()) if c_born >= born and c not in self._seen]
            todo += self._remember(found)
        return self.alive()

    def _remember(self, procs) -> list[psutil.Process]:
        new = [p for p in procs if p not in self._seen and p != self._exclude]
        self._seen.update(new)
        return new

    def kill(self, timeout: float = 10.0) -> list[psutil.Process]:
        """SIGKILL every process of the tree, wait up to ``timeout`` seconds for them,
        and return the ones still alive (nothing, normally)."""
        stopped: set[psutil.Process] = set()
        for _ in range(1000):  # bounded: a tree cannot grow while its members are stopped
            self.track()
            new = [p for p in self._seen if p not in stopped]
            if not new:
                break
            for p in new:
                _send(p, signal.SIGSTOP)
            stopped.update(new)
        targets = [p for p in self._seen if _exists(p)]
        for p in targets:
            _send(p, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        left = targets
        while True:
            # reaps our own children; a zombie of another parent counts as gone
            _gone, still = psutil.wait_procs(left, timeout=0.1)
            left = [p for p in still if is_alive(p)]
            if not left or time.monotonic() >= deadline:
                return left

    def _owns_session(self) -> bool:
        """Is ``session`` still ours? Only while a process we know (its pid not recycled)
        is in it: then the session id cannot have been reused by a stranger."""
        if self.session is None:
            return False
        return any(_exists(p) and _in_session(p, self.session) for p in (self.root, *self._seen) if p is not None and p != self._exclude)


def _process_table() -> list[tuple[psutil.Process, int, float]]:
    """(process, parent pid, start time) of every process now. Asked of each process
    rather than through ``process_iter(attrs)``, whose ``info`` lives on objects psutil
    shares between threads (Ray's, in a test that lists through Ray, overwrote it)."""
    table = []
    for p in psutil.process_iter():
        try:
            table.append((p, p.ppid(), p.create_time()))
        except psutil.Error:
            continue
    return table


def _in_session(p: psutil.Process, session: int | None) -> bool:
    try:
        return os.getsid(p.pid) == session
    except OSError:
        return False


def _send(p: psutil.Process, sig: int) -> None:
    if p.pid == os.getpid():
        return
    try:
        p.send_signal(sig)  # checks the start time: never a recycled pid
    except psutil.Error:
        pass
