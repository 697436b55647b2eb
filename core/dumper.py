"""A rank's side of ``forgather control stacks``: where it dumps, and how it is asked.

:func:`register` opens the rank's dump file in the job's ``stacks`` folder, registers
``faulthandler`` on :data:`STACK_SIGNAL`, makes the rank's request FIFO
(:class:`_Dumper`) and writes ``stacks/rank-<R>.json`` saying so. The readers, and the
whole protocol, are :mod:`.stacks`.

Every rank loads this at start, so it loads no typed record: the registration is
written here as the plain JSON object :class:`~.records.StacksRegistration` reads
(:func:`registration`; a test holds the two to the same fields), and a rank other than
0 never loads msgspec to be reachable (issue 24).
"""

from __future__ import annotations

import atexit
import faulthandler
import fcntl
import logging
import os
import signal
import stat
import threading
import time
from pathlib import Path
from typing import IO, Any

from forgather_control.core import rankloop
from forgather_control.core.files import NotOurs, ensure_private_dir, foreign, remove_quietly, write_json_atomic
from forgather_control.core.host import local_host, local_pid_ns, process_start_time
from forgather_control.core.jobs import JobPaths

log = logging.getLogger(__name__)

__all__ = ["ANSWER_FRAME", "END_OF_DUMP", "REQUEST_SIGNAL", "STACK_SIGNAL", "register", "registration"]

#: The signal a worker dumps its stacks on (reserved by the worker bootstrap).
STACK_SIGNAL = signal.SIGRTMIN + 5
#: The signal the kernel sends a rank without a control thread when its FIFO gets a request.
REQUEST_SIGNAL = signal.SIGRTMIN + 6
#: The function that answers :data:`REQUEST_SIGNAL`: in such a dump, it and what it
#: called are the main thread's innermost frames, which a reader leaves out (the rank is
#: not there).
ANSWER_FRAME = "_forgather_answers_stacks"
#: The line the listener writes after each dump: the reader then knows it is whole.
END_OF_DUMP = "# end of dump\n"
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

_dump_file: IO[bytes] | None = None
_dumper: _Dumper | None = None


def registration(**fields: Any) -> dict[str, Any]:
    """``stacks/rank-<R>.json`` as :class:`~.records.StacksRegistration` reads it: its
    fields by name, a field without a value left out (as ``records.encode`` leaves it)."""
    return {name: value for name, value in fields.items() if value is not None}


def register(paths: JobPaths, rank: int, *, run: int = 0, launcher: tuple[int, float | None] | None = None) -> Path:
    """Make this process dump its stacks on :data:`STACK_SIGNAL` into the job folder, and
    say where in its record (with its working directory and start time, for the lines of
    its frames). Idempotent; returns the dump file. ``launcher``: (pid, start time) of the
    launcher that answers stacks requests for this process (the CLI then asks it, not us).
    Raises OSError when the folder cannot be written."""
    global _dump_file, _dumper
    folder = paths.dir / "stacks"
    name = f"rank-{int(rank)}-{os.getpid()}.txt"
    if _dump_file is not None and Path(_dump_file.name) == folder / name:
        return folder / name
    ensure_private_dir(folder)
    fh = _open_dump(folder / name)  # kept open: faulthandler writes to it for the process' life
    faulthandler.register(STACK_SIGNAL, file=fh, all_threads=True, chain=False)
    if _dumper is not None:
        _dumper.stop()  # registered to another job before (a process that ran two)
        _dumper = None
    if _dump_file is not None:
        _dump_file.close()
    _dump_file = fh
    # a signal handler is set from the main thread only: registered from another, the loop reads
    in_loop = rankloop.keeps_thread(int(rank)) or threading.current_thread() is not threading.main_thread()
    try:
        _dumper = _Dumper(folder / f"rank-{int(rank)}-{os.getpid()}.fifo", fh, in_loop=in_loop)
    except OSError as exc:  # the signal alone still answers
        log.warning("forgather: rank %s answers stacks requests by signal only (%s)", rank, exc)
    else:
        atexit.unregister(_remove_fifo)  # once, whichever job registered last
        atexit.register(_remove_fifo)
    me = local_host()
    write_json_atomic(
        folder / f"rank-{int(rank)}.json",
        registration(
            host=me.hostname,
            boot_id=me.boot_id,
            pid=os.getpid(),
            pid_start_time=process_start_time(os.getpid()),
            pid_ns=local_pid_ns(),
            rank=int(rank),
            run=int(run),
            dump=name,
            main_thread=threading.main_thread().ident,
            registered_at=time.time(),
            launcher_pid=launcher[0] if launcher is not None else None,
            launcher_start_time=launcher[1] if launcher is not None else None,
            requests=_dumper.path.name if _dumper is not None else None,
            dump_thread=_dumper.ident if _dumper is not None else None,
            cwd=_cwd(),
            started_at=_started_at(),
        ),
    )
    return folder / name


def _remove_fifo() -> None:
    """At this process's normal exit its FIFO goes: nobody reads it any more, and a job of
    thousands of ranks would leave as many behind each run. (A forked child inherits the
    hook, not the FIFO: only the process that made it removes it.)"""
    dumper = _dumper
    if dumper is not None and dumper.pid == os.getpid():
        remove_quietly(dumper.path)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # removed under us: a relative frame is then not read
        return None


