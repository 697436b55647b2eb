"""The plain-loop example as a real job, and what a test asks of it through the real
CLI (``cli`` fixture): start it, wait until it is listed running, send a command and wait
for its receipt, check a checkpoint, check how it ended. Shared by the CLI's end-to-end
tests (tests/cli/test_cli_e2e.py, test_token_secret.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from forgather_control.core import JobPaths, read_json
from support.env import base_env
from support.paths import EXAMPLES
from support.waiting import wait_for

WAIT = "120"  # --timeout for --wait: the machine is shared and busy


def start_loop(procs, jobs_dir: Path, out: Path, job_id: str, *extra: str):
    argv = [sys.executable, str(EXAMPLES / "plain_loop.py"), "--job-id", job_id, "--output-dir", str(out), "--step-time", "0.01", *extra]
    return procs.start(argv, env=base_env(jobs_dir), name=job_id)


def listed(cli, job_id: str, *args: str) -> dict[str, Any] | None:
    r = cli("control", "list", "--json", *args)
    assert r.code == 0, r
    return next((j for j in r.json() if j["job_id"] == job_id), None)


def record_step(jobs_dir: Path, job_id: str) -> int:
    """The step in the job's status.json (0 before its first write)."""
    return int((read_json(JobPaths(jobs_dir, job_id).status, quiet=True) or {}).get("step") or 0)


def wait_running(cli, jobs_dir: Path, proc, job_id: str) -> dict[str, Any]:
    """The job's own records first (read in this process: a ``list`` per poll would
    compete with the job's start for the CPU), then what ``list`` says."""

    def stepped() -> bool:
        assert proc.popen.poll() is None, f"the example exited early:\n{proc.output()[-3000:]}"
        return record_step(jobs_dir, job_id) > 0

    wait_for(stepped, timeout=120, what=f"{job_id} to write a step")

    def ready() -> dict[str, Any] | None:
        assert proc.popen.poll() is None, f"the example exited early:\n{proc.output()[-3000:]}"
        j = listed(cli, job_id)
        return j if j and j["state"] == "running" and (j["step"] or 0) > 0 else None

    return wait_for(ready, timeout=120, interval=0.2, what=f"{job_id} to be listed running")


def status_step(cli, job_id: str) -> int:
    r = cli("control", "status", job_id, "--json")
    assert r.code == 0, r
    return int(r.json()["step"] or 0)


def command(cli, verb: str, job: str, *extra: str) -> dict[str, Any]:
    r = cli("control", verb, job, "--wait", "--json", "--timeout", WAIT, *extra)
    assert r.code == 0, r
    return r.json()


def check_checkpoint(entry: dict[str, Any]) -> Path:
    assert entry["command"] == "save_checkpoint" and entry["state"] == "completed", entry
    path = Path(entry["result"]["checkpoint"])
    assert path.is_file(), entry
    import torch  # here: every xdist worker collects this module, and torch takes seconds to import

    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {"model", "optimizer"} <= set(state)
    assert state["model"] and state["optimizer"]["state"] is not None
    assert isinstance(entry["step"], int) and entry["step"] > 0
    return path


def check_ended(cli, jobs_dir: Path, proc, job_id: str, state: str) -> None:
    assert proc.wait(120) == 0, proc.output()[-3000:]
    assert not JobPaths(jobs_dir, job_id).endpoint.exists()
    assert listed(cli, job_id) is None  # hidden without --all
    j = listed(cli, job_id, "--all")
    assert j is not None and j["state"] == state, j
