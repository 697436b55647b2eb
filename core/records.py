"""Every record read from the jobs directory is untrusted input, checked once, here.

Other users, other programs, older and newer releases and crashed processes write the
jobs directory. A record is a JSON object read by :func:`read_json`; here each field a
reader uses is checked for its type, range and size, and a record that breaks the rules
raises :class:`RecordError` naming the field, so the job it belongs to shows as
``corrupt`` with the reason while every other job is listed as usual. Fields nobody
reads are dropped: what passes on (to a table, ``--json``, a judge) is only what was
checked.

A typed parse of our own, not pydantic: importing pydantic and building models costs
about 100 ms, which ``forgather control list`` (0.3 s budget, most of it Python's own
start-up) cannot pay; these checks cost a few microseconds a record.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from forgather_control.core.files import RecordError, read_record
from forgather_control.core.states import JobState

__all__ = ["ENDPOINT", "JOB", "NODE", "STACK_ANSWER", "STACK_RANK", "STATUS", "WORKER", "RecordError", "check_record", "load_or_empty", "load_record"]

Check = Callable[[Any], Any]

#: Strings longer than this are not ours (a path, a host name, a reason).
MAX_TEXT = 4096
_MAX_INT = 1 << 62


class _Bad(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def text(max_len: int = MAX_TEXT) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _Bad(f"must be a string, not {_kind(value)}")
        if len(value) > max_len:
            raise _Bad(f"is {len(value)} characters long (at most {max_len})")
        return value

    return check


def integer(lo: int = 0, hi: int = _MAX_INT) -> Check:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Bad(f"must be an integer, not {_kind(value)}")
        if not lo <= value <= hi:
            raise _Bad(f"is {value}, outside {lo}..{hi}")
        return value

    return check


def number(lo: float = -math.inf, hi: float = math.inf) -> Check:
    def check(value: Any) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _Bad(f"must be a number, not {_kind(value)}")
        if not math.isfinite(value) or not lo <= value <= hi:
            raise _Bad(f"is {value}, not a finite number in {lo}..{hi}")
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, not {_kind(value)}")
    return value


def state(value: Any) -> JobState:
    parsed = JobState.parse(value)
    if parsed is None:
        raise _Bad(f"is not a job state ({', '.join(s.value for s in JobState)})")
    return parsed


def list_of(item: Check, max_items: int = 256) -> Check:
    def check(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise _Bad(f"must be a list, not {_kind(value)}")
        if len(value) > max_items:
            raise _Bad(f"has {len(value)} items (at most {max_items})")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except _Bad as bad:
                raise _Bad(f"item {i} {bad.problem}") from None
        return out

    return check


def metric(value: Any) -> Any:
    """A metric value: a number (NaN and infinities allowed: a loss can diverge), a
    short string, a boolean or null."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and len(value) <= 256:
        return value
    raise _Bad(f"is not a metric value ({_kind(value)})")


def mapping(value_check: Check, max_items: int = 128, key_len: int = 256) -> Check:
    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Bad(f"must be an object, not {_kind(value)}")
        if len(value) > max_items:
            raise _Bad(f"has {len(value)} entries (at most {max_items})")
        out = {}
        for k, v in value.items():
            if len(k) > key_len:
                raise _Bad(f"has a key of {len(k)} characters (at most {key_len})")
            try:
                out[k] = value_check(v)
            except _Bad as bad:
                raise _Bad(f"entry {k!r} {bad.problem}") from None
        return out

    return check


def record(fields: dict[str, Check]) -> Check:
    """A nested object with known fields (unknown ones dropped)."""

    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Bad(f"must be an object, not {_kind(value)}")
        return _fields(value, fields)

    return check


def anything_json(value: Any) -> Any:
    """A value passed through as it is (already bounded by the record's size limit)."""
    return value


