"""Where jobs are found: a jobs directory, a remote server, or every node of a Ray cluster.

Two questions, asked of whichever :class:`~forgather_control.client.sources.JobSource`
the options name (:func:`~forgather_control.client.sources.source_for`): :func:`list_jobs`
(what runs there) and :func:`open_job` (the one job an id or prefix names, as a
:class:`JobHandle`). Ray is imported only when asked for, so every other path stays free of it.
"""

from __future__ import annotations

from pathlib import Path

from forgather_control.client.handle import JobHandle
from forgather_control.client.sources import AUTO, Listing, source_for
from forgather_control.core.jobs import validate_job_id

__all__ = ["AUTO", "Listing", "list_jobs", "open_job"]


def list_jobs(
    *,
    jobs_dir: str | Path | None = None,
    include_finished: bool = False,
    remote: str | None = None,
    token: str | None = None,
    ray: str | None = None,
    timeout: float = 15.0,
) -> Listing:
    """The jobs in a jobs directory (default), at a remote server, or across a Ray
    cluster (``ray``: an address, or :data:`AUTO`)."""
    return source_for(jobs_dir=jobs_dir, remote=remote, token=token, ray=ray).list(include_finished=include_finished, timeout=timeout)


def open_job(
    ref: str,
    *,
    jobs_dir: str | Path | None = None,
    remote: str | None = None,
    token: str | None = None,
    ray: str | None = None,
    channel: str = "auto",
    timeout: float = 5.0,
) -> JobHandle:
    """The job ``ref`` (an id or a unique prefix) names, ready to be asked or commanded.

    Raises JobNotFound, AmbiguousJob, InvalidJobId, Unreachable (found, but no way to
    reach it from here) or UsageError; each carries the CLI's exit code."""
    validate_job_id(ref)  # before the options: a bad id is the first thing said
    return source_for(jobs_dir=jobs_dir, remote=remote, token=token, ray=ray).open(ref, channel=channel, timeout=timeout)
