"""Live knobs from a test's side (issue 22): a set as the API takes it, and a set posted
straight to a job's server, past the client's own check, to meet rank 0's."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

from forgather_control.client import JobHandle
from forgather_control.core import Command, read_json
from forgather_control.core.records import CommandOptions, KnobChange, Receipt

from .torchrun import TIMEOUT


def send_set(client: JobHandle, **changes: object) -> Receipt:
    """Queue a set (each value as given: the job reads it as its knob's kind)."""
    return client.send(Command.SET, options=CommandOptions(changes=[KnobChange(name=k, value=v) for k, v in changes.items()]))  # type: ignore[arg-type]


def set_and_wait(client: JobHandle, **changes: object) -> Receipt:
    """A set, queued and waited for: its completed receipt."""
    entry = send_set(client, **changes)
    assert entry.state == "queued", entry
    done = client.wait(str(entry.id), timeout=TIMEOUT)
    assert done.state == "completed", done
    return done


def post_control(jobs_dir: Path, job_id: str, body: dict) -> tuple[int, dict]:
    """``POST /jobs/ID/control`` to the job's server with its token: (status, JSON body)."""
    ep = read_json(jobs_dir / job_id / "endpoint.json")
    url = urlsplit(ep["url"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {ep['token']}", "Content-Type": "application/json", "Accept": "application/json"}
        conn.request("POST", f"/jobs/{job_id}/control", body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def post_set(jobs_dir: Path, job_id: str, **changes: object) -> tuple[int, dict]:
    """A set posted straight to rank 0 (no client-side check)."""
    return post_control(jobs_dir, job_id, {"command": "set", "options": {"changes": [{"name": k, "value": v} for k, v in changes.items()]}})


def read_steps(trace_dir: Path, rank: int) -> list[dict]:
    """The lines a rank wrote to ``trace_dir/rank-R.jsonl``, one a step (``--trace-steps``)."""
    return [json.loads(line) for line in (trace_dir / f"rank-{rank}.jsonl").read_text().splitlines()]
