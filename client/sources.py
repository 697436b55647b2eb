"""The places jobs are found, behind one interface: a jobs directory, a ``--remote``
server, every node of a Ray cluster.

Each :class:`JobSource` answers the same three questions: which jobs are there
(:meth:`~JobSource.list`), which one job an id or a unique prefix names
(:meth:`~JobSource.find`, by core's one rule, ``match_job_id``), and a
:class:`JobHandle` on it (:meth:`~JobSource.open`). :func:`source_for` picks the source
from the options, once. Ray's listing is imported only when a :class:`RaySource` is
asked, so every other path stays free of it.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from forgather_control.client.handle import JobHandle
from forgather_control.client.jobinfo import JobInfo
from forgather_control.client.listing import find_job, scan
from forgather_control.client.remote import remote_jobs, remote_token, remote_url
from forgather_control.client.transport import HttpTransport, probe_endpoint
from forgather_control.core.errors import UsageError
from forgather_control.core.jobs import match_job_id, resolve_jobs_dir, validate_job_id
from forgather_control.core.records import JobRow, MissingNode

log = logging.getLogger(__name__)

#: The Ray cluster running here (``$RAY_ADDRESS`` first), for ``ray=AUTO``.
AUTO = "auto"


@dataclass
class Listing:
    """What :meth:`JobSource.list` found: ``list --json`` rows and where they came from."""

    rows: list[JobRow]
    where: str
    #: "local" (a jobs directory), "remote" (one server) or "ray" (a cluster)
    source: str = "local"
    #: Ray nodes that did not answer, each with ``node`` and ``reason``
    missing_nodes: list[MissingNode] = field(default_factory=list)
    #: False when the jobs directory does not exist (nothing has used it yet)
    exists: bool = True
    #: other users' job folders left out because they are private to them: id -> owner uid
    private: dict[str, int] = field(default_factory=dict)
    #: how many ended jobs were left out (without ``include_finished``)
    hidden: int = 0


@dataclass(frozen=True)
class FoundJob:
    """The one job an id or prefix named in a source, and what reaching it takes.

    ``info``: its records, read and judged (a jobs directory). ``summary``: what a server
    or a Ray node said of it, as a ``list --json`` row without secrets. ``url`` and
    ``token``: the server that answers for it, when it was found through one; the token
    is never shown."""

    job_id: str
    info: JobInfo | None = None
    summary: JobRow | None = None
    url: str | None = None
    token: str | None = field(default=None, repr=False)


class JobSource(ABC):
    """A place jobs are found. Subclasses say how to list, find and reach a job there;
    opening one (the id checked, the channel refused early, then found, then reached)
    is the same for all."""

    #: :attr:`Listing.source`: "local", "remote" or "ray"
    kind: ClassVar[str]
    #: Why ``--channel file`` cannot be used here (None: it can, the job's folder is here)
    no_file_channel: ClassVar[str | None] = None
    #: Listing and finding ask a whole cluster (seconds, not milliseconds): a caller that
    #: asks often keeps what it got for a while
    slow: ClassVar[bool] = False

    @property
    @abstractmethod
    def where(self) -> str:
        """Where this source looks, as a listing and an error name it."""

    @abstractmethod
    def list(self, *, include_finished: bool = False, timeout: float = 15.0) -> Listing:
        """The jobs here that may be running (every job with ``include_finished``)."""

    @abstractmethod
    def find(self, ref: str, *, timeout: float = 5.0) -> FoundJob:
        """The job ``ref`` (an id or a unique prefix) names here. Raises JobNotFound,
        AmbiguousJob, or Unreachable when it is found but cannot be reached."""

    @abstractmethod
    def reach(self, found: FoundJob, *, channel: str, timeout: float) -> JobHandle:
        """A handle on a job this source found."""

    def check_channel(self, channel: str) -> None:
        """Refuse, before anything is looked up, a channel no job found here can have."""
        if channel == "file" and self.no_file_channel is not None:
            raise UsageError(self.no_file_channel)

    def open(self, ref: str, *, channel: str = "auto", timeout: float = 5.0) -> JobHandle:
        """The job ``ref`` names, ready to be asked or commanded."""
        validate_job_id(ref)  # a prefix of a valid id is itself valid; '../x' is not
        self.check_channel(channel)
        return self.reach(self.find(ref, timeout=timeout), channel=channel, timeout=timeout)


class LocalSource(JobSource):
    """A jobs directory on this machine: records read and liveness judged here."""

    kind = "local"

    def __init__(self, jobs_dir: str | Path | None = None) -> None:
        self.root = resolve_jobs_dir(jobs_dir)

    @property
    def where(self) -> str:
        return str(self.root)

    def list(self, *, include_finished: bool = False, timeout: float = 15.0) -> Listing:
        found = scan(self.root, include_finished=include_finished, probe=probe_endpoint)
        return Listing([info.summary() for info in found], self.where, self.kind, exists=self.root.is_dir(), private=found.private, hidden=found.hidden)

    def find(self, ref: str, *, timeout: float = 5.0) -> FoundJob:
        info = find_job(self.root, ref, probe=probe_endpoint)
        return FoundJob(info.job_id, info=info)

    def reach(self, found: FoundJob, *, channel: str, timeout: float) -> JobHandle:
        if found.info is None:
            raise TypeError(f"job {found.job_id} was not found in a jobs directory; open it through the source that found it")
        return JobHandle.from_info(found.info, channel=channel, timeout=timeout)


class RemoteSource(JobSource):
    """One control server reached by address (``--remote HOST:PORT``): its answers are
    all that is known of its jobs. ``token``: else ``$FORGATHER_TOKEN``."""

    kind = "remote"
    no_file_channel = "--channel file needs the job's folder; it cannot be used with --remote"

    def __init__(self, remote: str, token: str | None = None) -> None:
        self.remote = remote
        self.token = token

    def __repr__(self) -> str:
        return f"RemoteSource({self.remote!r})"  # never the token

    @property
    def where(self) -> str:
        return remote_url(self.remote)

    def list(self, *, include_finished: bool = False, timeout: float = 15.0) -> Listing:
        return Listing(remote_jobs(self.remote, self.token, timeout=min(timeout, 5.0)), self.where, self.kind)

    def find(self, ref: str, *, timeout: float = 5.0) -> FoundJob:
        url = self.where
        rows = remote_jobs(self.remote, self.token, timeout=timeout)
        ids = [r.job_id for r in rows]
        job_id = match_job_id(ref, ids, where=f"at {url}", hint=f"it serves: {', '.join(ids) or 'nothing'}")
        summary = next(r for r in rows if r.job_id == job_id)
        return FoundJob(job_id, summary=summary, url=url, token=remote_token(self.token))

    def reach(self, found: FoundJob, *, channel: str, timeout: float) -> JobHandle:
        return JobHandle(found.job_id, _http(found, timeout), summary=found.summary, timeout=timeout)


class RaySource(JobSource):
    """Every node of a Ray cluster, each listing its own jobs directory, merged with this
    machine's. ``address``: host:port, ray://host:port or :data:`AUTO`; ``jobs_dir``: the
    directory every node reads (None: each node's own default)."""

    kind = "ray"
    no_file_channel = "--channel file needs the job's folder on this machine; it cannot be used with --ray"
    slow = True

    def __init__(self, address: str, jobs_dir: str | Path | None = None) -> None:
        self.address = address
        self.jobs_dir = str(resolve_jobs_dir(jobs_dir)) if jobs_dir else None

    @property
    def where(self) -> str:
        return "the Ray cluster"

    def list(self, *, include_finished: bool = False, timeout: float = 15.0) -> Listing:
        from forgather_control.client import ray_listing  # Ray's side, on first use only

        res = ray_listing.list_cluster(address=self.address, jobs_dir=self.jobs_dir, include_finished=include_finished, timeout=timeout)
        for miss in res.missing_nodes:
            log.warning("node %s did not answer: %s", miss.node, miss.reason)
        return Listing(list(res.jobs), self.where, self.kind, missing_nodes=list(res.missing_nodes))

    def find(self, ref: str, *, timeout: float = 5.0) -> FoundJob:
        from forgather_control.client import ray_listing

        found = ray_listing.find_job(ref, address=self.address, jobs_dir=self.jobs_dir, timeout=timeout)
        return FoundJob(found.row.job_id, summary=found.row, url=found.row.url, token=found.token)  # the transport holds the token; nothing else may

    def reach(self, found: FoundJob, *, channel: str, timeout: float) -> JobHandle:
        return JobHandle(found.job_id, _http(found, timeout), summary=found.summary, timeout=timeout, ray=(self.address, self.jobs_dir))


def _http(found: FoundJob, timeout: float) -> HttpTransport:
    if found.url is None:
        raise TypeError(f"job {found.job_id} was found without a server to reach it through")
    return HttpTransport(found.url, found.token, found.job_id, timeout=timeout)


def source_for(*, jobs_dir: str | Path | None = None, remote: str | None = None, token: str | None = None, ray: str | None = None) -> JobSource:
    """The one source the options name: ``remote`` (a server), ``ray`` (a cluster's
    address, or :data:`AUTO`), else the jobs directory. ``jobs_dir`` is also the
    directory a Ray cluster's nodes read."""
    if remote is not None and ray is not None:
        raise UsageError("use either --remote or --ray, not both")
    if remote is not None:
        return RemoteSource(remote, token)
    if ray is not None:
        return RaySource(ray, jobs_dir)
    return LocalSource(jobs_dir)
