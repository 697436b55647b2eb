"""Where jobs are found: a jobs directory, a remote server, or every node of a Ray cluster.

Two questions, the same three places: :func:`list_jobs` (what runs there) and
:func:`open_job` (the one job an id or prefix names, as a :class:`JobHandle`). Ray is
imported only when asked for, so every other path stays free of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgather_control.client.handle import JobHandle
from forgather_control.client.listing import find_job, scan
from forgather_control.client.remote import remote_jobs, remote_token, remote_url
from forgather_control.client.transport import HttpTransport, probe_endpoint
from forgather_control.core.errors import UsageError
from forgather_control.core.jobs import match_job_id, resolve_jobs_dir, validate_job_id

log = logging.getLogger(__name__)

#: The Ray cluster running here (``$RAY_ADDRESS`` first), for ``ray=AUTO``.
AUTO = "auto"


@dataclass
class Listing:
    """What :func:`list_jobs` found: ``list --json`` rows and where they came from."""

    rows: list[dict[str, Any]]
    where: str
    #: "local" (a jobs directory), "remote" (one server) or "ray" (a cluster)
    source: str = "local"
    #: Ray nodes that did not answer, each with ``node`` and ``reason``
    missing_nodes: list[dict[str, Any]] = field(default_factory=list)
    #: False when the jobs directory does not exist (nothing has used it yet)
    exists: bool = True


def _one_source(remote: str | None, ray: str | None) -> None:
    if remote is not None and ray is not None:
        raise UsageError("use either --remote or --ray, not both")


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
    _one_source(remote, ray)
    if remote is not None:
        return Listing(remote_jobs(remote, token, timeout=min(timeout, 5.0)), remote_url(remote), "remote")
    if ray is not None:
        from forgather_control.client import ray_listing

        res = ray_listing.list_cluster(
            address=ray,
            jobs_dir=str(resolve_jobs_dir(jobs_dir)) if jobs_dir else None,
            include_finished=include_finished,
            timeout=timeout,
        )
        for miss in res.missing_nodes:
            log.warning("node %s did not answer: %s", miss.get("node"), miss.get("reason"))
        return Listing(list(res.jobs), "the Ray cluster", "ray", missing_nodes=list(res.missing_nodes))
    root = resolve_jobs_dir(jobs_dir)
    rows = [info.summary() for info in scan(root, include_finished=include_finished, probe=probe_endpoint)]
    return Listing(rows, str(root), "local", exists=root.is_dir())


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
    validate_job_id(ref)  # a prefix of a valid id is itself valid; '../x' is not
    _one_source(remote, ray)
    if remote is not None:
        if channel == "file":
            raise UsageError("--channel file needs the job's folder; it cannot be used with --remote")
        url = remote_url(remote)
        rows = remote_jobs(remote, token, timeout=timeout)
        job_id = match_job_id(ref, [r["job_id"] for r in rows], where=f"at {url}", hint=f"it serves: {', '.join(r['job_id'] for r in rows) or 'nothing'}")
        summary = next(r for r in rows if r["job_id"] == job_id)
        return JobHandle(job_id, HttpTransport(url, remote_token(token), job_id, timeout=timeout), summary=summary, timeout=timeout)
    if ray is not None:
        if channel == "file":
            raise UsageError("--channel file needs the job's folder on this machine; it cannot be used with --ray")
        from forgather_control.client import ray_listing

        row = ray_listing.find_job(ref, address=ray, jobs_dir=str(resolve_jobs_dir(jobs_dir)) if jobs_dir else None, timeout=timeout)
        token_ = row.pop("token", None)  # the transport holds it; nothing else may
        row.pop("boot_id", None)
        where = (ray, str(resolve_jobs_dir(jobs_dir)) if jobs_dir else None)
        return JobHandle(row["job_id"], HttpTransport(row["url"], token_, row["job_id"], timeout=timeout), summary=row, timeout=timeout, ray=where)
    info = find_job(resolve_jobs_dir(jobs_dir), ref, probe=probe_endpoint)
    return JobHandle.from_info(info, channel=channel, timeout=timeout)
