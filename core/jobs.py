"""Job ids, the jobs directory and its per-job layout.

Layout::

    <root>/<job_id>/job.json        launcher, node 0
                    nodes/<n>.json  launcher on node n
                    endpoint.json   rank 0, 0600, holds the token
                    status.json     rank 0
                    inbox/          file channel
                    failures/       each failed rank's exception (worker bootstrap)
                    notify.json     launcher, node 0, 0600: where alerts go (secrets)
                    alerts/         one claim per alert sent (core/alerts.py)
                    relaunch.json   launcher, node 0, 0600: what `resume` starts again (core/relaunch.py)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from forgather_control.core.env import ENV_JOBS_DIR
from forgather_control.core.files import NotOurs, ensure_dir, ensure_private_dir, foreign
from forgather_control.core.ids import JOB_ID_PATTERN, default_job_id, is_valid_job_id, match_job_id, validate_job_id

__all__ = [
    "JOB_ID_PATTERN",
    "PROTOCOL",
    "JobPaths",
    "default_job_id",
    "default_jobs_dir",
    "is_valid_job_id",
    "match_job_id",
    "resolve_jobs_dir",
    "validate_job_id",
]

#: Version of the endpoint/status file format and HTTP API.
PROTOCOL = 1


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
    def notify(self) -> Path:
        """Where the job's alerts go (0600: a notify URL is a secret; core/alerts.py)."""
        return self.dir / "notify.json"

    @property
    def alerts(self) -> Path:
        """One claim per alert: who sends it, and whether it was sent (core/alerts.py)."""
        return self.dir / "alerts"

    @property
    def relaunch(self) -> Path:
        """What ``forgather control resume`` starts the job again with (0600; core/relaunch.py)."""
        return self.dir / "relaunch.json"

    @property
    def nodes(self) -> Path:
        return self.dir / "nodes"

    def node(self, node_rank: int) -> Path:
        return self.nodes / f"{int(node_rank)}.json"

    def check_owned(self) -> None:
        """Raise :class:`~.files.NotOurs`, naming the owner, when the job's folder is there
        and another user made it: a job's folder is its launcher's own, never taken over."""
        try:
            uid = os.lstat(self.dir).st_uid
        except (FileNotFoundError, NotADirectoryError):
            return  # not there (nor can it be: creating it says why)
        if uid != os.geteuid():
            raise NotOurs(f"job folder {foreign(self.dir, uid)}: a job's folder belongs to the user who launched it. Pick another --job-id")

    def create(self, *, mark: bool = True) -> JobPaths:
        """Make the job dir and inbox, 0700 and this user's (a job folder another user made
        is refused: :meth:`check_owned`); the root too when it is made here, and
        ``~/.forgather`` when the root is the default one (an existing ``--jobs-dir``
        may be shared: its mode is its owner's choice).

        A process that creates a job's folder starts a run of it (the launcher on each
        node, rank 0): with ``mark`` it first leaves a run marker naming itself, so a
        job that was settled is listed again from this moment (:mod:`.markers`)."""
        if self.root == default_jobs_dir():
            ensure_private_dir(self.root.parent)
            ensure_private_dir(self.root)
        else:
            ensure_dir(self.root)  # a --jobs-dir may be shared (1777, 2775): its mode is its owner's choice
        self.check_owned()
        if mark:
            from forgather_control.core.markers import mark_run  # here: a rank other than 0 never creates the folder (issue 24)

            mark_run(self.root, self.job_id)
        ensure_private_dir(self.dir)
        ensure_private_dir(self.inbox)
        return self
