"""Where is every rank? The Python stacks of every thread, dumped by the ranks themselves.

Each worker appends its dumps to a file in the job folder and says so in
``stacks/rank-<R>.json`` (host, pid, the file): the rank's side is :mod:`.dumper`, the
readers are here. It answers two ways, and needs no ptrace
permission, which clusters usually deny:

- A FIFO beside the file (``rank-<R>-<pid>.fifo``): a byte written there makes the rank
  dump every thread with ``faulthandler.dump_traceback`` while it holds the GIL, so no
  other thread changes its frames under the dump. Rank 0 reads it in its control thread
  (:mod:`.rankloop`, the one that also serves HTTP); the other ranks have no such thread
  (:func:`~forgather_control.core.rankloop.keeps_thread`): the kernel signals them when a
  byte arrives (``O_ASYNC``, ``F_SETSIG``: :data:`REQUEST_SIGNAL`), and their main thread
  dumps from a Python handler, between two bytecodes (its own frame is left out by the
  reader). This is how a rank is asked first; the request waits at most for the loop's
  round under way, or for the main thread's next bytecode.
- ``faulthandler`` registered on a signal reserved for this (:data:`STACK_SIGNAL`). Its
  C-level handler answers even when no Python runs where the FIFO is read (the main
  thread stuck in C, or holding the GIL there), but it walks the frames of threads that
  may be running Python meanwhile: asked that way while a thread wrote files, a rank
  crashed (SIGSEGV) about once in 30 dumps. So the signal is sent only when the dump has
  not started within :data:`GIL_WAIT`: then the thread that would dump runs no Python.
  On rank 0 that means a thread holds the GIL, stuck in C, and the walk is safe; on the
  others it means the main thread is in C (a collective that hangs), and the walk races
  only with what other threads of the user's run Python then.

A process is signalled only when it is the one its record names (host, boot, pid and
start time) *and* the kernel says it catches the signal: the default action of a
real-time signal is to terminate, so a recycled pid or a worker that has not registered
yet must never get it. A record is not proof either (whoever writes the folder names any
pid, and PID 1 of a systemd host gives this signal a meaning of its own): the process
must be proven a rank of the job (:func:`not_a_rank`), checked again at the signal.

Across nodes: the CLI posts a request in the job folder (``stacks/requests/<id>.json``);
each node's launcher answers with its own ranks' dumps
(``stacks/answers/<id>/node-<n>.json``). Everything read back is checked.

Each frame carries its line of code, read by whoever dumps the rank (its node's launcher,
the CLI on its host, a Ray task there), never where the CLI runs: a relative file is
resolved against the working directory the rank registered, and a file changed (its
ctime) after the rank started (registered too, to the clock tick) is marked changed, as
the line may not be the one it runs. The path is the dump's word: only a regular ``.py``
file the rank's user may read is opened (without blocking), one line of it, cut short.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import stat
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from forgather_control.core.dumper import ANSWER_FRAME, END_OF_DUMP, REQUEST_SIGNAL, STACK_SIGNAL
from forgather_control.core.files import TEMP_PREFIX, RecordError, ensure_private_dir, remove_quietly, write_json_atomic
from forgather_control.core.host import local_host
from forgather_control.core.jobs import JobPaths
from forgather_control.core.liveness import pid_alive, same_pid_namespace
from forgather_control.core.records import (
    FrameRecord,
    Identity,
    StackAnswer,
    StackRank,
    StacksRegistration,
    ThreadRecord,
    decode,
    encode,
    load,
)

log = logging.getLogger(__name__)

__all__ = [
    "ANSWER_FRAME",
    "END_OF_DUMP",
    "REQUEST_SIGNAL",
    "STACK_SIGNAL",
    "Frame",
    "RankStacks",
    "Thread",
    "answer",
    "answers",
    "ask",
    "dump",
    "group",
    "local_workers",
    "not_a_rank",
    "parse_dump",
    "rank_list",
    "requests",
    "source_line",
]

#: how many frames deep a dump's innermost frames may hold it (it calls the dump)
_ANSWER_DEPTH = 3
#: How long a rank has to write its dump (seconds).
DUMP_TIMEOUT = 3.0
#: How long a rank's listener has to start its dump before the signal is sent instead.
GIL_WAIT = 1.0
_MAX_DUMP = 1 << 20
#: A frame's line of code is cut to this many characters.
MAX_SOURCE = 200
#: At most this much of a source file is read for one line (a line further in is not shown).
_MAX_SOURCE_READ = 4 << 20
#: A dump is whole once its file has not grown for this long (the handler writes it in
#: one go, but a busy machine may pause the process between two writes).
_QUIET = 0.25
_FRAME = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+) in (?P<func>.+)$')
_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-f]+)", re.IGNORECASE)
_ID = re.compile(r"[0-9a-f]{12}")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


@dataclass(frozen=True)
class Frame:
    """A frame as its rank saw it, and its line of code as read on the rank's host
    (:func:`source_line`); ``changed``: its file changed since the rank started, so the
    line may not be the one it runs (None: not known)."""

    file: str
    line: int
    func: str
    source: str | None = None
    changed: bool | None = None

    def __str__(self) -> str:
        return f'File "{self.file}", line {self.line}, in {self.func}'


@dataclass(frozen=True)
class Thread:
    """One thread's stack, outermost frame first; ``main`` for the thread that runs the
    script (the one a person asks about)."""

    ident: int
    main: bool
    frames: tuple[Frame, ...]


@dataclass
class RankStacks:
    """One rank's answer: its threads' stacks, or why there are none."""

    rank: int
    host: str
    pid: int | None
    threads: list[Thread] = field(default_factory=list)
    error: str | None = None

    @property
    def main(self) -> Thread | None:
        return next((t for t in self.threads if t.main), None)

    @classmethod
    def from_record(cls, raw: object) -> RankStacks | None:
        """A rank's stacks as another host sent them (checked; None when unusable)."""
        try:
            rec = decode(raw, StackRank, name="a rank's stacks")
        except RecordError:
            return None
        return _from_record(rec)

    def as_record(self) -> StackRank:
        return StackRank(
            rank=self.rank,
            host=self.host,
            pid=self.pid,
            error=self.error,
            threads=[
                ThreadRecord(
                    ident=t.ident,
                    main=t.main,
                    frames=[FrameRecord(file=f.file, line=f.line, func=f.func, source=f.source, changed=f.changed) for f in t.frames],
                )
                for t in self.threads
            ],
        )


