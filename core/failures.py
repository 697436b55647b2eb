"""Why a job failed: each rank's exception, and the one that came first.

When a rank's code raises, the worker bootstrap writes the exception into the job
folder (``failures/run-<R>-rank-<N>.json``) before the process dies, on every node, so
the folder on shared storage holds every rank's failure. The first one written is the
root cause: a rank that raises ends its process, and the others then fail in their next
collective ("Connection closed by peer"), later. torchrun's own error files would need
the user's entry point wrapped in ``@record``; the bootstrap wraps every script.

"First" is never read off the writers' clocks across hosts: a node whose clock runs 5 s
ahead would name the consequence. Every failure file gets its time from one clock, the
storage's (its mtime: the file server's, or the one kernel's), whatever host wrote it;
that orders them. Only in a tie of that clock (its resolution) does a host's own clock
(``at``) order that host's own ranks; across hosts a tie stays one and the rank decides.
A record that gives no ``at`` is not one this code wrote whole: it never comes first.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import traceback
from dataclasses import asdict, dataclass

from forgather_control.core.files import TEMP_PREFIX, ensure_private_dir, write_json_atomic
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import FailureRecord, RecordError, encode, load

log = logging.getLogger(__name__)

__all__ = ["Failure", "first_first", "read_failures", "record_failure", "root_cause"]

#: How much of a traceback is kept: its last lines are where it happened.
TRACEBACK_LINES = 12
_MAX_TEXT = 2000


@dataclass(frozen=True)
class Failure:
    """One rank's exception, as recorded in the job folder."""

    rank: int
    run: int
    host: str
    pid: int
    type: str
    message: str
    traceback: list[str]
    #: when it was written, by its writer's clock (None: the record does not say)
    at: float | None

    @classmethod
    def parse(cls, raw: FailureRecord | None) -> Failure | None:
        """A failure record read back (checked), or None when a field it needs is missing."""
        if raw is None:
            return None
        rank, run, host, pid, kind, message = raw.rank, raw.run, raw.host, raw.pid, raw.type, raw.message
        if rank is None or run is None or host is None or pid is None or kind is None or message is None:
            return None
        return cls(rank, run, host, pid, kind, message, list(raw.traceback or ())[-TRACEBACK_LINES:], raw.at)

    def as_record(self) -> FailureRecord:
        return FailureRecord(**asdict(self))

    def describe(self) -> str:
        return f"rank {self.rank} ({self.host}, pid {self.pid}): {self.type}: {self.message}"


def record_failure(paths: JobPaths, *, rank: int, run: int, exc: BaseException) -> None:
    """Write ``exc`` as rank ``rank``'s failure in run ``run``. Never raises: the
    process is already failing, and the user's traceback must stay the one printed."""
    try:
        lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
        me = os.uname().nodename
        failure = Failure(
            rank=rank,
            run=run,
            host=me,
            pid=os.getpid(),
            type=type(exc).__name__,
            message=str(exc)[:_MAX_TEXT],
            traceback=[line[:500] for line in lines[-TRACEBACK_LINES:]],
            at=time.time(),
        )
        ensure_private_dir(paths.failures)
        write_json_atomic(paths.failures / f"run-{run}-rank-{rank}.json", encode(failure.as_record()))
    except Exception as err:  # noqa: BLE001 - the user's exception must come out, not ours
        log.warning("could not record this rank's failure in %s: %s", paths.failures, err)


def read_failures(paths: JobPaths, *, run: int | None = None) -> list[Failure]:
    """Every rank's recorded failure (of run ``run`` only, when given), first first
    (:func:`first_first`)."""
    try:
        names = sorted(os.listdir(paths.failures))
    except OSError:
        return []
    found: list[tuple[Failure, int]] = []
    for name in names:
        if not name.endswith(".json") or name.startswith(TEMP_PREFIX):
            continue
        path = paths.failures / name
        try:
            failure = Failure.parse(load(path, FailureRecord, max_bytes=64 * 1024))
            written = os.lstat(path).st_mtime_ns
        except (RecordError, OSError):
            continue
        if failure is not None and (run is None or failure.run == run):
            found.append((failure, written))
    return first_first(found)


def first_first(found: list[tuple[Failure, int]]) -> list[Failure]:
    """Failures (each with its file's mtime in ns: the storage's clock) in the order they
    happened, as the module says: a failure without ``at`` after every one with it, then
    the storage's clock, then, in a tie of it, each host's own clock among its own ranks
    (the tie's places kept by rank across hosts)."""
    ordered = sorted(found, key=lambda f: (f[0].at is None, f[1], f[0].rank))
    out: list[Failure] = []
    for _, tie in itertools.groupby(ordered, key=lambda f: (f[0].at is None, f[1])):
        places = [f for f, _ in tie]
        by_host: dict[str, list[Failure]] = {}
        for f in places:
            by_host.setdefault(f.host, []).append(f)
        mine = {host: iter(sorted(fs, key=lambda f: (f.at or 0.0, f.rank))) for host, fs in by_host.items()}
        out += [next(mine[f.host]) for f in places]  # each host's places, in its own clock's order
    return out


def root_cause(paths: JobPaths, *, run: int | None = None) -> Failure | None:
    """The failure that came first: the rank whose own code raised, not the ones that
    then lost it in a collective."""
    failures = read_failures(paths, run=run)
    return failures[0] if failures else None
