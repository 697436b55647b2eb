"""A worker's one control thread: timers and readable descriptors, one selector loop.

Everything control does in a training process off its training thread runs here: the
stack listener's FIFO (:mod:`.stacks`), the launcher watch (``callback/watchdog.py``)
and, on rank 0, the I/O round of status.json, heartbeat and inbox
(``callback/publisher.py``) and the HTTP server (:meth:`ControlLoop.host`: the loop then
runs as an asyncio loop with the server as one of its tasks, so rank 0 serves without a
thread of its own). One daemon thread, ``forgather-control``, started with the first
task and gone after the last one is cancelled and the hosted server has ended; a process
that runs no control has none.

A task is a timer (``every``: called every ``interval`` seconds, or at once when
poked) or a reader (``reader``: called when its descriptor is readable). Tasks run one
at a time, in the loop's thread; a task that raises is logged and kept. Readers go
first in a round, so a stack dump asked for waits at most for the task running when the
request came. :meth:`Task.cancel` returns once the task is out of the loop: it never
runs again and is not running (unless cancelled from within its own run).
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["THREAD_NAME", "ControlLoop", "Task", "keeps_thread", "shared"]

#: The thread's name (a stack dump and ``threading.enumerate`` show it).
THREAD_NAME = "forgather-control"
#: How long ``cancel`` waits for the task's current run to end (seconds).
CANCEL_WAIT = 5.0


class Task:
    """One timer or reader of a :class:`ControlLoop`."""

    def __init__(self, loop: ControlLoop, fn: Callable[[], object], *, interval: float | None, fd: int | None, name: str) -> None:
        self._loop = loop
        self.fn = fn
        self.interval = interval
        self.fd = fd
        self.name = name
        #: when the timer is due next (the loop's monotonic clock)
        self.due = time.monotonic() + interval if interval is not None else float("inf")
        self.cancelled = False
        self.running = False

    def poke(self) -> None:
        """Run this timer at the loop's next round instead of when it is due."""
        self._loop._poke(self)

    def cancel(self, timeout: float = CANCEL_WAIT) -> None:
        """Out of the loop: it never runs again, and (from another thread) is not running
        when this returns, within ``timeout``."""
        self._loop._cancel(self, timeout)

    @property
    def active(self) -> bool:
        """Still in a loop whose thread runs."""
        return not self.cancelled and self._loop.alive


class Hosted:
    """A coroutine run by :meth:`ControlLoop.host`: ``done`` is set when it has returned
    or raised (``error``)."""

    def __init__(self, serve: Callable[[], Coroutine[Any, Any, object]]) -> None:
        self.serve = serve
        self.done = threading.Event()
        self.error: BaseException | None = None


