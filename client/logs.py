"""A job's logs: every rank's stdout and stderr as its node's launcher kept them in the
job folder (``core/logs.py`` says where and how they are bounded and read).

On a host that shares the job folder they are read here (:class:`LocalLogs`); on a Ray
cluster whose nodes keep their own jobs directories, a task on every node reads that
node's (:class:`RayLogs`, :mod:`.ray_logs`). Both answer one question,
:meth:`LogSource.read`: these ranks' tails, or what came after these offsets, and has
the job ended? :func:`tail_logs` and :func:`follow` are what ``forgather control logs``
prints, for any Python caller.

For a page that polls (the job view's Logs tab): :func:`log_ranks` (the ranks with a
log) and :func:`read_rank` (one rank's tail, or what came after an offset it returned).
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from forgather_control.core.errors import ControlError, PrivateJob
from forgather_control.core.files import RecordError, owner_name
from forgather_control.core.jobs import JobPaths, resolve_jobs_dir, validate_job_id
from forgather_control.core.liveness import Liveness
from forgather_control.core.logs import LOGS_DIR, LogRead, LogsFolder, LogText

__all__ = [
    "DEFAULT_TAIL",
    "LocalLogs",
    "LogRead",
    "LogSource",
    "LogsUnreadable",
    "NoLogs",
    "RayLogs",
    "follow",
    "log_ranks",
    "open_logs",
    "read_rank",
    "tail_logs",
]

#: Lines of each rank's tail when none is asked for.
DEFAULT_TAIL = 20
#: Seconds between looks for new lines while following (a Ray cluster: at least RAY_INTERVAL).
FOLLOW_INTERVAL = 0.5
RAY_INTERVAL = 2.0
#: Seconds between judgements of whether a followed job has ended.
JUDGE_EVERY = 1.0


class NoLogs(ControlError):
    """The job has no log (of the ranks asked for): started without ``forgather launch``,
    with ``--no-control``, or not started yet. Exit code 1."""


class LogsUnreadable(ControlError):
    """A log that is there but is not one to read: a link, another user's file. Exit code 1."""


class LogSource(ABC):
    """Where a job's logs are read from."""

    job_id: str

    @abstractmethod
    def read(self, ranks: Sequence[int] | None, *, tail: int | None, after: Mapping[int, int], partial: bool) -> LogRead:
        """The logs of ``ranks`` (None: every rank with a log): for a rank in ``after``,
        what came after that offset; for any other, its last ``tail`` lines, or (``tail``
        None) its output from the start. ``partial``: a last line not ended yet is read
        too (else it waits for its end)."""


class LocalLogs(LogSource):
    """A job folder on this host (shared storage, or this node's own)."""

    def __init__(self, paths: JobPaths) -> None:
        self.paths = paths
        self.job_id = paths.job_id
        self._judged_at = 0.0
        self._ended = False

    @classmethod
    def find(cls, ref: str, *, jobs_dir: str | Path | None = None) -> LocalLogs:
        """The job an id or unique prefix names in the jobs directory (JobNotFound,
        AmbiguousJob, PrivateJob as every command says them)."""
        from forgather_control.client.listing import job_ids
        from forgather_control.core.ids import match_job_id

        validate_job_id(ref)
        root = resolve_jobs_dir(jobs_dir)
        job_id = match_job_id(ref, job_ids(root), where=f"in {root}", hint="run `forgather control list --all` to see the jobs there, or pass --jobs-dir")
        return cls(JobPaths(root, job_id))

    def open(self) -> LogsFolder:
        """The job's logs folder, checked; :class:`NoLogs`, :class:`PrivateJob` or
        :class:`LogsUnreadable` when it cannot be read."""
        try:
            return LogsFolder(self.paths.dir)
        except FileNotFoundError:
            raise NoLogs(_no_logs(self.job_id, self.paths.dir / LOGS_DIR)) from None
        except PermissionError:
            raise PrivateJob(_private(self.job_id, self.paths.dir)) from None
        except RecordError as exc:
            raise LogsUnreadable(f"job {self.job_id}'s logs are not read: {exc}") from None

    def read(self, ranks: Sequence[int] | None, *, tail: int | None, after: Mapping[int, int], partial: bool) -> LogRead:
        out = LogRead(self.job_id)
        try:
            folder = self.open()
        except NoLogs as exc:
            out.absent, out.ended = str(exc), self.ended()
            return out
        with folder:
            try:
                folder.read(out, ranks, tail=tail, after=after, partial=partial)
            except PermissionError:
                raise PrivateJob(_private(self.job_id, self.paths.dir)) from None
        out.ended = self.ended()
        return out

    def ended(self) -> bool:
        """Has the job ended (recorded its end, or died, or its folder is gone)? Judged at
        most every :data:`JUDGE_EVERY` seconds."""
        now = time.monotonic()
        if self._ended or now - self._judged_at < JUDGE_EVERY:
            return self._ended
        self._judged_at = now
        from forgather_control.client.listing import judge_job
        from forgather_control.client.transport import probe_endpoint

        if not self.paths.dir.is_dir():
            self._ended = True
            return True
        info = judge_job(self.paths, probe=probe_endpoint)
        self._ended = info.state.final or info.liveness == Liveness.DEAD
        return self._ended


