"""Job ids, the jobs directory and its per-job layout.

Layout::

    <root>/<job_id>/job.json        launcher, node 0
                    nodes/<n>.json  launcher on node n
                    endpoint.json   rank 0, 0600, holds the token
                    status.json     rank 0
                    inbox/          file channel
                    failures/       each failed rank's exception (worker bootstrap)
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .env import ENV_JOBS_DIR
from .errors import AmbiguousJob, InvalidJobId, JobNotFound
from .files import ensure_private_dir

JOB_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_JOB_ID_RE = re.compile(rf"\A{JOB_ID_PATTERN}\Z")

#: Version of the endpoint/status file format and HTTP API.
PROTOCOL = 1


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` unchanged or raise: ids become folder names, so no ``..`` or ``/``."""
    if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
        raise InvalidJobId(f"invalid job id {job_id!r}: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return job_id


def is_valid_job_id(job_id: str) -> bool:
    return isinstance(job_id, str) and bool(_JOB_ID_RE.match(job_id))


def default_job_id(env: dict[str, str] | None = None) -> str:
    """``slurm-<id>`` under SLURM (so every node and a requeued run agree), else host-time-rand."""
    env = os.environ if env is None else env
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return validate_job_id(f"slurm-{array_job}_{array_task}")
    if env.get("SLURM_JOB_ID"):
        return validate_job_id(f"slurm-{env['SLURM_JOB_ID']}")
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]) or "host"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return validate_job_id(f"{host[:80]}-{stamp}-{secrets.token_hex(2)}")


def resolve_jobs_dir(jobs_dir: str | os.PathLike[str] | None = None) -> Path:
    """``--jobs-dir``, else ``$FORGATHER_JOBS_DIR``, else ``~/.forgather/jobs``."""
    if jobs_dir:
        return Path(jobs_dir).expanduser().absolute()
    env = os.environ.get(ENV_JOBS_DIR)
    if env:
        return Path(env).expanduser().absolute()
    return default_jobs_dir()


def default_jobs_dir() -> Path:
    """``~/.forgather/jobs``: ours, so ``~/.forgather`` is made private too."""
    return Path.home() / ".forgather" / "jobs"


@dataclass(frozen=True)
class JobPaths:
    """Where one job's files live: path arithmetic that touches nothing, except
    :meth:`create`, which makes the job's folders and leaves a run marker."""

    root: Path
    job_id: str

    def __post_init__(self) -> None:
        validate_job_id(self.job_id)

    @property
    def dir(self) -> Path:
        return self.root / self.job_id

    @property
    def job(self) -> Path:
        return self.dir / "job.json"

    @property
    def endpoint(self) -> Path:
        return self.dir / "endpoint.json"

    @property
    def status(self) -> Path:
        return self.dir / "status.json"

    @property
    def inbox(self) -> Path:
        return self.dir / "inbox"

    @property
    def failures(self) -> Path:
        return self.dir / "failures"

    @property
    def nodes(self) -> Path:
        return self.dir / "nodes"

    def node(self, node_rank: int) -> Path:
        return self.nodes / f"{int(node_rank)}.json"

    def create(self, *, mark: bool = True) -> JobPaths:
        """Make root, job dir and inbox, all 0700 (and ``~/.forgather`` when the root is
        the default one: a shared folder above a ``--jobs-dir`` is not ours to change).

        A process that creates a job's folder starts a run of it (the launcher on each
        node, rank 0): with ``mark`` it first leaves a run marker naming itself, so a
        job that was settled is listed again from this moment (:mod:`.settled`)."""
        if self.root == default_jobs_dir():
            ensure_private_dir(self.root.parent)
        ensure_private_dir(self.root)
        if mark:
            from .settled import mark_run  # settled imports this module

            mark_run(self.root, self.job_id)
        ensure_private_dir(self.dir)
        ensure_private_dir(self.inbox)
        return self


def match_job_id(ref: str, ids: list[str], *, where: str, hint: str = "") -> str:
    """The one id ``ref`` names: an exact id, else the only id it is a prefix of.

    Every way of finding a job (a jobs directory, a remote server, a Ray cluster) uses
    this rule, so a prefix means the same thing everywhere. ``where`` names the place
    for the error; ``hint`` says what to try when nothing matches."""
    if ref in ids:
        return ref
    matches = sorted(i for i in ids if i.startswith(ref))
    if not matches:
        raise JobNotFound(f"no job {ref!r} {where}" + (f"; {hint}" if hint else ""))
    if len(matches) > 1:
        shown = ", ".join(matches[:8]) + (" ..." if len(matches) > 8 else "")
        raise AmbiguousJob(f"{ref!r} matches {len(matches)} jobs {where} ({shown}); give more of the id")
    return matches[0]
