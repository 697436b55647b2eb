"""Why a job failed: each rank's exception, and the one that came first.

When a rank's code raises, the worker bootstrap writes the exception into the job
folder (``failures/run-<R>-rank-<N>.json``) before the process dies, on every node, so
the folder on shared storage holds every rank's failure. The first one written is the
root cause: a rank that raises ends its process, and the others then fail in their next
collective ("Connection closed by peer"), later. torchrun's own error files would need
the user's entry point wrapped in ``@record``; the bootstrap wraps every script.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import asdict, dataclass

from forgather_control.core.files import TEMP_PREFIX, ensure_private_dir, write_json_atomic
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import FailureRecord, RecordError, encode, load

log = logging.getLogger(__name__)

__all__ = ["Failure", "read_failures", "record_failure", "root_cause"]

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
    at: float

    @classmethod
    def parse(cls, raw: FailureRecord | None) -> Failure | None:
        """A failure record read back (checked), or None when a field it needs is missing."""
        if raw is None:
            return None
        rank, run, host, pid, kind, message = raw.rank, raw.run, raw.host, raw.pid, raw.type, raw.message
        if rank is None or run is None or host is None or pid is None or kind is None or message is None:
            return None
        return cls(rank, run, host, pid, kind, message, list(raw.traceback or ())[-TRACEBACK_LINES:], raw.at or 0.0)

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
    """Every rank's recorded failure (of run ``run`` only, when given), first first."""
    try:
        names = sorted(os.listdir(paths.failures))
    except OSError:
        return []
    found = []
    for name in names:
        if not name.endswith(".json") or name.startswith(TEMP_PREFIX):
            continue
        try:
            failure = Failure.parse(load(paths.failures / name, FailureRecord, max_bytes=64 * 1024))
        except RecordError:
            continue
        if failure is not None and (run is None or failure.run == run):
            found.append(failure)
    return sorted(found, key=lambda f: (f.at, f.rank))


def root_cause(paths: JobPaths, *, run: int | None = None) -> Failure | None:
    """The failure that came first: the rank whose own code raised, not the ones that
    then lost it in a collective."""
    failures = read_failures(paths, run=run)
    return failures[0] if failures else None