class RayLogs(LogSource):
    """The job's logs on the nodes of a Ray cluster, each node's read there (the job id
    resolved across them, as ``--ray`` resolves it for every command)."""

    def __init__(self, ref: str, *, address: str | None, jobs_dir: str | None, timeout: float = 15.0) -> None:
        validate_job_id(ref)
        self.ref = ref
        self.job_id = ref
        self.address = address
        self.jobs_dir = jobs_dir
        self.timeout = timeout

    def read(self, ranks: Sequence[int] | None, *, tail: int | None, after: Mapping[int, int], partial: bool) -> LogRead:
        from forgather_control.client.ray_logs import logs_cluster

        out = logs_cluster(self.ref, address=self.address, jobs_dir=self.jobs_dir, ranks=ranks, tail=tail, after=after, partial=partial, timeout=self.timeout)
        self.ref = self.job_id = out.job_id  # the id it resolved to, from now on
        return out


def open_logs(ref: str, *, jobs_dir: str | Path | None = None, ray: str | None = None, timeout: float = 15.0) -> LogSource:
    """Where the job ``ref`` (an id or a unique prefix) has its logs: its folder here, or
    (``ray``: an address, or ``auto``) the nodes of a Ray cluster."""
    if ray is not None:
        return RayLogs(ref, address=None if ray == "auto" else ray, jobs_dir=None if jobs_dir is None else str(jobs_dir), timeout=timeout)
    return LocalLogs.find(ref, jobs_dir=jobs_dir)


def tail_logs(source: LogSource, ranks: Sequence[int] | None = None, *, lines: int = DEFAULT_TAIL) -> LogRead:
    """The last ``lines`` lines of each rank's log (of ``ranks``; None: every rank with
    one), a last line not ended yet included. :class:`NoLogs` when none of them has one."""
    read = source.read(ranks, tail=lines, after={}, partial=True)
    _check_some(read, ranks)
    return read


