"""Every rank's output in the job folder: where it is, how it is bounded, how it is read.

The launcher of each node writes each of its ranks' stdout and stderr (as the ranks'
bootstrap hands them over, ``launcher/output.py``) into ``<job>/logs/``:

- ``rank-<R>.log``: the newest output of global rank R, at most :data:`DEFAULT_MAX_BYTES`
  (``FORGATHER_LOG_BYTES`` sets another bound); when the next write would pass it the
  file becomes ``rank-<R>.log.1`` (replacing the older one) and a new one starts, so a
  rank never holds more than twice the bound on disk;
- ``rank-<R>.json``: the byte count of the rank's whole output before the current
  file's first byte (``base``), with that file's inode, its host, node and run. A reader
  names a place in the output by one number, its *offset* (``base`` plus the place in
  the file), which stays valid across rotations: a page that polls "what came after
  offset N" gets the rest of ``.1`` and then the new file, and learns how many bytes
  were rotated away before it could read them.

Files are 0600, in a 0700 folder, written and read without following a link; a reader
trusts only files owned by the job folder's owner and reads a bounded amount
(:data:`TAIL_BYTES` for a tail, :data:`READ_BYTES` per poll). What it returns is lines
made safe to print: a line's carriage returns keep only what a terminal would show last
(a progress bar's final state), tabs are expanded, and every other control character,
escape sequence and invisible code point is written out visibly (:func:`.safe.printable`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from forgather_control.core.env import ENV_LOG_BYTES
from forgather_control.core.files import TEMP_PREFIX, NotOurs, RecordError, foreign, open_folder
from forgather_control.core.records import Count, Host, Rank, Record, load, to_json
from forgather_control.core.safe import printable

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "LOGS_DIR",
    "MIN_MAX_BYTES",
    "READ_BYTES",
    "TAIL_BYTES",
    "LogRead",
    "LogState",
    "LogText",
    "LogsFolder",
    "RankLog",
    "clean_lines",
    "log_name",
    "max_bytes_from",
    "ranks_in",
    "read_after",
    "read_tail",
    "rotated_name",
    "state_name",
]

#: The folder of a job's logs, inside its job folder.
LOGS_DIR = "logs"
#: A rank's current log file is at most this large (8 MiB); with the rotated one, a rank
#: keeps at most twice this (16 MiB) on disk.
DEFAULT_MAX_BYTES = 8 << 20
#: The least bound ``FORGATHER_LOG_BYTES`` may set (64 KiB).
MIN_MAX_BYTES = 64 << 10
#: A tail reads at most this much of a rank's output, from its end (1 MiB).
TAIL_BYTES = 1 << 20
#: One poll (:func:`read_after`) reads at most this much (256 KiB); the next goes on.
READ_BYTES = 256 << 10
#: A line longer than this (characters) is cut, saying how much was left out.
MAX_LINE = 8192

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NAME = re.compile(r"rank-(\d{1,7})\.log(?:\.1)?")
_SIZE = re.compile(r"(\d+)\s*([kmg]?)i?b?", re.IGNORECASE)


def log_name(rank: int) -> str:
    """``rank-<R>.log``: the newest output of global rank R."""
    return f"rank-{int(rank)}.log"


def rotated_name(rank: int) -> str:
    """``rank-<R>.log.1``: the output before it (one rotated file, no more)."""
    return f"rank-{int(rank)}.log.1"


def state_name(rank: int) -> str:
    """``rank-<R>.json``: where the current file starts in the rank's output (:class:`LogState`)."""
    return f"rank-{int(rank)}.json"


