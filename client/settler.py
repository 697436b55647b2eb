"""The Settler: given jobs a listing read and judged, write a settled entry for each that
has provably ended, and remove the run markers proven gone (the rules are in
:mod:`forgather_control.core.markers`). :mod:`.listing` uses one per listing;
:mod:`.settled` reads one job and settles it on demand.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import stat
from collections.abc import Callable

from forgather_control.client.jobinfo import JobInfo
from forgather_control.core.files import TEMP_PREFIX
from forgather_control.core.liveness import CLOCK_SKEW, Liveness, pid_alive, same_pid_namespace
from forgather_control.core.markers import (
    FORMAT,
    RUNS_DIR,
    SETTLED_DIR,
    SILENT_FOR,
    Index,
    open_own,
    read_marker,
    unlink,
    unsettle,
    write_record,
)
from forgather_control.core.records import Identity, Marker, SettledEntry
from forgather_control.core.states import is_final

log = logging.getLogger(__name__)

__all__ = ["Settler"]

_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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
        settled = self.index.settled_by(job_id)
        try:
            if not _ours(self.root, job_id):
                return False  # another user's job: only its own user settles it (core.markers)
            if settled and (may_run or not names):
                if may_run:
                    unsettle(self.root, job_id)  # settled, yet it may run: read it every time again
                return not may_run
            verdict = self.verdict(info)
            if verdict is None:
                return False
            gone = [n for n in names if self.marker_gone(n, info)]
            if len(gone) == len(names) and (not settled or names):
                self._write_entry(info, verdict)
            for name in gone:
                unlink(self.root, RUNS_DIR, name)
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
        if info.corrupt or info.paused:
            return None  # a paused job waits to be resumed: ``list`` shows it, so reads it
        if info.liveness == Liveness.FINISHED:
            if info.failed_lately(self.now) and not self.silent(info):
                return None  # shown by ``list`` for a day, as a death is (JobInfo.failed_lately)
            # judge() lets another host's launcher record without an end pass once its
            # heartbeat is old on *this* host's clock: not proof enough to settle on.
            if all(n.ended_at or same_pid_namespace(n) for n in info.nodes) or self.silent(info):
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
        mark, mtime = read_marker(self.root, name)
        if mark is not None and mark.job_id == info.job_id and mark.created_at is not None:
            if _ended_on_record(mark, mark.created_at, info):
                return True
            if same_pid_namespace(mark):
                return not pid_alive(mark)  # a process here is never settled by age
            if self._slurm_gone(mark, info):
                return True
            if self.now - mark.created_at < SILENT_FOR:
                return False
        # by age: the marker itself and everything the job writes, a day old on both clocks
        return mtime is not None and self.silent(info) and self.storage_now() - mtime >= SILENT_FOR

    def orphan_gone(self, name: str) -> bool:
        """A marker whose job folder is gone: is its process proven gone too?"""
        mark, mtime = read_marker(self.root, name)
        if mark is not None and same_pid_namespace(mark):
            return not pid_alive(mark)
        made = mark.created_at if mark is not None else None
        if made is not None and self.now - made < SILENT_FOR:
            return False
        return mtime is not None and self.storage_now() - mtime >= SILENT_FOR

    def silent(self, info: JobInfo) -> bool:
        """Nothing of the job has been written for :data:`SILENT_FOR`, by the times its
        records give against this host's clock *and* by the storage's own clock (its
        folder's mtime against a file created now): a reader whose clock runs ahead, or
        a writer whose clock runs behind, does not make a live job look silent. A time
        more than :data:`CLOCK_SKEW` ahead of ours says only that its writer's clock is
        ahead (never "written just now" for ten years): it is left out, and a job whose
        every time is such is judged by the storage's clock alone."""
        if info.job_id in self._silent:
            return self._silent[info.job_id]
        times = _times(info)
        believable = [t for t in times if t - self.now <= CLOCK_SKEW]
        newest = max(believable, default=None)
        quiet = self.now - newest >= SILENT_FOR if newest is not None else bool(times)
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
            fd = open_own(self.root, SETTLED_DIR, create=True)
            if fd is None:
                raise OSError(f"{self.root}/{SETTLED_DIR} has no folder of ours")
            self._settled_fd = fd
        return self._settled_fd

    def _write_entry(self, info: JobInfo, verdict: str) -> None:
        record = SettledEntry(
            job_id=info.job_id,
            verdict=verdict,
            state=str(info.state),
            evidence=info.evidence[:1000],
            restarts=info.job.restarts if info.job is not None else None,
            settled_at=self.now,
            host=socket.gethostname(),
            pid=os.getpid(),
            format=FORMAT,
        )
        # not fsynced: a lost entry is only settled again by the next listing
        write_record(self._fd(), info.job_id, record, sync=False)
        self.written += 1

    def _slurm_gone(self, mark: Marker, info: JobInfo) -> bool:
        """A record of the marker's process ties it to a SLURM job SLURM no longer knows."""
        ids = {n.slurm_job_id for n in info.nodes if _same_process(n, mark) and n.slurm_job_id}
        sched = info.job.scheduler if info.job is not None else None
        if sched is not None and sched.type == "slurm" and sched.slurm_job_id:
            if any(r is not None and _same_process(r, mark) for r in (info.current_status, info.endpoint)):
                ids.add(sched.slurm_job_id)
        return any(self.squeue(str(i)) == "" for i in ids if i)


def _ended_on_record(mark: Marker, made: float, info: JobInfo) -> bool:
    """The marker's process recorded its own end after it made the marker (at ``made``;
    both times from its own clock): its node record's ``ended_at``, or rank 0's final status."""
    for n in info.nodes:
        if _same_process(n, mark) and n.ended_at is not None and n.ended_at >= made:
            return True
    st = info.status
    if st is not None and _same_process(st, mark) and is_final(st.state):
        last = max((t for t in (st.ended_at, st.heartbeat_at, st.updated_at) if t is not None), default=None)
        return last is not None and last >= made
    return False


def _same_process(rec: Identity, mark: Identity) -> bool:
    a, b = rec.pid_start_time, mark.pid_start_time
    same_ns = rec.pid_ns is None or mark.pid_ns is None or rec.pid_ns == mark.pid_ns
    return rec.host == mark.host and rec.boot_id == mark.boot_id and same_ns and rec.pid == mark.pid and a is not None and b is not None and abs(a - b) <= 1.0


def _times(info: JobInfo) -> list[float]:
    """Every time a record of the job gives (its writers' clocks)."""
    out: list[float] = []
    for ep in (info.endpoint,) if info.endpoint is not None else ():
        out += [t for t in (ep.started_at,) if t is not None]
    for st in (info.status,) if info.status is not None else ():
        out += [t for t in (st.heartbeat_at, st.updated_at, st.ended_at, st.started_at) if t is not None]
    for jb in (info.job,) if info.job is not None else ():
        out += [t for t in (jb.updated_at, jb.ended_at, jb.started_at, jb.created_at) if t is not None]
    for n in info.nodes:
        out += [t for t in (n.heartbeat_at, n.ended_at, n.started_at) if t is not None]
    return out


def _ours(root: str, job_id: str) -> bool:
    """The job's folder is this user's: the only jobs whose entries this user writes."""
    try:
        return os.lstat(os.path.join(root, job_id)).st_uid == os.geteuid()
    except OSError:
        return False


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
