"""The settled form: jobs that have ended, written down once, so ``list`` never opens them again.

A jobs directory on shared storage collects every run anyone launched. ``list`` shows
what may be live; it must not pay for the history. Two flat folders beside the jobs
say which folders it may pass by::

    <root>/.runs/<job id>@<nonce>   a run marker: a process of the job started here
                                     (the launcher on each node, rank 0), and who it is
    <root>/.settled/<job id>        a settled entry: the job has provably ended

``list`` reads the two folders' *names* (two directory listings, however long the
history) and opens only the folders that have a run marker or no settled entry. A
marker always wins: a settled job that is relaunched (its launcher and rank 0 each write
a marker before anything of the run, in :meth:`JobPaths.create`) is read again at once.

Rules that keep it right with many writers on NFS-style storage (atomic rename, no
reliable locks, clocks that disagree):

- every file is one writer's own, written whole (temp file, then rename); nothing is
  ever rewritten in place by two writers;
- a job is settled when it has provably ended: its own final word (with every
  launcher of it on another host recorded as ended: judging that by a heartbeat's age
  would trust this host's clock); or a pid check on this host or SLURM says it died
  *and* it has been silent for :data:`SILENT_FOR` (a job that died is shown by ``list``
  for that long, so whoever launched it sees it); or nothing proves anything but it has
  been silent that long. Silence is judged by the job's records' times against this
  host's clock *and* by the storage's own clock (its folder's mtime against a file
  created now);
- a settled entry is written only when every marker of the job is proven gone: its
  process ran on this host and no longer runs, or it recorded its own end after it made
  the marker (its clock against its own clock), or SLURM no longer knows its job, or
  the marker and the job are both silent as above;
- a marker is removed only once proven gone, and only by its exact name: a marker
  written meanwhile by a relaunch on another host is never touched;
- a job judged possibly running when read again (``list --all``) loses its entry;
- a missing, unreadable or foreign-shaped index hides nothing: a name that is not a job
  id, or an entry that is not a regular file, is passed by; an unreadable ``.runs``
  makes ``list`` read every folder, as before this form existed.

Entry and marker contents are records like any other, checked where read.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .files import TEMP_PREFIX, RecordError
from .jobs import JobPaths, is_valid_job_id
from .liveness import Liveness, SqueueCache, pid_alive, process_identity, same_host
from .records import check_record, integer, number, text
from .states import is_final

if TYPE_CHECKING:
    from .listing import JobInfo

log = logging.getLogger(__name__)

__all__ = [
    "ENTRY",
    "MARKER",
    "RUNS_DIR",
    "SETTLED_DIR",
    "SILENT_FOR",
    "Index",
    "Settler",
    "end_run",
    "forget",
    "keep_marked",
    "mark_run",
    "read_entry",
    "read_index",
    "settle_job",
    "tidy",
]

SETTLED_DIR = ".settled"
RUNS_DIR = ".runs"
#: A job whose records and markers have all been silent this long, on this host's clock
#: and on the storage's, is settled as ``stale`` though nothing proves it ended (its
#: host went away). Heartbeats come every few seconds; a day of silence is not a run.
SILENT_FOR = 24 * 3600.0
FORMAT = 1
_SEP = "@"
_MAX_BYTES = 64 * 1024
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)

MARKER = {
    "job_id": text(128),
    "host": text(255),
    "boot_id": text(128),
    "pid": integer(1, 1 << 31),
    "pid_start_time": number(0),
    "created_at": number(0),
    "format": integer(),
}
ENTRY = {
    "job_id": text(128),
    "verdict": text(16),
    "state": text(32),
    "evidence": text(),
    "restarts": integer(),
    "settled_at": number(0),
    "host": text(255),
    "pid": integer(1, 1 << 31),
    "format": integer(),
}
_VERDICTS = ("finished", "dead", "stale")


# -- reading the index ------------------------------------------------------------
@dataclass(frozen=True)
class Index:
    """The names in ``.settled`` and ``.runs``: which folders ``list`` may pass by."""

    settled: frozenset[str] = frozenset()
    #: job id -> its run markers' names
    runs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: False when ``.runs`` could not be read: a relaunch would not show, so nothing is skipped
    usable: bool = True

    def skips(self, job_id: str) -> bool:
        """True when ``list`` need not open this job: settled, and no run since."""
        return self.usable and job_id in self.settled and job_id not in self.runs


def read_index(root: str | os.PathLike[str]) -> Index:
    """Two directory listings, names only (no file is opened, nothing is stat'ed).
    ``.runs`` is read first: a marker seen there keeps its job in the listing whatever
    ``.settled`` says a moment later."""
    marks = _names(root, RUNS_DIR)
    if marks is None:
        return Index(usable=False)
    runs: dict[str, list[str]] = {}
    for name, _regular in marks:
        job_id, sep, nonce = name.partition(_SEP)
        # Any shape counts (a folder, a link): a marker can only make a job be read.
        if sep and nonce and is_valid_job_id(job_id):
            runs.setdefault(job_id, []).append(name)
    entries = _names(root, SETTLED_DIR) or []
    settled = frozenset(name for name, regular in entries if regular and is_valid_job_id(name))
    return Index(settled, {k: tuple(v) for k, v in runs.items()})


def _names(root: str | os.PathLike[str], sub: str) -> list[tuple[str, bool]] | None:
    """(name, is a regular file) for each entry of ``root/sub``; [] when it does not
    exist; None when it cannot be read (or is not a real folder: never followed)."""
    try:
        fd = os.open(os.path.join(root, sub), os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.debug("cannot read %s/%s: %s", root, sub, exc)
        return None
    try:
        with os.scandir(fd) as it:
            # d_type from the listing itself: no stat per entry
            return [(e.name, e.is_file(follow_symlinks=False)) for e in it if not e.name.startswith(TEMP_PREFIX)]
    except OSError as exc:
        log.debug("cannot read %s/%s: %s", root, sub, exc)
        return None
    finally:
        os.close(fd)


def read_entry(root: str | os.PathLike[str], job_id: str) -> dict[str, Any] | None:
    """A job's settled entry, checked; None when there is none or it is not one."""
    fd = _open_dir(root, SETTLED_DIR, create=False)
    if fd is None:
        return None
    try:
        rec, _ = _read(fd, job_id, ENTRY)
    finally:
        os.close(fd)
    if rec is None or rec.get("job_id") != job_id or rec.get("verdict") not in _VERDICTS:
        return None
    return rec


# -- run markers (the writers' side) ------------------------------------------------
def mark_run(root: str | os.PathLike[str], job_id: str, identity: dict[str, Any] | None = None) -> str | None:
    """Record that a process of ``job_id`` starts a run (``identity``: this process),
    and take the job out of the settled form. Returns the marker's name; never raises
    (a job runs without it: its entry is removed all the same, so it is not hidden)."""
    record = {"job_id": job_id, **(identity or process_identity()), "created_at": time.time(), "format": FORMAT}
    name = f"{job_id}{_SEP}{secrets.token_hex(8)}"
    written = None
    try:
        fd = _open_dir(root, RUNS_DIR, create=True)
        if fd is not None:
            try:
                _write(fd, name, record, sync=True)
                written = name
            finally:
                os.close(fd)
    except OSError as exc:
        log.warning("could not write the run marker of job %s in %s/%s (%s); list reads its folder anyway", job_id, root, RUNS_DIR, exc)
    _unlink(root, SETTLED_DIR, job_id)
    return written


def keep_marked(root: str | os.PathLike[str], job_id: str, name: str | None) -> str | None:
    """A running process's marker is still there (one stat); if someone removed it (a
    reader whose clock is far off), mark again. Returns the marker's name now."""
    if name is not None:
        try:
            os.lstat(os.path.join(root, RUNS_DIR, name))
            return name
        except FileNotFoundError:
            log.warning("the run marker of job %s was removed while it runs; marking it again", job_id)
        except OSError:
            return name
    return mark_run(root, job_id)


def end_run(paths: JobPaths, name: str | None, *, squeue: Callable[[str], str | None] | None = None) -> bool:
    """This process's part of the run has ended (the launcher at its end): settle the
    job if it has provably ended, then remove this process's marker. Never raises."""
    try:
        settled = settle_job(paths, squeue=squeue)
    except (OSError, ValueError, RecordError) as exc:
        log.debug("could not settle job %s: %s", paths.job_id, exc)
        settled = False
    if name is not None:
        _unlink(paths.root, RUNS_DIR, name)
    return settled


def settle_job(paths: JobPaths, *, squeue: Callable[[str], str | None] | None = None) -> bool:
    """Read one job now and settle it if it has provably ended. True when settled."""
    from .listing import assess, load  # listing imports this module

    index = read_index(paths.root)
    now = time.time()
    squeue = squeue if squeue is not None else SqueueCache()
    info = assess(load(paths, quiet=True), probe=None, probe_local=False, squeue=squeue, now=now)
    with Settler(paths.root, index, squeue=squeue, now=now) as settler:
        return settler.consider(info)


def forget(paths: JobPaths, info: JobInfo | None) -> None:
    """``cleanup`` deleted the job: its entry goes, and every marker of it proven gone
    by the records it was deleted on (a marker of a relaunch made meanwhile stays)."""
    index = read_index(paths.root)
    try:
        with Settler(paths.root, index, squeue=SqueueCache(), now=time.time()) as settler:
            for name in index.runs.get(paths.job_id, ()) if info is not None else ():
                if settler.marker_gone(name, info):
                    _unlink(paths.root, RUNS_DIR, name)
    except OSError as exc:
        log.debug("could not tidy the markers of job %s: %s", paths.job_id, exc)
    _unlink(paths.root, SETTLED_DIR, paths.job_id)


def tidy(root: str | os.PathLike[str], job_ids: list[str]) -> int:
    """``cleanup``'s pass over the index (it reads every folder anyway): entries that
    are not entries (checked here, where their content is read) or whose folder is
    gone (deleted by hand, a cleanup that stopped half-way) go at once: that only makes
    a job be read, and settled again. A marker of a folder that is gone goes once its
    process is proven gone (this host, pid gone) or it is :data:`SILENT_FOR` old on
    both clocks: a launcher writes its marker before the folder. Returns how many it
    removed."""
    index = read_index(root)
    present = set(job_ids)
    removed = 0
    for job_id in sorted(index.settled):
        if job_id not in present or read_entry(root, job_id) is None:
            _unlink(root, SETTLED_DIR, job_id)  # no folder, or not an entry: the job is read, and settled again
            removed += 1
    orphans = [name for job_id, names in index.runs.items() if job_id not in present for name in names]
    if not orphans:
        return removed
    try:
        with Settler(root, index, squeue=SqueueCache(), now=time.time()) as settler:
            for name in orphans:
                if settler.orphan_gone(name):
                    _unlink(root, RUNS_DIR, name)
                    removed += 1
    except OSError as exc:
        log.debug("could not tidy the run markers in %s: %s", root, exc)
    return removed


# -- settling (the readers' side) ------------------------------------------------
class Settler:
    """Settles the jobs one listing has read and judged. One per listing: the storage's
    clock is asked at most once, and a directory that cannot be written is not tried
    again."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        index: Index,
        *,
        squeue: Callable[[str], str | None],
        now: float,
        enabled: bool = True,
    ) -> None:
        self.root = os.fspath(root)
        self.index = index
        self.squeue = squeue
        self.now = now
        self.enabled = enabled and index.usable
        self._settled_fd: int | None = None
        self._storage_now: float | None = None  # the storage's clock, once asked
        self._silent: dict[str, bool] = {}
        self.written = 0

    def __enter__(self) -> Settler:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._settled_fd is not None:
            os.close(self._settled_fd)
            self._settled_fd = None

    # -- the decision ----------------------------------------------------------
    def consider(self, info: JobInfo) -> bool:
        """Settle ``info`` (read and judged by this listing) if it has provably ended;
        take a settled job that may be running out of the settled form. True when the
        job is settled now. Never raises for a file-system problem."""
        if not self.enabled:
            return False
        job_id = info.job_id
        names = self.index.runs.get(job_id, ())
        may_run = not info.corrupt and info.liveness in (Liveness.ALIVE, Liveness.UNKNOWN)
        try:
            if job_id in self.index.settled and (may_run or not names):
                if may_run:
                    _unlink(self.root, SETTLED_DIR, job_id)  # settled, yet it may run: read it every time again
                return not may_run
            verdict = self.verdict(info)
            if verdict is None:
                return False
            gone = [n for n in names if self.marker_gone(n, info)]
            if len(gone) == len(names) and (job_id not in self.index.settled or names):
                self._write_entry(info, verdict)
            for name in gone:
                _unlink(self.root, RUNS_DIR, name)
            return len(gone) == len(names)
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                log.debug("not settling jobs in %s: %s", self.root, exc)
                self.enabled = False  # read-only, full, not ours: the listing goes on as before
            else:
                log.debug("not settling job %s: %s", job_id, exc)  # something odd in its place: this job only
            return False

    def verdict(self, info: JobInfo) -> str | None:
        """``finished`` (the job's own word), ``dead`` (proven from this host or by
        SLURM, and silent for :data:`SILENT_FOR`), ``stale`` (silent as long, nothing
        proven), or None: not settled."""
        if info.corrupt:
            return None
        if info.liveness == Liveness.FINISHED:
            # judge() lets another host's launcher record without an end pass once its
            # heartbeat is old on *this* host's clock: not proof enough to settle on.
            if all(n.get("ended_at") or same_host(n) for n in info.nodes) or self.silent(info):
                return "finished"
            return None
        if info.liveness == Liveness.DEAD:
            # Proven dead, but shown by ``list`` (and the web page) until it has been
            # silent a day: whoever launched it sees that it died. The jobs that died
            # in the last day are a rate, not the history.
            return "dead" if self.silent(info) else None
        if info.liveness == Liveness.STALE and self.silent(info):
            return "stale"
        return None

    def marker_gone(self, name: str, info: JobInfo) -> bool:
        """Is the process that wrote marker ``name`` proven gone, or its run over?"""
        mark, mtime = _read_marker(self.root, name)
        if mark is not None and mark.get("job_id") == info.job_id and isinstance(mark.get("created_at"), (int, float)):
            if _ended_on_record(mark, info):
                return True
            if same_host(mark):
                return not pid_alive(mark)  # a process here is never settled by age
            if self._slurm_gone(mark, info):
                return True
            if self.now - mark["created_at"] < SILENT_FOR:
                return False
        # by age: the marker itself and everything the job writes, a day old on both clocks
        return mtime is not None and self.silent(info) and self.storage_now() - mtime >= SILENT_FOR

    def orphan_gone(self, name: str) -> bool:
        """A marker whose job folder is gone: is its process proven gone too?"""
        mark, mtime = _read_marker(self.root, name)
        if mark is not None and same_host(mark):
            return not pid_alive(mark)
        made = mark.get("created_at") if mark is not None else None
        if isinstance(made, (int, float)) and self.now - made < SILENT_FOR:
            return False
        return mtime is not None and self.storage_now() - mtime >= SILENT_FOR

    def silent(self, info: JobInfo) -> bool:
        """Nothing of the job has been written for :data:`SILENT_FOR`, by the times its
        records give against this host's clock *and* by the storage's own clock (its
        folder's mtime against a file created now): a reader whose clock runs ahead, or
        a writer whose clock runs behind, does not make a live job look silent."""
        if info.job_id in self._silent:
            return self._silent[info.job_id]
        newest = max(_times(info), default=None)
        quiet = newest is not None and self.now - newest >= SILENT_FOR
        if quiet:
            written = _folder_mtime(self.root, info.job_id)
            quiet = written is not None and self.storage_now() - written >= SILENT_FOR
        self._silent[info.job_id] = quiet
        return quiet

    def storage_now(self) -> float:
        """The storage's clock now: the mtime of a file created here (asked once). A
        folder's mtime minus this is an age no reader's or writer's clock enters."""
        if self._storage_now is None:
            fd = self._fd()
            name = f"{TEMP_PREFIX}clock.{os.getpid()}.{secrets.token_hex(4)}"
            f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600, dir_fd=fd)
            try:
                self._storage_now = os.fstat(f).st_mtime
            finally:
                os.close(f)
                os.unlink(name, dir_fd=fd)
        return self._storage_now

    # -- writing ---------------------------------------------------------------
    def _fd(self) -> int:
        if self._settled_fd is None:
            fd = _open_dir(self.root, SETTLED_DIR, create=True)
            if fd is None:
                raise OSError(f"{self.root}/{SETTLED_DIR} is not a folder of ours")
            self._settled_fd = fd
        return self._settled_fd

    def _write_entry(self, info: JobInfo, verdict: str) -> None:
        job = info.job or {}
        record = {
            "job_id": info.job_id,
            "verdict": verdict,
            "state": str(info.state),
            "evidence": info.evidence[:1000],
            "restarts": job.get("restarts") if isinstance(job.get("restarts"), int) else None,
            "settled_at": self.now,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "format": FORMAT,
        }
        # not fsynced: a lost entry is only settled again by the next listing
        _write(self._fd(), info.job_id, record, sync=False)
        self.written += 1

    def _slurm_gone(self, mark: dict[str, Any], info: JobInfo) -> bool:
        """A record of the marker's process ties it to a SLURM job SLURM no longer knows."""
        ids = {n.get("slurm_job_id") for n in info.nodes if _same_process(n, mark) and n.get("slurm_job_id")}
        job = info.job or {}
        sched = job.get("scheduler") if isinstance(job.get("scheduler"), dict) else {}
        if sched.get("type") == "slurm" and sched.get("slurm_job_id"):
            if any(r and _same_process(r, mark) for r in (info.current_status, info.endpoint)):
                ids.add(sched["slurm_job_id"])
        return any(self.squeue(str(i)) == "" for i in ids if i)


def _ended_on_record(mark: dict[str, Any], info: JobInfo) -> bool:
    """The marker's process recorded its own end after it made the marker (both times
    from its own clock): its node record's ``ended_at``, or rank 0's final status."""
    made = mark["created_at"]
    for n in info.nodes:
        if _same_process(n, mark) and isinstance(n.get("ended_at"), (int, float)) and n["ended_at"] >= made:
            return True
    st = info.status or {}
    if st and _same_process(st, mark) and is_final(st.get("state")):
        last = max((t for t in (st.get("ended_at"), st.get("heartbeat_at"), st.get("updated_at")) if isinstance(t, (int, float))), default=None)
        return last is not None and last >= made
    return False


def _same_process(rec: dict[str, Any], mark: dict[str, Any]) -> bool:
    a, b = rec.get("pid_start_time"), mark.get("pid_start_time")
    return (
        rec.get("host") == mark.get("host")
        and rec.get("boot_id") == mark.get("boot_id")
        and rec.get("pid") == mark.get("pid")
        and isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and abs(a - b) <= 1.0
    )


def _times(info: JobInfo) -> list[float]:
    """Every time a record of the job gives (its writers' clocks)."""
    out = []
    for rec in (info.endpoint, info.status, info.job, *info.nodes):
        for key in ("heartbeat_at", "updated_at", "ended_at", "started_at", "created_at"):
            t = (rec or {}).get(key)
            if isinstance(t, (int, float)) and not isinstance(t, bool):
                out.append(float(t))
    return out


def _folder_mtime(root: str, job_id: str) -> float | None:
    """When the storage last saw a record of the job replaced: every record is renamed
    into the job's folder (or into ``nodes/``), which sets that folder's mtime."""
    times = []
    for path in (os.path.join(root, job_id), os.path.join(root, job_id, "nodes")):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            times.append(st.st_mtime)
    return max(times) if times else None


# -- small file operations, relative to a folder opened without following links ----
def _open_dir(root: str | os.PathLike[str], sub: str, *, create: bool) -> int | None:
    path = os.path.join(root, sub)
    try:
        return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            return None
    except OSError as exc:
        if create:
            raise
        log.debug("cannot open %s: %s", path, exc)
        return None
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # made by another writer meanwhile
    else:
        _like_root(root, path)
    return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW)


