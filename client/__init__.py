"""Finding, listing and commanding jobs: the jobs directory, ``--remote`` servers and a
Ray cluster, one :class:`JobHandle` per job. Above :mod:`forgather_control.core` (whose
names it passes on, so a script needs one import), below the CLI and the web page.

Imports no torch, fastapi or ray: the CLI's control commands stand on this alone.
A script does what the CLI does through the same calls::

    from forgather_control.client import open_job

    with open_job("my-job") as job:              # an id or a unique prefix
        receipt = job.send("save")
        print(job.wait(receipt.id).result)
"""

from typing import Any

from forgather_control.client.handle import JobHandle, Snapshot
from forgather_control.client.jobinfo import JobInfo
from forgather_control.client.listing import find_job, job_ids, judge_job, load, scan
from forgather_control.client.lookup import Listing, list_jobs, open_job
from forgather_control.client.sources import FoundJob, JobSource, LocalSource, RaySource, RemoteSource, source_for
from forgather_control.client.transport import FileTransport, HttpChannel, HttpTransport, probe_endpoint
from forgather_control.core.commands import (
    CLI_VERBS,
    VALID_COMMANDS,
    Command,
    KeyConflict,
    LedgerError,
    QueueFull,
    State,
    StopPending,
    UnknownCommand,
    UnknownEntry,
    is_final_receipt,
    new_key,
    parse_command,
)
from forgather_control.core.env import ENV_CONTROL_HOST, ENV_CONTROL_PORT, ENV_JOB_ID, ENV_JOBS_DIR, ENV_RESTARTS, ENV_TOKEN
from forgather_control.core.errors import (
    AmbiguousJob,
    CommandFailed,
    CommandRefused,
    ControlError,
    InvalidJobId,
    JobEnded,
    JobNotFound,
    OutcomeUnknown,
    Unreachable,
    UsageError,
    WaitTimeout,
)
from forgather_control.core.files import ensure_private_dir, read_json, write_json_atomic
from forgather_control.core.host import HostIdentity, is_loopback_host, local_host
from forgather_control.core.jobs import (
    PROTOCOL,
    JobPaths,
    default_job_id,
    is_valid_job_id,
    match_job_id,
    resolve_jobs_dir,
    validate_job_id,
)
from forgather_control.core.ledger import Entry, Ledger
from forgather_control.core.liveness import (
    STALE_AFTER,
    Liveness,
    is_loopback_url,
    judge,
    pid_alive,
    process_identity,
    same_host,
)
from forgather_control.core.records import CommandOptions, CommandResult, MetricHistory, Receipt, Status
from forgather_control.core.states import JobState, is_final

__all__ = [
    "CLI_VERBS",
    "ENV_CONTROL_HOST",
    "ENV_CONTROL_PORT",
    "ENV_JOBS_DIR",
    "ENV_JOB_ID",
    "ENV_RESTARTS",
    "ENV_TOKEN",
    "PROTOCOL",
    "STALE_AFTER",
    "VALID_COMMANDS",
    "AmbiguousJob",
    "Command",
    "CommandFailed",
    "CommandOptions",
    "CommandRefused",
    "CommandResult",
    "ControlError",
    "Entry",
    "FileTransport",
    "FoundJob",
    "HostIdentity",
    "HttpChannel",
    "HttpTransport",
    "InvalidJobId",
    "JobEnded",
    "JobHandle",
    "JobInfo",
    "JobNotFound",
    "JobPaths",
    "JobSource",
    "JobState",
    "KeyConflict",
    "Ledger",
    "LedgerError",
    "Listing",
    "Liveness",
    "LocalSource",
    "MetricHistory",
    "OutcomeUnknown",
    "QueueFull",
    "RaySource",
    "Receipt",
    "RemoteSource",
    "Snapshot",
    "State",
    "Status",
    "StopPending",
    "UnknownCommand",
    "UnknownEntry",
    "Unreachable",
    "UsageError",
    "WaitTimeout",
    "default_job_id",
    "ensure_private_dir",
    "find_job",
    "is_final",
    "is_final_receipt",
    "is_loopback_host",
    "is_loopback_url",
    "is_valid_job_id",
    "job_ids",
    "judge",
    "judge_job",
    "list_jobs",
    "load",
    "local_host",
    "match_job_id",
    "new_key",
    "open_job",
    "parse_command",
    "pid_alive",
    "probe_endpoint",
    "process_identity",
    "read_json",
    "resolve_jobs_dir",
    "same_host",
    "scan",
    "source_for",
    "validate_job_id",
    "write_json_atomic",
]

# Cluster-wide listing through Ray (forgather_control.client.ray_listing), loaded on first use
# so that importing this package never costs, or needs, Ray. ``find_cluster_job`` is
# ray_listing.find_job (``find_job`` here is the local one).
_RAY_LISTING = {
    "ClusterListing": "ClusterListing",
    "RayNotInstalled": "RayNotInstalled",
    "RayUnavailable": "RayUnavailable",
    "find_cluster_job": "find_job",
    "list_cluster": "list_cluster",
}


def __getattr__(name: str) -> Any:
    if name in _RAY_LISTING:
        from forgather_control.client import ray_listing

        return getattr(ray_listing, _RAY_LISTING[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
