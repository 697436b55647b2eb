"""Job ids: the one rule for what an id may be (it becomes a folder name), the default
id, and the one rule for finding a job by an id or a prefix of one."""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Mapping

from forgather_control.core.errors import AmbiguousJob, InvalidJobId, JobNotFound

JOB_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_JOB_ID_RE = re.compile(rf"\A{JOB_ID_PATTERN}\Z")


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` unchanged or raise: ids become folder names, so no ``..`` or ``/``."""
    if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
        raise InvalidJobId(f"invalid job id {job_id!r}: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return job_id


def is_valid_job_id(job_id: str) -> bool:
    return isinstance(job_id, str) and bool(_JOB_ID_RE.match(job_id))


def default_job_id(env: Mapping[str, str] | None = None) -> str:
    """``slurm-<id>`` under SLURM (so every node and a requeued run agree), else host-time-rand."""
    names: Mapping[str, str] = os.environ if env is None else env
    array_job, array_task = names.get("SLURM_ARRAY_JOB_ID"), names.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return validate_job_id(f"slurm-{array_job}_{array_task}")
    if names.get("SLURM_JOB_ID"):
        return validate_job_id(f"slurm-{names['SLURM_JOB_ID']}")
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]) or "host"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return validate_job_id(f"{host[:80]}-{stamp}-{secrets.token_hex(2)}")


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
