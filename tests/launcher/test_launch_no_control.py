"""A launched script that never starts a controller is named, and a signal ends it at once.

Real parts: ``forgather launch`` with torchrun (two workers), the CLI as a subprocess. The
threshold (``--no-control-after``) is short so the test need not wait; ``--grace`` is
long (600 s), so a job that ends within the test's own timeout shows the signal went to
the workers at once rather than into a save nobody could make. The other side: a script
whose Controller starts late takes back the warning, and then a signal saves and stops.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from support.launcher import START_TIMEOUT, launch, wait_running
from support.processes import Procs, assert_all_gone
from support.records import read_record
from support.scripts import LATE_CONTROLLER
from support.waiting import wait_for

from forgather_control.core import JobPaths
from forgather_control.core.attachment import ADD_CONTROL
from forgather_control.core.outcome import EXIT_PREEMPTED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # forgather launch, torchrun
TIMEOUT = 240.0
WARNING = "WARNING: no control attached yet after 2s"

#: A plain loop without any control: it prints and sleeps in small steps.
NO_CONTROLLER = """
import os, time
print("rank", os.environ["RANK"], "training without a controller", flush=True)
for step in range(1_000_000):
    time.sleep(0.05)
"""


def listed(cli, job_id: str) -> dict | None:
    res = cli("control", "list", "--json")
    rows = [r for r in json.loads(res.out or "[]") if r["job_id"] == job_id] if res.code == 0 else []
    return rows[0] if rows else None


def inbox_commands(jobs_dir: Path, job_id: str) -> list[str]:
    inbox = JobPaths(jobs_dir, job_id).inbox
    return [json.loads(f.read_text()).get("command") for f in sorted(inbox.glob("*.json"))]


def test_a_job_without_a_controller_is_named_and_a_signal_ends_it_at_once(procs: Procs, jobs_dir: Path, tmp_path: Path, cli) -> None:
    script = tmp_path / "no_controller.py"
    script.write_text(NO_CONTROLLER)
    job = launch(procs, jobs_dir, "bare", script, opts=("--nproc-per-node", "2", "--no-control-after", "2", "--grace", "600"))
    wait_for(lambda: WARNING in job.output(), timeout=START_TIMEOUT, interval=0.2, what="the launcher's warning")
    assert f"To attach control: {ADD_CONTROL}" in job.output()
    row = wait_for(lambda: (r := listed(cli, "bare")) and r["state"] == "uncontrolled" and r, timeout=TIMEOUT, interval=0.2, what="bare listed uncontrolled")
    assert row["no_control"]["after"] == 2.0 and row["no_control"]["add"] == ADD_CONTROL and "no control attached yet after 2s" in row["no_control"]["why"]
    assert read_record(jobs_dir, "bare", "job.json")["no_control_after"] == 2.0

    table = cli("control", "list")
    assert table.code == 0 and "uncontrolled" in table.out and "bare: no control attached yet after 2s" in table.out and "to attach control:" in table.out
    status = cli("control", "status", "bare", "--json")
    assert status.code == 0 and status.json()["state"] == "uncontrolled" and status.json()["no_control"]["add"] == ADD_CONTROL
    shown = cli("control", "status", "bare")
    assert shown.code == 0 and "uncontrolled" in shown.out and "no control attached yet after 2s" in shown.out and "to attach control" in shown.out

    # a command: queued in case a Controller starts, but it says that none is attached
    queued = cli("control", "save", "bare")
    assert queued.code == 0 and "no control is attached to the job yet" in queued.out, queued.out + queued.err
    assert "has no control attached yet after 2s" in queued.err
    waited = cli("control", "save", "bare", "--wait", "--timeout", "3")
    assert waited.code == 1 and "was not picked up after 3s" in waited.err and "not yet picked up" not in waited.err, waited.err

    seen = job.tree.track()  # the launcher, torchrun, the workers
    assert len(seen) >= 4, seen
    os.kill(job.pid, signal.SIGTERM)
    assert job.wait(TIMEOUT) == 128 + signal.SIGTERM, job.output()[-4000:]  # 143: ended by SIGTERM, nothing saved
    assert_all_gone(seen)
    out = job.output()
    assert out.count(WARNING) == 1, out[-4000:]
    last = out.strip().splitlines()[-1]
    assert "job bare failed (exit code 143)" in last and "no save was possible" in last and "no control attached" in last, last
    assert "save_and_stop" not in inbox_commands(jobs_dir, "bare") and inbox_commands(jobs_dir, "bare") == ["save_checkpoint", "save_checkpoint"]

    record = read_record(jobs_dir, "bare", "job.json")
    assert (record["state"], record["exit_code"], record["signals"]) == ("failed", 143, ["SIGTERM"]), record
    assert "no save was possible" in record["reason"] and not record.get("last_checkpoint")
    ended = cli("control", "status", "bare", "--json").json()
    assert ended["state"] == "failed" and ended["exit_code"] == 143 and "no save was possible" in ended["error"]


def test_a_late_controller_clears_the_warning_and_a_signal_then_saves(procs: Procs, jobs_dir: Path, tmp_path: Path, cli) -> None:
    script = tmp_path / "late_controller.py"
    script.write_text(LATE_CONTROLLER)
    go, out = tmp_path / "go", tmp_path / "out"
    # one worker: with two, commands would apply only once the script initialised torch.distributed
    job = launch(procs, jobs_dir, "late", script, str(go), str(out), opts=("--no-control-after", "2", "--grace", "600"))
    wait_for(lambda: WARNING in job.output(), timeout=START_TIMEOUT, interval=0.2, what="the launcher's warning")
    wait_for(lambda: (r := listed(cli, "late")) and r["state"] == "uncontrolled", timeout=TIMEOUT, interval=0.2, what="late listed uncontrolled")

    go.write_text("go")
    wait_running(jobs_dir, "late", job)
    wait_for(lambda: "control attached after all" in job.output(), timeout=TIMEOUT, interval=0.2, what="the warning taken back")
    assert read_record(jobs_dir, "late", "job.json").get("no_control_since") is None  # cleared: no longer written
    row = listed(cli, "late")
    assert row is not None and row["state"] == "running" and row["no_control"] is None

    os.kill(job.pid, signal.SIGTERM)
    assert job.wait(TIMEOUT) == EXIT_PREEMPTED, job.output()[-4000:]  # saved on a signal: relaunch to resume
    assert job.output().count(WARNING) == 1
    record = read_record(jobs_dir, "late", "job.json")
    assert record["state"] == "stopped" and Path(record["last_checkpoint"]).read_text() == "saved", record
    status = read_record(jobs_dir, "late", "status.json")
    assert any(c.get("command") == "save_and_stop" and c.get("state") == "completed" for c in status["commands"]), status["commands"]
