"""``forgather control pause`` on a real launch (issue 23): two gloo ranks of the plain
loop under ``forgather launch``, the command line as a subprocess. The pause saves on
both ranks, the job ends ``paused`` in every record, ``list`` shows it without
``--all``, ``cleanup`` keeps it, and job.json names the checkpoint a resume continues
from. (In one process: tests/callback/test_pause.py; under SLURM, not requeued:
tests/launcher/test_slurm.py.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support.launcher import launch, wait_running
from support.paths import EXAMPLES
from support.processes import Procs
from support.records import read_record as read

from forgather_control.core.errors import EXIT_ENDED
from forgather_control.core.outcome import EXIT_STOPPED

pytestmark = pytest.mark.slow  # forgather launch, torchrun

PLAIN_LOOP = EXAMPLES / "plain_loop.py"
TIMEOUT = 240.0


@pytest.mark.timeout(600)
def test_pause_saves_ends_the_job_paused_listed_and_kept(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = launch(procs, jobs_dir, "pz", PLAIN_LOOP, "--step-time", "0.05", "--output-dir", str(out), opts=("--nproc-per-node", "2"))
    wait_running(jobs_dir, "pz", job)

    res = cli("control", "pause", "pz", "--wait", "--json", "--timeout", str(TIMEOUT), timeout=TIMEOUT + 30)
    assert res.code == 0, res.out + res.err
    receipt = res.json()
    result = receipt["result"]
    assert receipt["command"] == "pause" and receipt["state"] == "completed", receipt
    # completed when the job had ended: with its checkpoint, and how the job ended
    assert result["final_state"] == "paused" and Path(result["checkpoint"]).exists(), receipt
    step = receipt["step"]
    assert result["final_step"] == step and result["saved_at_step"] == step

    assert job.wait(TIMEOUT) == EXIT_STOPPED, job.output()[-4000:]  # stopped by a command: not "finished"
    assert f"stopping at step {step} (pause)" in job.output()
    ends = re.findall(r"rank (\d) pid \d+ ended at step (\d+) aborted=False", job.output())
    assert sorted(ends) == [("0", str(step)), ("1", str(step))], job.output()[-4000:]  # both ranks, one step
    status = read(jobs_dir, "pz", "status.json")
    assert status["state"] == "paused" and status["resume_point"]["path"] == result["checkpoint"], status
    record = read(jobs_dir, "pz", "job.json")
    assert record["state"] == "paused" and record["exit_code"] == EXIT_STOPPED and record["ended_at"], record
    # what a resume needs: the checkpoint it continues from, at its step
    assert record["last_checkpoint"] == result["checkpoint"] and record["final_step"] == step
    assert (record["checkpoints"][-1]["path"], record["checkpoints"][-1]["step"]) == (result["checkpoint"], step)
    assert read(jobs_dir, "pz", "nodes/0.json")["state"] == "paused"

    # listed without --all, paused; its status says so; it takes no command
    rows = json.loads(cli("control", "list", "--json").out)
    assert [(r["job_id"], r["state"], r["last_checkpoint"]) for r in rows] == [("pz", "paused", result["checkpoint"])], rows
    shown = cli("control", "status", "pz")
    assert shown.code == 0 and "paused" in shown.out, shown.out
    assert cli("control", "save", "pz").code == EXIT_ENDED

    # cleanup keeps it (it waits to be resumed), even with --include-resumable
    kept = cli("control", "cleanup", "--yes", "--json", "--include-resumable")
    assert kept.code == 0 and kept.json()["deleted"] == [], kept.out
    assert [k["job_id"] for k in kept.json()["kept"]] == ["pz"] and (jobs_dir / "pz" / "job.json").exists()