def _started_at() -> float | None:
    """When this process started, on the wall clock: its start in /proc (clock ticks since
    boot) rounded up to the next tick, so a file written before the fork is never later
    (the boot clock read before the wall clock errs the same way)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            ticks = int(fh.read().rsplit(b")", 1)[1].split()[19])
        hz = os.sysconf("SC_CLK_TCK")
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        return time.time() - since_boot + (ticks + 1) / hz
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _Dumper:
    """The rank's stack listener: one byte on its FIFO, one dump of every thread, taken
    holding the GIL (safe while other threads run Python), then :data:`END_OF_DUMP`. The
    FIFO is made 0600 in the rank's private stacks folder and opened as itself (never
    through a link), and a descriptor that writes it is kept, so it never reads as
    closed, whoever opened it before.

    Who reads it (:func:`~forgather_control.core.rankloop.keeps_thread`): the control
    loop on rank 0 (``ident``: that thread, which a reader leaves out of the dump); on
    the others the kernel signals the process (:data:`REQUEST_SIGNAL`) and the main
    thread answers from a Python handler (``ident`` None). Raises OSError when the FIFO
    cannot be made."""

    def __init__(self, path: Path, fh: IO[bytes], *, in_loop: bool) -> None:
        self.path, self._fh = path, fh
        self.pid = os.getpid()
        self.ident: int | None = None
        self._task: rankloop.Task | None = None
        remove_quietly(path)  # an earlier process's, with our pid
        os.mkfifo(path, 0o600)
        self._fd = self._open(os.O_RDONLY)
        try:
            self._keep = self._open(os.O_WRONLY)  # never EOF; it raises no signal of its own
            try:
                if in_loop:
                    loop = rankloop.shared()
                    self._task = loop.reader(self._fd, self._serve, name="the stack listener")
                    self.ident = loop.ident
                else:
                    self._by_signal()
            except BaseException:
                os.close(self._keep)
                raise
        except BaseException:
            os.close(self._fd)
            remove_quietly(path)
            raise

    def _open(self, mode: int) -> int:
        return _open_own(self.path, mode, stat.S_IFIFO)

    def _by_signal(self) -> None:
        """The kernel sends :data:`REQUEST_SIGNAL` to this process when a request arrives
        (only the reading descriptor asks for it: a read raises none). System calls it
        interrupts are restarted; the handler runs in the main thread."""
        signal.signal(REQUEST_SIGNAL, self._forgather_answers_stacks)
        signal.siginterrupt(REQUEST_SIGNAL, False)
        fcntl.fcntl(self._fd, fcntl.F_SETOWN, self.pid)
        fcntl.fcntl(self._fd, getattr(fcntl, "F_SETSIG", 10), int(REQUEST_SIGNAL))
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) | os.O_ASYNC)

    def _forgather_answers_stacks(self, signum: int, frame: object) -> None:  # its name is ANSWER_FRAME
        if os.getpid() == self.pid:  # a forked child inherits the handler, never the signal
            self._serve()

    def _serve(self) -> None:
        if not self._drain():
            return
        try:
            faulthandler.dump_traceback(file=self._fh, all_threads=True)
            self._fh.write(END_OF_DUMP.encode())
        except (OSError, ValueError):  # the dump file closed under us: we are being replaced
            return

    def _drain(self) -> bool:
        """Read every request waiting (those that piled up get one dump); True when any."""
        asked = False
        try:
            while os.read(self._fd, 4096):
                asked = True
        except BlockingIOError:
            pass
        except OSError:  # closed under us: we are being replaced
            return False
        return asked

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        else:
            signal.signal(REQUEST_SIGNAL, signal.SIG_IGN)  # a request still on its way must not end the process
        os.close(self._fd)
        os.close(self._keep)
        remove_quietly(self.path)


def _open_dump(path: Path) -> IO[bytes]:
    """The dump file, opened for appending as itself (:func:`_open_own`), so what the
    handler writes goes nowhere else."""
    return open(path, "ab", buffering=0, opener=lambda name, flags: _open_own(Path(name), flags, stat.S_IFREG))


_KINDS = {stat.S_IFREG: "regular file", stat.S_IFIFO: "FIFO"}


def _open_own(path: Path, flags: int, kind: int) -> int:
    """``path`` opened as itself: never through a link, never waiting on a FIFO's other
    end, and refused when it is not a ``kind`` (``stat.S_IFREG``, ``stat.S_IFIFO``) or
    another user made it (:class:`NotOurs`), whoever could write in the folder before."""
    fd = os.open(path, flags | _O_NOFOLLOW | _O_NONBLOCK, 0o600)
    try:
        st = os.fstat(fd)
        if stat.S_IFMT(st.st_mode) != kind:
            raise OSError(f"{path} is not a {_KINDS[kind]}; a rank's stacks use only a {_KINDS[kind]} of its own")
        if st.st_uid != os.geteuid():
            raise NotOurs(f"{foreign(path, st.st_uid)}: a rank's stacks use only files of its own")
    except BaseException:
        os.close(fd)
        raise
    return fd