def _like_root(root: str | os.PathLike[str], path: str) -> None:
    """A new index folder gets the root's permissions: users who may add jobs to a shared
    root may add markers and entries too; a private root stays private."""
    try:
        mode = stat.S_IMODE(os.stat(root).st_mode)
        if mode != 0o700:
            os.chmod(path, mode)
    except OSError as exc:
        log.debug("could not match %s to %s: %s", path, root, exc)


def _write(dir_fd: int, name: str, record: dict[str, Any], *, sync: bool) -> None:
    """Write ``name`` whole: a temp file, then a rename, both inside ``dir_fd``."""
    payload = json.dumps(record, sort_keys=True).encode()
    tmp = f"{TEMP_PREFIX}{name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o644, dir_fd=dir_fd)
    try:
        try:
            os.write(fd, payload)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def _read_marker(root: str | os.PathLike[str], name: str) -> tuple[dict[str, Any] | None, float | None]:
    """Marker ``name``, checked, and its mtime, as :func:`_read` gives them."""
    fd = _open_dir(root, RUNS_DIR, create=False)
    if fd is None:
        return None, None
    try:
        return _read(fd, name, MARKER)
    finally:
        os.close(fd)


def _read(dir_fd: int, name: str, fields: dict[str, Any]) -> tuple[dict[str, Any] | None, float | None]:
    """The checked record ``name`` and its mtime; (None, mtime) when it is there but not
    a record of this shape, (None, None) when it is not there (or not a regular file)."""
    try:
        fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    except OSError:
        return None, None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, None
        raw = os.read(fd, _MAX_BYTES + 1)
    except OSError:
        return None, None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8")) if len(raw) <= _MAX_BYTES else None
        if not isinstance(data, dict):
            return None, st.st_mtime
        return check_record(data, fields, name=name), st.st_mtime
    except (ValueError, UnicodeDecodeError, RecursionError, RecordError):
        return None, st.st_mtime


def _unlink(root: str | os.PathLike[str], sub: str, name: str) -> None:
    """Remove ``root/sub/name`` if it is there; ``sub`` is never followed if a link."""
    fd = _open_dir(root, sub, create=False)
    if fd is None:
        return
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.debug("could not remove %s/%s/%s: %s", root, sub, name, exc)
    finally:
        os.close(fd)
