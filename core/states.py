"""The states a job can be in: one enum for the records, the listing and the renderers.

Records (status.json from rank 0, job.json and nodes/<n>.json from the launcher) hold
the job's own word; the listing adds what only a reader can know (``starting``,
``uncontrolled`` and ``ending`` from the launcher's records, ``dead``/``stale``/``unknown``
from liveness).
A record is read by other programs and other hosts, so a value read from one goes
through :meth:`JobState.parse`, never compared as a bare string.
"""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    # the job lives
    STARTING = "starting"  # launcher runs; rank 0 has not published this run's status
    UNCONTROLLED = "uncontrolled"  # as starting, past --no-control-after: no control attached yet
    RUNNING = "running"
    STOPPING = "stopping"  # a stop applied; the loop is winding down
    STALLED = "stalled"  # runs, but its step has not moved for longer than its stall threshold
    ENDING = "ending"  # rank 0 ended its run; torchrun is winding down
    REQUEUED = "requeued"  # SLURM requeued it; it waits in the queue
    # the job ended, and said how
    FINISHED = "finished"
    STOPPED = "stopped"
    ABORTED = "aborted"
    FAILED = "failed"
    #: saved and stopped by ``pause``: nothing of it runs, and it waits to be resumed
    #: (listed without --all, kept by cleanup, never settled)
    PAUSED = "paused"
    # a reader's verdict when the job cannot say
    DEAD = "dead"
    STALE = "stale"
    UNKNOWN = "unknown"
    CORRUPT = "corrupt"  # a record of the job is not one (wrong types, not JSON): shown with why

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        """The job ended and recorded how (nothing of it runs)."""
        return self in _FINAL

    @property
    def live(self) -> bool:
        """Something of the job runs or waits to run (a requeued job waits in SLURM)."""
        return self in _LIVE

    @classmethod
    def parse(cls, value: object) -> JobState | None:
        """The state a record names, or None for anything else (missing, a typo, a
        list where a string belongs)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return _BY_VALUE.get(value)
        return None


_FINAL = frozenset({JobState.FINISHED, JobState.STOPPED, JobState.ABORTED, JobState.FAILED, JobState.PAUSED})
_LIVE = frozenset({JobState.STARTING, JobState.UNCONTROLLED, JobState.RUNNING, JobState.STALLED, JobState.STOPPING, JobState.ENDING, JobState.REQUEUED})
_BY_VALUE = {s.value: s for s in JobState}


def is_final(value: object) -> bool:
    """True when a record's state field names a final state."""
    state = JobState.parse(value)
    return state is not None and state.final
