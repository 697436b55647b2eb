"""Issue 3, acceptance 2 (plain loop): the DDP plain loop on two ranks under real
torchrun: save, eval, save-stop; then resume from the commanded checkpoint and abort."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.records import final_status
from support.torchrun import TIMEOUT, command, end_step, ended_lines, torchrun, wait_client, wait_step

pytestmark = pytest.mark.timeout(600)  # real torchrun jobs on 2 cores shared with other test runs

SCRIPT = "plain_loop.py"


def test_plain_ddp_two_ranks_save_eval_save_stop_then_resume_and_abort(jobs_dir: Path, procs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = torchrun(procs, SCRIPT, "--output-dir", str(out), "--job-id", "pd-a", "--step-time", "0.01", jobs_dir=jobs_dir)
    client = wait_client(jobs_dir, "pd-a", job)
    wait_step(client, 3)

    saved = command(client, "save")
    assert saved["state"] == "completed", saved
    ckpt = Path(saved["result"]["checkpoint"])
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["step"] == saved["step"] and state["model"] and state["optimizer"]["param_groups"]

    ev = command(client, "eval")
    assert ev["state"] == "completed" and isinstance(ev["result"]["metrics"].get("eval_loss"), float), ev
    st = client.status()
    assert st["world_size"] == 2 and "loss" in st["metrics"] and st["last_checkpoint"] == str(ckpt)

    stop = command(client, "save-stop")
    assert stop["state"] == "completed", stop
    assert job.wait(TIMEOUT) == 0, job.output()[-3000:]
    lines = ended_lines(job)
    assert set(lines) == {0, 1} and end_step(lines[0]) == end_step(lines[1]) == stop["step"], job.output()[-3000:]
    assert final_status(jobs_dir, "pd-a")["state"] == "stopped"

    before = {p.name for p in out.iterdir()}
    job2 = torchrun(
        procs,
        SCRIPT,
        "--output-dir",
        str(out),
        "--job-id",
        "pd-b",
        "--step-time",
        "0.01",
        "--resume",
        str(ckpt),
        jobs_dir=jobs_dir,
        name="pd-resume",
    )
    client2 = wait_client(jobs_dir, "pd-b", job2)
    wait_step(client2, saved["step"] + 2)
    ab = command(client2, "abort")
    assert ab["state"] == "completed" and ab["step"] > saved["step"], ab
    assert job2.wait(TIMEOUT) == 0, job2.output()[-3000:]
    lines = ended_lines(job2)
    assert set(lines) == {0, 1} and all("aborted=True" in line for line in lines.values()), job2.output()[-3000:]
    assert end_step(lines[0]) == end_step(lines[1]) == ab["step"]
    assert {p.name for p in out.iterdir()} == before
    assert final_status(jobs_dir, "pd-b")["state"] == "aborted"
