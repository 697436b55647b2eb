"""A job's JSON records (``jobs_dir/<job id>/*.json``) as the tests read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_record(jobs_dir: Path, job_id: str, name: str) -> dict[str, Any]:
    """One of a job's JSON records, or {} while it is missing or being replaced."""
    try:
        return json.loads((jobs_dir / job_id / name).read_text())
    except (OSError, ValueError):
        return {}


def final_status(jobs_dir: Path, job_id: str) -> dict[str, Any]:
    """The status.json a job left at its end (it must be there)."""
    return json.loads((jobs_dir / job_id / "status.json").read_text())


def identity(pid: int | None = None) -> dict[str, Any]:
    """The identity fields (host, boot id, pid, start time) a record written by process
    ``pid`` (this one) carries, as JSON: for records a test writes by hand."""
    from forgather_control.core.liveness import process_identity
    from forgather_control.core.records import encode

    return encode(process_identity(pid))


def typed(cls: type, data: dict[str, Any]) -> Any:
    """``data`` (a record as JSON) as the library reads it: checked into its typed record."""
    from forgather_control.core.records import decode

    return decode(data, cls, name=f"a test's {cls.__name__}")