def max_bytes_from(env: Mapping[str, str]) -> int:
    """The bound of one log file: ``FORGATHER_LOG_BYTES`` (bytes, or with K, M or G:
    ``16M``), at least :data:`MIN_MAX_BYTES`; else :data:`DEFAULT_MAX_BYTES`. ValueError
    (saying what is allowed) for anything else."""
    raw = env.get(ENV_LOG_BYTES, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    match = _SIZE.fullmatch(raw)
    if match is None:
        raise ValueError(f"{ENV_LOG_BYTES}={raw!r} is not a size; give bytes, or a number with K, M or G (16M)")
    value = int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2).lower()]
    if value < MIN_MAX_BYTES:
        raise ValueError(f"{ENV_LOG_BYTES}={raw!r} is below the least bound of a log file ({MIN_MAX_BYTES // 1024}K)")
    return value


class LogState(Record):
    """``rank-<R>.json``: where ``rank-<R>.log`` starts in the rank's whole output
    (``base``, bytes), the file's inode (a reader tells a rotation it raced with by it),
    and who writes it: the host, the node and the run of the job."""

    rank: Rank
    base: Count = 0
    inode: Count = 0
    host: Host | None = None
    node: Count | None = None
    run: Count | None = None


# -- writing (the launcher) ---------------------------------------------------------------
class RankLog:
    """One rank's log, appended to by its node's launcher: ``rank-<R>.log`` in the open
    logs folder ``dir_fd``, rotated to ``.1`` before it would pass ``max_bytes``.

    A file that is there already (a relaunch of the job) is appended to, after a line
    saying which run starts; one that is not a regular file of this user is refused
    (:class:`~.files.NotOurs` or OSError) and never written through. A write that fails
    (a full disk) is said once and the file is left alone from then on: the rank's output
    still reaches the terminal."""

    def __init__(
        self, dir_fd: int, rank: int, *, max_bytes: int = DEFAULT_MAX_BYTES, host: str | None = None, node: int | None = None, run: int | None = None
    ) -> None:
        self.dir_fd = dir_fd
        self.rank = int(rank)
        self.max_bytes = max(int(max_bytes), 1)
        self.state = LogState(rank=self.rank, host=host, node=node, run=run)
        self.failed: str | None = None
        self.fd, self.size, last = self._open(create_new=False)
        previous = self._read_state()
        prev_size = self._size_of(rotated_name(self.rank))
        self.state.inode = self._inode()
        # The same file as the state names: its count goes on. Otherwise the rotated file
        # (if any) counts from 0 and this one after it.
        self.state.base = previous.base if previous is not None and previous.inode == self.state.inode else prev_size
        self._write_state()
        if self.size:  # a relaunch: say where its output starts
            sep = b"" if last == b"\n" else b"\n"
            self._append(sep + f"----- forgather: run {run if run is not None else '?'} of this job, rank {self.rank} on {host or '?'} -----\n".encode())

    @property
    def name(self) -> str:
        return log_name(self.rank)

    def write(self, data: bytes) -> None:
        """Append ``data``, rotating first when it would pass the bound (a write larger
        than the bound is split over files)."""
        while data and self.failed is None:
            room = self.max_bytes - self.size
            if room <= 0 or (self.size and len(data) > room and len(data) <= self.max_bytes):
                self._rotate()
                continue
            piece, data = data[:room], data[room:]
            self._append(piece)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- inside -------------------------------------------------------------------------
    def _open(self, *, create_new: bool) -> tuple[int, int, bytes]:
        """The current file, opened for appending without following a link, checked to
        be a regular file of ours; its size and last byte."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC | (os.O_EXCL if create_new else 0)
        fd = os.open(self.name, flags, 0o600, dir_fd=self.dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, f"{self.name} is not a regular file; not written through")
            if st.st_uid != os.geteuid():
                raise NotOurs(foreign(self.name, st.st_uid))
            if stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
            last = os.pread(fd, 1, st.st_size - 1) if st.st_size else b""
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size, last

    def _inode(self) -> int:
        return os.fstat(self.fd).st_ino

    def _size_of(self, name: str) -> int:
        try:
            st = os.lstat(name, dir_fd=self.dir_fd)
        except OSError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def _read_state(self) -> LogState | None:
        try:
            return load(state_name(self.rank), LogState, max_bytes=4096, owner=os.geteuid(), dir_fd=self.dir_fd)
        except RecordError:
            return None

    def _write_state(self) -> None:
        """``rank-<R>.json`` replaced whole (a temp file of ours, then a rename)."""
        tmp = f"{TEMP_PREFIX}{state_name(self.rank)}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600, dir_fd=self.dir_fd)
            try:
                os.write(fd, to_json(self.state))
            finally:
                os.close(fd)
            os.replace(tmp, state_name(self.rank), src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            self._fail(exc)
            try:
                os.unlink(tmp, dir_fd=self.dir_fd)
            except OSError:
                pass

    def _rotate(self) -> None:
        try:
            os.replace(self.name, rotated_name(self.rank), src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            self.close()
            self.state.base += self.size
            try:
                self.fd, self.size, _ = self._open(create_new=True)
            except FileExistsError:  # nobody else writes here; a leftover is replaced
                os.unlink(self.name, dir_fd=self.dir_fd)
                self.fd, self.size, _ = self._open(create_new=True)
            self.state.inode = self._inode()
        except OSError as exc:
            self._fail(exc)
            return
        self._write_state()

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                self.size += n
                view = view[n:]
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if self.failed is None:
            self.failed = f"{exc.strerror or exc}"
            log.warning("rank %d's log %s cannot be written (%s); its output still reaches the terminal, no longer the file", self.rank, self.name, self.failed)


# -- reading ------------------------------------------------------------------------------
@dataclass
class LogText:
    """What a read of one rank's log gives: its lines, made safe to print (in order,
    without their line ends), and ``offset``, the place in the rank's output after the
    last byte read (pass it to :func:`read_after` for what comes next). ``skipped``: bytes
    rotated away before they could be read (a reader that fell behind by more than a
    file). ``host``: where the rank ran, as its log says."""

    rank: int
    lines: list[str] = field(default_factory=list)
    offset: int = 0
    skipped: int = 0
    host: str | None = None


@dataclass
class LogRead:
    """One read of a job's logs (``client/logs.py``): each rank's text, the ranks asked
    for that have no log (and those that have one), whether the job has ended (its launchers read every rank's
    output to its end before they record the end: once ended, nothing more comes), and
    notes for the reader (a Ray node that did not answer, a log not read and why)."""

    job_id: str
    texts: list[LogText] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    #: the ranks that have a log
    have: list[int] = field(default_factory=list)
    ended: bool = False
    notes: list[str] = field(default_factory=list)
    #: why the job has no logs at all (no logs folder), when it has none
    absent: str | None = None


@dataclass
class _Segment:
    fd: int
    base: int
    size: int


class _Files:
    """A rank's two files, opened together (and again when a rotation raced the opening),
    each with its place in the rank's output."""

    def __init__(self, dir_fd: int, rank: int, owner: int | None) -> None:
        self.segments: list[_Segment] = []
        self.host: str | None = None
        for _ in range(5):
            try:
                self._open(dir_fd, rank, owner)
                return
            except _Raced:
                self.close()
        raise RecordError(f"{log_name(rank)}: rotated while it was read, five times over; try again")

    def _open(self, dir_fd: int, rank: int, owner: int | None) -> None:
        cur = _open_log(dir_fd, log_name(rank), owner)
        prev = _open_log(dir_fd, rotated_name(rank), owner)
        fds = [fd for fd in (prev, cur) if fd is not None]
        stats = {fd: os.fstat(fd) for fd in fds}
        self.segments = [_Segment(fd, 0, stats[fd].st_size) for fd in fds]
        if cur is None:
            if prev is None:
                raise FileNotFoundError(errno.ENOENT, f"no log of rank {rank}")
            return
        if prev is not None and stats[prev].st_ino == stats[cur].st_ino:
            raise _Raced
        try:
            state = load(state_name(rank), LogState, max_bytes=4096, owner=owner, dir_fd=dir_fd)
        except RecordError:
            state = None
        self.host = state.host if state is not None else None
        prev_size = stats[prev].st_size if prev is not None else 0
        if state is not None and state.inode == stats[cur].st_ino and state.base >= prev_size:
            base_cur = state.base
        elif state is not None and prev is not None and state.inode == stats[prev].st_ino:
            base_cur = state.base + prev_size  # rotated after the state was written, before it was written again
        else:
            base_cur = prev_size  # no word on where it starts: the rotated file counts from 0
        self.segments[-1].base = base_cur
        if prev is not None:
            self.segments[0].base = base_cur - prev_size

    @property
    def start(self) -> int:
        return self.segments[0].base if self.segments else 0

    @property
    def end(self) -> int:
        return self.segments[-1].base + self.segments[-1].size if self.segments else 0

    def read(self, start: int, end: int) -> bytes:
        """The rank's output from ``start`` to ``end`` (offsets), as far as the files hold it."""
        out = []
        for seg in self.segments:
            lo, hi = max(start, seg.base), min(end, seg.base + seg.size)
            if lo < hi:
                out.append(os.pread(seg.fd, hi - lo, lo - seg.base))
        return b"".join(out)

    def close(self) -> None:
        for seg in self.segments:
            os.close(seg.fd)
        self.segments = []