class ControlLoop:
    """The selector loop and its thread (see the module's docstring)."""

    def __init__(self, name: str = THREAD_NAME) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._tasks: list[Task] = []
        self._thread: threading.Thread | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        #: the coroutines hosted (waiting to start, or running)
        self._hosted: list[Hosted] = []

    @property
    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def ident(self) -> int | None:
        """The loop thread's ident while it runs (a stack dump names threads by it)."""
        thread = self._thread
        return thread.ident if thread is not None else None

    @property
    def in_loop(self) -> bool:
        """The caller is the loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def every(self, interval: float, fn: Callable[[], object], *, name: str) -> Task:
        """Call ``fn()`` every ``interval`` seconds (first after one interval) in the loop."""
        return self._add(Task(self, fn, interval=max(0.0, float(interval)), fd=None, name=name))

    def reader(self, fd: int, fn: Callable[[], object], *, name: str) -> Task:
        """Call ``fn()`` in the loop whenever ``fd`` (non-blocking, owned by the caller) is readable."""
        return self._add(Task(self, fn, interval=None, fd=fd, name=name))

    def host(self, serve: Callable[[], Coroutine[Any, Any, object]]) -> Hosted:
        """Run ``serve()`` in the loop's thread as a task of an asyncio loop, the timers
        and readers going on beside it, until it returns (the caller ends it, e.g.
        uvicorn's ``should_exit``); returns at once. Several may be hosted (a process
        running two Controllers). The tasks run between the servers' callbacks, so a
        task holds up serving while it runs (they are short: a status write, a stack
        dump)."""
        hosted = Hosted(serve)
        with self._cond:
            self._hosted.append(hosted)
            self._ensure_thread()
            self._wake()
        return hosted

    # -- the caller's side ------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._sel = selectors.DefaultSelector()
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._sel.register(self._wake_r, selectors.EVENT_READ, None)
            self._thread = threading.Thread(target=self._run, args=(self._sel, self._wake_r, self._wake_w), name=self.name, daemon=True)
            self._thread.start()

    def _add(self, task: Task) -> Task:
        with self._cond:
            self._ensure_thread()
            assert self._sel is not None
            if task.fd is not None:
                self._sel.register(task.fd, selectors.EVENT_READ, task)
            self._tasks.append(task)
            self._wake()
        return task

    def _poke(self, task: Task) -> None:
        with self._cond:
            if not task.cancelled and task.due > 0.0:  # 0: poked already, the loop is awake for it
                task.due = 0.0
                self._wake()

    def _cancel(self, task: Task, timeout: float) -> None:
        with self._cond:
            if not task.cancelled:
                task.cancelled = True
                self._tasks.remove(task)
                if task.fd is not None and self._sel is not None:
                    try:
                        self._sel.unregister(task.fd)
                    except (KeyError, ValueError, OSError):
                        pass
                self._wake()
            if not self.in_loop:
                self._cond.wait_for(lambda: not task.running, timeout)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except (BlockingIOError, OSError):  # full: it is awake already; closed: it is ending
            pass

    # -- the loop's side ----------------------------------------------------------------------
    def _run(self, sel: selectors.BaseSelector, wake_r: int, wake_w: int) -> None:
        try:
            while True:
                with self._cond:
                    hosting = bool(self._hosted)
                    if not self._tasks and not hosting:  # the last task is gone, and what it hosted: so is the thread
                        self._thread = None
                        self._sel = None
                        self._wake_r = self._wake_w = -1
                        return
                    due = min((t.due for t in self._tasks), default=float("inf"))
                if hosting:
                    self._host(wake_r)
                    continue
                timeout = max(0.0, due - time.monotonic()) if due != float("inf") else None
                events = sel.select(timeout)
                ready = [key.data for key, _ in events if key.data is not None]
                if any(key.fd == wake_r for key, _ in events):
                    _drain(wake_r)
                for task in ready:
                    self._call(task)
                self._timers()
        finally:
            sel.close()
            os.close(wake_r)
            os.close(wake_w)

    def _timers(self) -> None:
        now = time.monotonic()
        with self._cond:
            timers = [t for t in self._tasks if t.interval is not None and t.due <= now]
        for task in timers:
            task.due = time.monotonic() + (task.interval or 0.0)
            self._call(task)

    def _host(self, wake_r: int) -> None:
        """Run the hosted coroutines as an asyncio loop's tasks, until every one has
        ended; the tasks go on in the same rounds as :meth:`_run`'s, woken by asyncio's
        own selector. A coroutine hosted meanwhile joins at the next round."""
        import asyncio  # here: only a process that hosts a server (rank 0) loads it

        async def serve(hosted: Hosted) -> None:
            try:
                await hosted.serve()
            except BaseException as exc:  # noqa: BLE001 - uvicorn calls sys.exit(1) when it cannot bind: kept, never let out of the task (asyncio would end the loop with it)
                hosted.error = exc

        async def main() -> None:
            loop = asyncio.get_running_loop()
            running: dict[asyncio.Task[None], Hosted] = {}
            while True:
                woke: asyncio.Future[None] = loop.create_future()
                ready: set[int] = set()  # the descriptors asyncio's select found readable

                def wake(fd: int, woke: asyncio.Future[None] = woke, ready: set[int] = ready) -> None:
                    ready.add(fd)
                    if not woke.done():
                        woke.set_result(None)

                with self._cond:  # registered under the lock: a task still listed has its descriptor open
                    for hosted in self._hosted:
                        if hosted not in running.values():
                            running[loop.create_task(serve(hosted))] = hosted
                    if not running:
                        return
                    readers = [t for t in self._tasks if t.fd is not None]
                    due = min((t.due for t in self._tasks), default=float("inf"))
                    fds = [wake_r, *(t.fd for t in readers if t.fd is not None)]
                    for fd in fds:
                        loop.add_reader(fd, wake, fd)
                try:
                    timeout = max(0.0, due - time.monotonic()) if due != float("inf") else None
                    await asyncio.wait({woke, *running}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for fd in fds:
                        loop.remove_reader(fd)  # a descriptor closed meanwhile is dropped quietly
                for ended in [t for t in running if t.done()]:
                    hosted = running.pop(ended)
                    with self._cond:
                        self._hosted.remove(hosted)
                    hosted.done.set()
                if wake_r in ready:
                    _drain(wake_r)
                for task in readers:
                    if task.fd in ready:
                        self._call(task)
                self._timers()

        try:
            asyncio.run(main())
        except Exception as exc:  # the loop itself failed: what it hosted has ended
            log.exception("forgather control: the control loop's server loop failed")
            with self._cond:
                ended, self._hosted = self._hosted, []
            for hosted in ended:
                hosted.error = hosted.error or exc
                hosted.done.set()

    def _call(self, task: Task) -> None:
        with self._cond:
            if task.cancelled:
                return
            task.running = True
        try:
            task.fn()
        except Exception:  # one task's error never ends the loop
            log.exception("forgather control: %s failed; the control loop goes on", task.name)
        finally:
            with self._cond:
                task.running = False
                self._cond.notify_all()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass


_shared: tuple[int, ControlLoop] | None = None
_shared_lock = threading.Lock()


def shared() -> ControlLoop:
    """This process's control loop (a forked child gets its own)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            _shared = (os.getpid(), ControlLoop())
        return _shared[1]


def keeps_thread(rank: int) -> bool:
    """Whether a rank runs this thread: rank 0 only (its HTTP server and I/O round live
    here). Every other rank has two duties off its training thread, a stack request and
    its parent's death, and the kernel turns both into signals its main thread answers
    (``core/stacks.py``, ``callback/watchdog.py``): the one thread control adds there is
    the check's gloo worker (issue 24's budget)."""
    return rank == 0