def _fields(raw: dict[str, Any], fields: dict[str, Check]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, check in fields.items():
        if name not in raw:
            continue
        if raw[name] is None:
            out[name] = None  # said, and said to be nothing: kept, so shapes stay as written
            continue
        try:
            out[name] = check(raw[name])
        except _Bad as bad:
            raise _Bad(f"field {name!r} {bad.problem}") from None
    return out


def load_record(path: str | os.PathLike[str], fields: dict[str, Check]) -> dict[str, Any] | None:
    """The checked record at ``path``; None when there is none; RecordError naming the
    file and the field when it is there but unusable."""
    raw = read_record(path)
    return None if raw is None else check_record(raw, fields, name=os.fspath(path))


def load_or_empty(path: str | os.PathLike[str], fields: dict[str, Check]) -> dict[str, Any]:
    """The checked record at ``path``, or ``{}`` when it is missing or unusable (for a
    reader that only peeks: the listing shows the job as corrupt with the reason)."""
    try:
        return load_record(path, fields) or {}
    except RecordError:
        return {}


def check_record(raw: dict[str, Any], fields: dict[str, Check], *, name: str) -> dict[str, Any]:
    """The checked fields of ``raw`` (unknown ones dropped, nulls kept). Raises
    RecordError: "<name>: field 'pid' must be an integer, not dict"."""
    try:
        return _fields(raw, fields)
    except _Bad as bad:
        raise RecordError(f"{name}: {bad.problem}") from None


# -- the records ----------------------------------------------------------------------
_IDENTITY: dict[str, Check] = {
    "host": text(255),
    "boot_id": text(128),
    "pid": integer(1, 1 << 31),
    "pid_start_time": number(0),
}
_WHEN = number(0)
_CHECKPOINT = record({"path": text(), "step": integer(), "run": integer(), "saved_at": _WHEN})
RECEIPT: dict[str, Check] = {
    "id": text(64),
    "command": text(64),
    "state": text(32),
    "key": text(128),
    "source": text(32),
    "seq": integer(),
    "created_at": _WHEN,
    "updated_at": _WHEN,
    "step": integer(),
    "result": mapping(anything_json, 64),
    "reason": text(),
    "options": mapping(anything_json, 16),
}
_RECEIPT = record(RECEIPT)

ENDPOINT: dict[str, Check] = {
    **_IDENTITY,
    "job_id": text(128),
    "url": text(2048),
    "port": integer(0, 65535),
    "bind_host": text(255),
    "token": text(512),
    "started_at": _WHEN,
    "protocol": integer(),
    "world_size": integer(),
}

STATUS: dict[str, Check] = {
    **_IDENTITY,
    "job_id": text(128),
    "state": state,
    "step": integer(),
    "max_steps": integer(),
    "epoch": number(0),
    "metrics": mapping(metric),
    "steps_per_second": number(0),
    "eta_seconds": number(0),
    "last_checkpoint": text(),
    "resume_point": _CHECKPOINT,
    "unsynced_checkpoint": _CHECKPOINT,
    "world_size": integer(),
    "stop_reason": text(),
    "stopped_by_signal": boolean,
    "phase": text(32),
    "progress_at": _WHEN,
    "stall": record({"for": number(0), "after": number(0), "step": integer(), "phase": text(32)}),
    "closed_by": text(32),
    "commands": list_of(_RECEIPT, 256),
    "pending_commands": integer(),
    "control_error": text(),
    "error": text(),
    "http": record({"url": text(2048)}),
    "started_at": _WHEN,
    "updated_at": _WHEN,
    "heartbeat_at": _WHEN,
    "ended_at": _WHEN,
    "check_interval": number(0),
    "protocol": integer(),
    "restarts": integer(),
    "resumed_from": text(),
}

JOB: dict[str, Check] = {
    "job_id": text(128),
    "argv": list_of(text(), 1024),
    "command": list_of(text(), 1024),
    "cwd": text(),
    "user": text(255),
    "host": text(255),
    "scheduler": record({"type": text(32), "slurm_job_id": text(64), "nodelist": text(), "restart_count": integer(), "nodes": list_of(text(255), 10_000)}),
    "environment": text(32),
    "nnodes": text(32),
    "nproc_per_node": text(32),
    "created_at": _WHEN,
    "started_at": _WHEN,
    "updated_at": _WHEN,
    "restarts": integer(),
    "resume_from": text(),
    "checkpoints": list_of(_CHECKPOINT, 256),
    "last_checkpoint": text(),
    "requeue": boolean,
    "grace": number(0),
    "control": boolean,
    "no_control_after": number(0),
    "no_control_since": _WHEN,
    "state": state,
    "exit_code": integer(-(1 << 31), 1 << 31),
    "ended_at": _WHEN,
    "final_step": integer(),
    "signals": list_of(text(32), 64),
    "leftover_pids": list_of(integer(), 1024),
    "requeued_at": _WHEN,
    "requeue_error": text(),
    "error": text(),
    "reason": text(),
    "torchrun_exit_code": integer(-(1 << 31), 1 << 31),
    "failure": mapping(anything_json, 16),
}

NODE: dict[str, Check] = {
    **_IDENTITY,
    "job_id": text(128),
    "node_rank": integer(),
    "nnodes": text(32),
    "started_at": _WHEN,
    "heartbeat_at": _WHEN,
    "state": state,
    "restarts": integer(),
    "slurm_job_id": text(64),
    "exit_code": integer(-(1 << 31), 1 << 31),
    "ended_at": _WHEN,
}

#: A worker that can dump its stacks (``stacks/rank-<R>.json``): who it is and where it
#: writes its dumps (a file name in the same folder).
WORKER: dict[str, Check] = {
    **_IDENTITY,
    "rank": integer(0, 1 << 20),
    "run": integer(),
    "dump": text(128),
    "main_thread": integer(),
    "registered_at": _WHEN,
    "launcher_pid": integer(1, 1 << 31),
    "launcher_start_time": number(0),
}

_FRAME = record({"file": text(1024), "line": integer(), "func": text(256)})
#: One rank's stacks, as a node answers them.
STACK_RANK: dict[str, Check] = {
    "rank": integer(0, 1 << 20),
    "host": text(255),
    "pid": integer(1, 1 << 31),
    "error": text(),
    "threads": list_of(record({"ident": integer(), "main": boolean, "frames": list_of(_FRAME, 512)}), 512),
}
#: One node's answer to a stacks request (``stacks/answers/<id>/node-<n>.json``).
STACK_ANSWER: dict[str, Check] = {
    "node": integer(0, 1 << 20),
    "host": text(255),
    "ranks": list_of(record(STACK_RANK), 4096),
}