# -- the worker side ----------------------------------------------------------------------
# -- finding and asking local workers -------------------------------------------------------
@dataclass(frozen=True)
class Worker:
    """A registered worker (from its checked record)."""

    rank: int
    host: str
    pid: int
    dump: Path
    main_thread: int | None
    #: the live launcher that answers for this worker (None: nobody does, ask directly)
    launcher: int | None = None
    #: the FIFO it listens on (None: a worker that answers the signal only) and the thread
    #: that reads it, when not the main thread (rank 0's control thread)
    requests: Path | None = None
    dump_thread: int | None = None
    #: its working directory and start time (None: an older release's record)
    cwd: str | None = None
    started_at: float | None = None


def local_workers(paths: JobPaths, *, pids: Collection[int] | None = None) -> list[Worker]:
    """Registered workers of the job that run on this host now and catch the stack
    signal (``pids``: only these processes, e.g. a launcher's own)."""
    folder = paths.dir / "stacks"
    try:
        names = sorted(n for n in os.listdir(folder) if re.fullmatch(r"rank-\d+\.json", n))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            rec = load(folder / name, StacksRegistration)
        except RecordError:
            continue
        if rec is None or rec.pid is None or rec.rank is None or rec.host is None or not same_pid_namespace(rec) or not pid_alive(rec):
            continue
        if pids is not None and rec.pid not in pids:
            continue
        dump = rec.dump
        if dump is None or not re.fullmatch(r"rank-\d+-\d+\.txt", dump) or not catches(rec.pid, STACK_SIGNAL):
            continue
        if not_a_rank(rec.pid, folder / dump) is not None:
            continue
        lpid = rec.launcher_pid
        launcher = lpid if lpid is not None and pid_alive(Identity(pid=lpid, pid_start_time=rec.launcher_start_time)) else None
        requests = folder / rec.requests if rec.requests is not None and re.fullmatch(r"rank-\d+-\d+\.fifo", rec.requests) else None
        out.append(Worker(rec.rank, rec.host, rec.pid, folder / dump, rec.main_thread, launcher, requests, rec.dump_thread, rec.cwd, rec.started_at))
    return out