class _Raced(Exception):
    """The two files were opened across a rotation (the rotated one is the current one)."""


def _open_log(dir_fd: int, name: str, owner: int | None) -> int | None:
    """``name`` in the logs folder opened for reading: None when it is not there;
    RecordError for a link, anything but a regular file, or a file of another user."""
    try:
        fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RecordError(f"{name}: a symlink; never followed") from None
        raise RecordError(f"{name}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RecordError(f"{name}: not a regular file; not read")
        if owner is not None and st.st_uid != owner:
            raise RecordError(foreign(name, st.st_uid, owner=owner))
    except BaseException:
        os.close(fd)
        raise
    return fd


class LogsFolder:
    """A job's logs folder, open for reading (a context manager): the folder and every
    file in it must belong to the job folder's owner, and none is reached through a link.

    Raises FileNotFoundError when the job (or its logs folder) is not there, RecordError
    when something on the way is a link, not a folder, or another user's, and
    PermissionError when it may not be read."""

    def __init__(self, job_dir: str | os.PathLike[str]) -> None:
        where = os.path.join(os.fspath(job_dir), LOGS_DIR)
        try:
            job_fd = open_folder(job_dir)
            try:
                self.owner = os.fstat(job_fd).st_uid
                self.fd = open_folder(LOGS_DIR, dir_fd=job_fd)
            finally:
                os.close(job_fd)
        except (FileNotFoundError, PermissionError):
            raise
        except OSError as exc:
            raise RecordError(f"{where}: {exc.strerror or exc}") from None
        uid = os.fstat(self.fd).st_uid
        if uid != self.owner:
            os.close(self.fd)
            raise RecordError(foreign(where, uid, owner=self.owner))

    def ranks(self) -> list[int]:
        """The ranks that have a log here, in order."""
        return ranks_in(self.fd)

    def tail(self, rank: int, lines: int, *, partial: bool = True) -> LogText:
        """:func:`read_tail` of ``rank``."""
        return read_tail(self.fd, rank, lines, owner=self.owner, partial=partial)

    def after(self, rank: int, offset: int, *, partial: bool = False, max_bytes: int = READ_BYTES) -> LogText:
        """:func:`read_after` of ``rank``."""
        return read_after(self.fd, rank, offset, owner=self.owner, partial=partial, max_bytes=max_bytes)

    def read(self, into: LogRead, ranks: Sequence[int] | None, *, tail: int | None, after: Mapping[int, int], partial: bool) -> LogRead:
        """``into`` filled with the ranks asked for (every rank with a log when None):
        from ``after``'s offset for a rank it names (for every rank when ``tail`` is
        None), else the last ``tail`` lines. A rank without a log is missing, one whose
        log cannot be read (a link, another user's file) a note; a PermissionError is the
        caller's (a private job). The one read of a folder, for this host and a Ray node."""
        have = into.have = self.ranks()
        for rank in have if ranks is None else ranks:
            if rank not in have:
                into.missing.append(rank)
                continue
            try:
                if rank in after or tail is None:
                    into.texts.append(self.after(rank, after.get(rank, 0), partial=partial))
                else:
                    into.texts.append(self.tail(rank, tail, partial=partial))
            except FileNotFoundError:
                into.missing.append(rank)
            except RecordError as exc:
                into.notes.append(f"rank {rank}'s log is not read: {exc}")
        return into

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> LogsFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ranks_in(dir_fd: int) -> list[int]:
    """The ranks that have a log in the open logs folder, in order."""
    ranks = set()
    for name in os.listdir(dir_fd):
        match = _NAME.fullmatch(name)
        if match is not None and int(match.group(1)) <= 1 << 20:
            ranks.add(int(match.group(1)))
    return sorted(ranks)


def read_tail(dir_fd: int, rank: int, lines: int, *, owner: int | None = None, partial: bool = True) -> LogText:
    """The last ``lines`` lines of ``rank``'s output (across its rotated file), reading at
    most :data:`TAIL_BYTES`. ``partial``: a last line without its end yet (a crash's last
    words, a progress bar) is one of them; without, it is left for :func:`read_after`
    (``offset`` stops before it). FileNotFoundError when the rank has no log."""
    files = _Files(dir_fd, rank, owner)
    try:
        end = files.end
        start = max(files.start, end - TAIL_BYTES)
        raw = files.read(start, end)
        if not partial:
            cut = raw.rfind(b"\n") + 1
            end -= len(raw) - cut
            raw = raw[:cut]
        if start > files.start:  # the first line read may be the end of a longer one
            raw = raw[raw.find(b"\n") + 1 :] if b"\n" in raw else b""
        text = clean_lines(raw)
        return LogText(rank, text[-lines:] if lines > 0 else [], end, 0, files.host)
    finally:
        files.close()


def read_after(dir_fd: int, rank: int, offset: int, *, owner: int | None = None, partial: bool = False, max_bytes: int = READ_BYTES) -> LogText:
    """``rank``'s output after ``offset`` (an offset a read returned, or 0 for the start),
    at most ``max_bytes`` of it: whole lines only unless ``partial`` (or a line is longer
    than ``max_bytes``). An offset before what the files still hold reads from their
    start and says how much was lost (``skipped``); one past their end (the job's logs
    were made anew) reads from the start. FileNotFoundError when the rank has no log."""
    files = _Files(dir_fd, rank, owner)
    try:
        start, end = files.start, files.end
        skipped = 0
        if offset > end:
            offset = start
        elif offset < start:
            skipped, offset = start - offset, start
        stop = min(end, offset + max(1, max_bytes))
        raw = files.read(offset, stop)
        if not partial:
            cut = raw.rfind(b"\n") + 1
            if cut or len(raw) < max_bytes:
                raw = raw[:cut]
        return LogText(rank, clean_lines(raw), offset + len(raw), skipped, files.host)
    finally:
        files.close()


def clean_lines(raw: bytes) -> list[str]:
    """``raw`` output as lines safe to print: UTF-8 (a bad byte shown as U+FFFD), each
    line as a terminal would leave it after its carriage returns (``a\\rb``: ``b``), tabs
    expanded, cut at :data:`MAX_LINE`, every control character and escape sequence
    written out visibly."""
    if not raw:
        return []
    text = raw.decode("utf-8", "replace")
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    return [_clean(p) for p in parts]


def _clean(line: str) -> str:
    line = line.rstrip("\r")
    if "\r" in line:
        line = line.rpartition("\r")[2]
    line = line.expandtabs(8)
    if len(line) > MAX_LINE:
        line = f"{line[:MAX_LINE]} ... ({len(line) - MAX_LINE} more characters)"
    return printable(line)
