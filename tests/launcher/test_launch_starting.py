"""A launched job before rank 0's control plane is up (torch imports, the model loads):
the CLI says ``starting``, a command waits in the inbox and applies once the Controller
starts, and ``--wait`` gives up at once, with the reason, when the job dies first.

Real parts: ``forgather launch`` with torchrun, the CLI as a subprocess. The script holds
back its Controller until the test creates a file, so "still starting" is a condition the
test sets, not a race it hopes to win.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.env import base_env
from support.launcher import launch
from support.paths import FORGATHER
from support.processes import Procs
from support.scripts import LATE_CONTROLLER
from support.waiting import wait_for

from forgather_control.core import JobPaths
from forgather_control.core.outcome import EXIT_STOPPED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # forgather launch, torchrun
TIMEOUT = 240.0


def start_job(procs: Procs, jobs_dir: Path, tmp_path: Path, job_id: str):
    script = tmp_path / "slow_start.py"
    script.write_text(LATE_CONTROLLER)
    go = tmp_path / "go"
    return launch(procs, jobs_dir, job_id, script, str(go), str(tmp_path / "out")), go


def listed_state(cli, job_id: str) -> str | None:
    res = cli("control", "list", "--json")
    rows = [r for r in json.loads(res.out or "[]") if r["job_id"] == job_id] if res.code == 0 else []
    return rows[0]["state"] if rows else None


def background_cli(procs: Procs, jobs_dir: Path, *args: str, name: str):
    return procs.start([*FORGATHER, *args], env=base_env(jobs_dir), name=name)


def test_command_to_a_starting_job_waits_in_the_inbox(procs: Procs, jobs_dir: Path, tmp_path: Path, cli) -> None:
    job, go = start_job(procs, jobs_dir, tmp_path, "slow")
    wait_for(lambda: listed_state(cli, "slow") == "starting", timeout=TIMEOUT, interval=0.2, what="the job listed as starting")
    st = cli("control", "status", "slow", "--json")
    assert st.code == 0 and st.json()["state"] == "starting", st.out + st.err

    # HTTP alone cannot reach it yet: a clear refusal, exit 4, nothing queued
    http = cli("control", "save", "slow", "--channel", "http")
    assert http.code == 4 and "is starting" in http.err, http.err
    inbox = JobPaths(jobs_dir, "slow").inbox
    assert list(inbox.iterdir()) == []

    waiting = background_cli(procs, jobs_dir, "control", "save-stop", "slow", "--wait", "--json", "--timeout", str(TIMEOUT), name="save-stop")
    wait_for(lambda: len(list(inbox.glob("*.json"))) == 1, timeout=TIMEOUT, what="the command file in the inbox")
    quick = cli("control", "eval", "slow")
    assert quick.code == 0 and "inbox" in quick.out and "starting" in quick.out, quick.out + quick.err

    go.write_text("go")
    assert waiting.wait(TIMEOUT) == 0, waiting.output()[-3000:]
    out = waiting.output()
    entry = json.loads(out[out.index("{") :])  # --json: the receipt, pretty-printed
    assert entry["state"] == "completed" and Path(entry["result"]["checkpoint"]).read_text() == "saved", entry
    assert job.wait(TIMEOUT) == EXIT_STOPPED, job.output()[-3000:]  # stopped by a command
    assert "save_and_stop" in job.output()
    record = json.loads((jobs_dir / "slow" / "job.json").read_text())
    assert record["state"] == "stopped" and record["last_checkpoint"] == entry["result"]["checkpoint"]


def test_wait_ends_when_the_job_dies_before_taking_the_command(procs: Procs, jobs_dir: Path, tmp_path: Path, cli) -> None:
    job, go = start_job(procs, jobs_dir, tmp_path, "doomed")
    wait_for(lambda: listed_state(cli, "doomed") == "starting", timeout=TIMEOUT, interval=0.2, what="the job listed as starting")
    inbox = JobPaths(jobs_dir, "doomed").inbox
    # a timeout far beyond the test's: only the job's end can make it return in time
    waiting = background_cli(procs, jobs_dir, "control", "save", "doomed", "--wait", "--timeout", "3600", name="save")
    wait_for(lambda: len(list(inbox.glob("*.json"))) == 1, timeout=TIMEOUT, what="the command file in the inbox")
    go.write_text("die")
    assert job.wait(TIMEOUT) != 0
    assert waiting.wait(TIMEOUT) == 1, waiting.output()[-3000:]
    out = waiting.output()
    assert "ended (failed" in out and "before it took command" in out and "Traceback" not in out, out
    assert listed_state(cli, "doomed") == "failed"  # a failure stays in the default listing for a day
    assert cli("control", "list", "--all", "--json").json()[0]["state"] == "failed"