def catches(pid: int, sig: int) -> bool:
    """True when the kernel says process ``pid`` has a handler for ``sig`` (Linux:
    the SigCgt mask of /proc/<pid>/status). Elsewhere False: never risk the default action."""
    try:
        with open(f"/proc/{int(pid)}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def not_a_rank(pid: int, dump_file: Path) -> str | None:
    """Why process ``pid`` is not proven a rank of the job whose ``stacks/`` holds
    ``dump_file``; None when it is: it holds that very file open (the descriptor
    :func:`register` keeps for faulthandler), runs as the job folder's owner (real,
    effective and saved uid), and is PID 1 of no namespace. Reads /proc/<pid>/fd, which
    only its own uid and root may: anyone else proves nothing, and signals nothing."""
    if pid == 1:
        return "it is PID 1"
    try:
        with open(f"/proc/{int(pid)}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        uids = {int(u) for u in fields["Uid"].split()[:3]}
        nspids = fields.get("NSpid", str(pid)).split()
        owner = os.stat(dump_file.parent.parent).st_uid
        held = os.stat(dump_file)
    except (OSError, KeyError, ValueError) as exc:
        return f"cannot tell ({exc})"
    if nspids[-1] == "1":
        return "it is PID 1 of its namespace"
    if uids != {owner}:
        return f"it runs as uid {max(uids - {owner})}, the job folder's owner is uid {owner}"
    try:
        fds = os.listdir(f"/proc/{int(pid)}/fd")
    except OSError as exc:
        return f"cannot see its open files ({exc.strerror})"
    for fd in fds:
        try:
            st = os.stat(f"/proc/{int(pid)}/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            return None
    return "it does not hold the job's dump file open"


def _signal(pid: int, dump_file: Path) -> None:
    """Send the stack signal to ``pid`` once it is proven a rank (:func:`not_a_rank`),
    through a pidfd opened before the proof where there is one: a pid recycled in
    between then gets nothing. Raises PermissionError with the reason when not proven."""
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal") else None
    try:
        why = not_a_rank(pid, dump_file)
        if why is not None:
            raise PermissionError(f"not signalled: not a rank of this job ({why})")
        if pidfd is None:
            os.kill(pid, STACK_SIGNAL)
        else:
            signal.pidfd_send_signal(pidfd, STACK_SIGNAL)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def dump(workers: Iterable[Worker], *, timeout: float = DUMP_TIMEOUT) -> list[RankStacks]:
    """Ask each worker proven a rank of its job for its stacks and read what it appended
    to its dump file: through its FIFO first, by signal when its listener has not
    started the dump within :data:`GIL_WAIT` (or the worker has none); a worker that writes nothing
    within ``timeout`` says so. Each frame comes with its line of code, read here, on the
    ranks' host (:func:`source_line`)."""
    out: dict[int, RankStacks] = {}
    asked = {w.rank: w for w in workers}
    pending: dict[int, tuple[Worker, int]] = {}
    by_thread: dict[int, float] = {}  # rank -> when its listener was asked
    for w in asked.values():
        try:
            offset = w.dump.stat().st_size
            if _ask_listener(w):
                by_thread[w.rank] = time.monotonic()
            else:
                _signal(w.pid, w.dump)
            pending[w.rank] = (w, offset)
        except (FileNotFoundError, ProcessLookupError, PermissionError) as exc:
            out[w.rank] = _not_asked(w, exc)
    deadline = time.monotonic() + timeout
    grown: dict[int, tuple[int, float]] = {}  # rank -> (size, when it last changed)
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        now = time.monotonic()
        for rank, (w, offset) in list(pending.items()):
            try:
                size = w.dump.stat().st_size
            except OSError:
                continue
            if size == offset and rank in by_thread and now - by_thread[rank] >= GIL_WAIT:
                # its listener runs no Python: a thread holds the GIL, stuck in C, or the main
                # thread, which listens on ranks other than 0, is in C (see the module's docstring)
                del by_thread[rank]
                try:
                    _signal(w.pid, w.dump)
                except (FileNotFoundError, ProcessLookupError, PermissionError) as exc:
                    out[rank] = _not_asked(w, exc)
                    del pending[rank]
                continue
            if size != grown.get(rank, (offset, 0.0))[0]:
                grown[rank] = (size, now)
            if size <= offset:
                continue
            try:
                text = _read_from(w.dump, offset)
            except OSError as exc:
                out[rank] = RankStacks(rank, w.host, w.pid, error=f"its dump file cannot be read ({exc.strerror or exc})")
                del pending[rank]
                continue
            if END_OF_DUMP not in text and now - grown[rank][1] < _QUIET:
                continue  # a signal's dump is whole once the file has stopped growing
            threads = parse_dump(text, main_thread=w.main_thread, dump_thread=w.dump_thread)
            if w.main_thread is not None and not any(t.ident == w.main_thread for t in threads):
                # faulthandler writes the main thread last: a writer descheduled mid-dump
                # (a loaded machine) looks quiet without being done. Wait on.
                grown[rank] = (size, now)
                continue
            out[rank] = RankStacks(rank, w.host, w.pid, threads=threads)
            del pending[rank]
    for rank, (w, offset) in pending.items():
        # a dump without its main thread is not shown: which thread is which is unknown
        why = "wrote its stacks without the main thread" if grown.get(rank, (offset,))[0] > offset else "wrote no stacks"
        out[rank] = RankStacks(rank, w.host, w.pid, error=f"{why} within {timeout:g}s")
    lines: _Lines = {}
    for s in out.values():
        s.threads = [_with_source(t, asked[s.rank], lines) for t in s.threads]
    return [out[r] for r in sorted(out)]


def _ask_listener(w: Worker) -> bool:
    """Write one byte to ``w``'s FIFO; False when it has none, or the FIFO is not one (a
    link, a file, another uid's than its dump file's), or nobody reads it."""
    if w.requests is None:
        return False
    try:
        fd = os.open(w.requests, os.O_WRONLY | _O_NONBLOCK | _O_NOFOLLOW)
    except OSError:  # gone, a link, or no reader (ENXIO): the process is not there to ask
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.lstat(w.dump).st_uid:
            return False
        return os.write(fd, b"d") == 1
    except OSError:
        return False
    finally:
        os.close(fd)


def _not_asked(w: Worker, exc: OSError) -> RankStacks:
    if isinstance(exc, FileNotFoundError):
        why = "its dump file is gone"
    elif isinstance(exc, ProcessLookupError):
        why = "its process is gone"
    else:
        why = str(exc) if str(exc).startswith("not signalled") else "no permission to signal its process (another user's?)"
    return RankStacks(w.rank, w.host, w.pid, error=why)


def parse_dump(text: str, *, main_thread: int | None = None, dump_thread: int | None = None) -> list[Thread]:
    """faulthandler's dump -> each thread, outermost frame first (it prints the most
    recent call first; a person reads down to where the thread is). The main thread is
    the one with ``main_thread``'s ident, else the one not started by ``threading``.

    Only the first dump counts (a late answer of the dump thread may follow a signal's):
    it ends at :data:`END_OF_DUMP`, or after the main thread, which faulthandler writes
    last. ``dump_thread`` (the rank's own thread that wrote it) is not shown, nor the
    handler a main thread answered from (:data:`ANSWER_FRAME`, and the frames it called)."""
    raw: list[tuple[int, list[Frame]]] = []
    for line in text.split(END_OF_DUMP, 1)[0].splitlines():
        m = _THREAD.match(line)
        if m:
            if main_thread is not None and any(ident == main_thread for ident, _ in raw):
                break
            raw.append((int(m[1], 16), []))
            continue
        f = _FRAME.match(line)
        if f and raw:
            raw[-1][1].append(Frame(f["file"], int(f["line"]), f["func"]))
    for _, frames in raw:  # most recent first: the handler and what it called to dump
        at = next((i for i, f in enumerate(frames[:_ANSWER_DEPTH]) if f.func == ANSWER_FRAME), None)
        if at is not None:
            del frames[: at + 1]
    threads = [(ident, tuple(reversed(frames))) for ident, frames in raw if dump_thread is None or ident != dump_thread]
    known = main_thread is not None and any(ident == main_thread for ident, _ in threads)

    def is_main(ident: int, frames: tuple[Frame, ...]) -> bool:
        if known:
            return ident == main_thread
        return bool(frames) and not (frames[0].func == "_bootstrap" and frames[0].file.endswith("threading.py"))

    return sorted((Thread(ident, is_main(ident, frames), frames) for ident, frames in threads), key=lambda t: not t.main)


# -- the lines of code ----------------------------------------------------------------------
#: (file, line, uid) -> what :func:`source_line` read: one dump of many ranks reads each once.
_Lines = dict[tuple[str, int, int], tuple[str | None, float] | None]


def _with_source(thread: Thread, w: Worker, lines: _Lines) -> Thread:
    """``thread`` of worker ``w`` with each frame's line of code, read on this host (the
    worker's): a relative file resolved against the worker's working directory (never
    ours), the line marked changed when its file changed after the worker started."""
    try:
        uid = os.lstat(w.dump).st_uid  # the rank's own: it made the file (_open_dump)
    except OSError:
        return thread
    frames = []
    for f in thread.frames:
        path = f.file if os.path.isabs(f.file) else os.path.join(w.cwd, f.file) if w.cwd and os.path.isabs(w.cwd) else None
        if path is None:
            frames.append(f)
            continue
        if (path, f.line, uid) not in lines:
            lines[path, f.line, uid] = source_line(path, f.line, uid=uid)
        got = lines[path, f.line, uid]
        if got is None:
            frames.append(f)
        else:
            frames.append(replace(f, source=got[0], changed=None if w.started_at is None else got[1] > w.started_at))
    return replace(thread, frames=tuple(frames))


def source_line(path: str, line: int, *, uid: int) -> tuple[str | None, float] | None:
    """Line ``line`` of the Python file at ``path`` (stripped, at most
    :data:`MAX_SOURCE` characters; None when it has none) and the file's ctime (content,
    a rename over it, its mode: any change); None when the file is not read.

    Read like a hostile path: a file whose name ends in ``.py``, opened without blocking
    and read only when it is a regular file (no device, no FIFO) that user ``uid`` (the
    rank's) may read (the kernel's say when we are that user; as another, root, only one
    it owns or anyone may read); at most :data:`_MAX_SOURCE_READ` bytes of it."""
    if not path.endswith(".py") or line < 1:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if os.geteuid() != uid and not (st.st_mode & stat.S_IROTH or (st.st_uid == uid and st.st_mode & stat.S_IRUSR)):
            return None
        budget, n = _MAX_SOURCE_READ, 1
        try:
            while budget > 0:
                piece = fh.readline(budget)
                if not piece:
                    break
                if n == line:
                    text = piece[:1024].decode("utf-8", errors="replace").strip()[:MAX_SOURCE]
                    return text or None, st.st_ctime
                budget -= len(piece)
                if piece.endswith(b"\n"):
                    n += 1
        except OSError:
            return None
    return None, st.st_ctime


def _read_from(path: Path, offset: int) -> str:
    with os.fdopen(os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK), "rb") as fh:
        fh.seek(offset)
        return fh.read(_MAX_DUMP).decode("utf-8", errors="replace")


# -- across nodes, through the job folder ---------------------------------------------------
def ask(paths: JobPaths) -> str:
    """Post a request every node's launcher answers; returns its id."""
    rid = secrets.token_hex(6)
    folder = ensure_private_dir(paths.dir / "stacks" / "requests")
    write_json_atomic(folder / f"{rid}.json", {"id": rid, "at": time.time()})
    return rid


def withdraw(paths: JobPaths, rid: str) -> None:
    """The request is answered (or given up): launchers stop looking at it, and its
    answers go (a late one may still land: it is as small as the others)."""
    if not _ID.fullmatch(rid):
        return
    remove_quietly(paths.dir / "stacks" / "requests" / f"{rid}.json")
    folder = paths.dir / "stacks" / "answers" / rid
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        remove_quietly(folder / name)
    try:
        folder.rmdir()
    except OSError:
        pass


def requests(paths: JobPaths) -> list[str]:
    """The ids of the open requests in the job folder."""
    try:
        names = os.listdir(paths.dir / "stacks" / "requests")
    except OSError:
        return []
    return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith(TEMP_PREFIX) and _ID.fullmatch(n[:-5]))


def answer(paths: JobPaths, rid: str, node_rank: int, stacks: Iterable[RankStacks]) -> None:
    """A node's launcher answers request ``rid`` with its ranks' stacks."""
    if not _ID.fullmatch(rid):
        raise ValueError(f"not a stacks request id: {rid!r}")
    folder = ensure_private_dir(paths.dir / "stacks" / "answers" / rid)
    record = StackAnswer(node=int(node_rank), host=local_host().hostname, ranks=[s.as_record() for s in stacks])
    write_json_atomic(folder / f"node-{int(node_rank)}.json", encode(record))


def answered(paths: JobPaths, rid: str, node_rank: int) -> bool:
    return (paths.dir / "stacks" / "answers" / rid / f"node-{int(node_rank)}.json").exists()


def answers(paths: JobPaths, rid: str) -> dict[int, list[RankStacks]]:
    """node rank -> its ranks' stacks, as answered so far (an answer that does not check
    is skipped: those ranks then count as not answering)."""
    folder = paths.dir / "stacks" / "answers" / rid
    out: dict[int, list[RankStacks]] = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return out
    for name in names:
        if not re.fullmatch(r"node-\d+\.json", name):
            continue
        try:
            rec = load(folder / name, StackAnswer)
        except RecordError:
            continue
        if rec is not None and rec.node is not None:
            out[rec.node] = [s for s in (_from_record(r) for r in rec.ranks or ()) if s is not None]
    return out


def _from_record(r: StackRank) -> RankStacks | None:
    """A checked rank's stacks; None without the rank it is of."""
    if r.rank is None:
        return None
    threads = [
        Thread(t.ident or 0, t.main is True, tuple(Frame(f.file or "?", f.line or 0, f.func or "?", f.source, f.changed) for f in t.frames or ()))
        for t in r.threads or ()
    ]
    return RankStacks(r.rank, r.host or "?", r.pid, threads, r.error)


# -- showing them ---------------------------------------------------------------------------
def group(stacks: Iterable[RankStacks], *, all_threads: bool = False) -> list[tuple[list[RankStacks], list[Thread]]]:
    """Ranks whose stacks are the same, together: (ranks, their threads). Compared by the
    main thread (other threads differ by role: rank 0 serves HTTP), or by every thread."""
    groups: dict[str, tuple[list[RankStacks], list[Thread]]] = {}
    for s in stacks:
        if s.error is not None:
            continue
        threads = s.threads if all_threads else [t for t in s.threads if t.main][:1]
        key = json.dumps([[str(f) for f in t.frames] for t in threads])
        groups.setdefault(key, ([], threads))[0].append(s)
    return sorted(groups.values(), key=lambda g: min(s.rank for s in g[0]))


def rank_list(ranks: Iterable[int]) -> str:
    """[0, 2, 3, 4, 7] -> "0,2-4,7"."""
    runs: list[list[int]] = []
    for r in sorted(set(ranks)):
        if runs and runs[-1][1] == r - 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
