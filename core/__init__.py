"""The contract every process of forgather-control shares, and nothing else.

Job ids and the jobs directory's layout, environment names, job states and liveness,
the command vocabulary and ledger, the records every writer and reader agrees on,
run markers, stacks and failure records, checkpoints, metric history, proof, outcome.
A training rank imports this floor only (``import forgather_control.callback`` loads
no :mod:`forgather_control.client` module: ``tests/core/test_layers.py``); it imports
nothing of the project above it, and no torch, fastapi or ray.

Importing this package loads none of them: each name below loads its module when first
asked for (``from forgather_control.core import Ledger``): a process loads the parts of
the floor it uses, not all of them (a training rank other than 0 has no ledger; issue 24).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forgather_control.core.commands import (
        CLI_VERBS,
        VALID_COMMANDS,
        Command,
        IdConflict,
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
        PrivateJob,
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
    "CommandRefused",
    "ControlError",
    "Entry",
    "HostIdentity",
    "IdConflict",
    "InvalidJobId",
    "JobEnded",
    "JobNotFound",
    "JobPaths",
    "JobState",
    "KeyConflict",
    "Ledger",
    "LedgerError",
    "Liveness",
    "OutcomeUnknown",
    "PrivateJob",
    "QueueFull",
    "State",
    "StopPending",
    "UnknownCommand",
    "UnknownEntry",
    "Unreachable",
    "UsageError",
    "WaitTimeout",
    "default_job_id",
    "ensure_private_dir",
    "is_final",
    "is_final_receipt",
    "is_loopback_host",
    "is_loopback_url",
    "is_valid_job_id",
    "judge",
    "local_host",
    "match_job_id",
    "new_key",
    "parse_command",
    "pid_alive",
    "process_identity",
    "read_json",
    "resolve_jobs_dir",
    "same_host",
    "validate_job_id",
    "write_json_atomic",
]

#: name -> the module of this floor that defines it, imported on first use (module __getattr__)
_WHERE = {
    "CLI_VERBS": "commands",
    "VALID_COMMANDS": "commands",
    "Command": "commands",
    "Entry": "ledger",
    "IdConflict": "commands",
    "KeyConflict": "commands",
    "Ledger": "ledger",
    "LedgerError": "commands",
    "QueueFull": "commands",
    "State": "commands",
    "StopPending": "commands",
    "UnknownCommand": "commands",
    "UnknownEntry": "commands",
    "is_final_receipt": "commands",
    "new_key": "commands",
    "parse_command": "commands",
    "ENV_CONTROL_HOST": "env",
    "ENV_CONTROL_PORT": "env",
    "ENV_JOB_ID": "env",
    "ENV_JOBS_DIR": "env",
    "ENV_RESTARTS": "env",
    "ENV_TOKEN": "env",
    "AmbiguousJob": "errors",
    "CommandFailed": "errors",
    "CommandRefused": "errors",
    "ControlError": "errors",
    "InvalidJobId": "errors",
    "JobEnded": "errors",
    "JobNotFound": "errors",
    "OutcomeUnknown": "errors",
    "PrivateJob": "errors",
    "Unreachable": "errors",
    "UsageError": "errors",
    "WaitTimeout": "errors",
    "ensure_private_dir": "files",
    "read_json": "files",
    "write_json_atomic": "files",
    "PROTOCOL": "jobs",
    "JobPaths": "jobs",
    "default_job_id": "jobs",
    "is_valid_job_id": "jobs",
    "match_job_id": "jobs",
    "resolve_jobs_dir": "jobs",
    "validate_job_id": "jobs",
    "STALE_AFTER": "liveness",
    "HostIdentity": "host",
    "Liveness": "liveness",
    "is_loopback_host": "host",
    "is_loopback_url": "liveness",
    "judge": "liveness",
    "local_host": "host",
    "pid_alive": "liveness",
    "process_identity": "liveness",
    "same_host": "liveness",
    "JobState": "states",
    "is_final": "states",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once: the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