def follow(
    source: LogSource,
    ranks: Sequence[int] | None = None,
    *,
    lines: int = DEFAULT_TAIL,
    interval: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[LogRead]:
    """Each rank's tail, then every new line as it comes (across rotations; a rank whose
    log appears later from its start: a job still starting is waited for), until the job
    ends: the last read has ``ended`` and the last lines, those not ended by a line end
    included. :class:`NoLogs` when the job has ended without any. Stop it earlier by
    closing the iterator (Ctrl-C in the CLI)."""
    if interval is None:
        interval = RAY_INTERVAL if isinstance(source, RayLogs) else FOLLOW_INTERVAL
    read = source.read(ranks, tail=lines, after={}, partial=False)
    if read.ended:
        _check_some(read, ranks)  # nothing will come: say so now
    offsets = {t.rank: t.offset for t in read.texts}
    while True:
        if read.ended:
            yield _rest(source, ranks, offsets, read)
            return
        yield read
        sleep(interval)
        read = source.read(ranks, tail=None, after=offsets, partial=False)
        _advance(offsets, read)


def _rest(source: LogSource, ranks: Sequence[int] | None, offsets: dict[int, int], read: LogRead) -> LogRead:
    """``read`` with everything after it: the job has ended, so its logs are whole; read
    to their ends (a read takes a bounded amount), last lines not ended included."""
    for _ in range(64):
        more = source.read(ranks, tail=None, after=offsets, partial=True)
        moved = [t for t in more.texts if t.offset != offsets.get(t.rank)]
        _advance(offsets, more)
        read.texts += moved
        read.notes += [n for n in more.notes if n not in read.notes]
        if not moved:
            break
    return read


def _advance(offsets: dict[int, int], read: LogRead) -> None:
    for t in read.texts:
        offsets[t.rank] = t.offset


def _check_some(read: LogRead, ranks: Sequence[int] | None) -> None:
    if read.texts:
        return
    if read.absent:
        raise NoLogs(read.absent)
    why = f"; {'; '.join(read.notes)}" if read.notes else ""
    if ranks is None:
        raise NoLogs(f"job {read.job_id} has no rank's log yet{why}")
    some = f"; rank(s) {', '.join(str(r) for r in read.have)} have one" if read.have else ""
    raise NoLogs(f"job {read.job_id} has no log of rank {', '.join(str(r) for r in ranks)}{some}{why}")


# -- for a page that polls ----------------------------------------------------------------
def log_ranks(jobs_dir: str | Path, job_id: str) -> list[int]:
    """The ranks of job ``job_id`` that have a log in its folder, in order ([] when it has
    none). Raises PrivateJob or LogsUnreadable as :meth:`LocalLogs.open` does."""
    try:
        with LocalLogs(JobPaths(Path(jobs_dir), job_id)).open() as folder:
            return folder.ranks()
    except NoLogs:
        return []


def read_rank(jobs_dir: str | Path, job_id: str, rank: int, after: int | None = None, *, lines: int = DEFAULT_TAIL) -> LogText:
    """One rank's log, for a page that polls it.

    ``after`` None: its last ``lines`` lines (without a last line not ended yet). Else
    the lines that came after ``after``, an offset a previous call returned (at most
    :data:`~forgather_control.core.logs.READ_BYTES` of them: call again for more). Poll
    with the ``offset`` of what it returns; ``skipped`` counts bytes rotated away before
    they were read. Lines are safe to show as text (no control character, no escape
    sequence). Raises NoLogs (no log of that rank), PrivateJob, LogsUnreadable."""
    source = LocalLogs(JobPaths(Path(jobs_dir), job_id))
    with source.open() as folder:
        try:
            if after is None:
                return folder.tail(rank, lines, partial=False)
            return folder.after(rank, max(0, int(after)))
        except FileNotFoundError:
            raise NoLogs(f"job {job_id} has no log of rank {rank}") from None
        except PermissionError:
            raise PrivateJob(_private(job_id, source.paths.dir)) from None
        except RecordError as exc:
            raise LogsUnreadable(f"rank {rank}'s log of job {job_id} is not read: {exc}") from None


def _no_logs(job_id: str, where: Path) -> str:
    return (
        f"job {job_id} has no logs ({where} is not there): its ranks' output is kept only when it is started by "
        "`forgather launch` with control (not --no-control), once a rank has started"
    )


def _private(job_id: str, job_dir: Path) -> str:
    try:
        owner = owner_name(os.lstat(job_dir).st_uid)
    except OSError:
        owner = "another user"
    return f"job {job_id}: its logs are private to {owner}; only its owner can read them"
