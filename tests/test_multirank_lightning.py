"""Issue 3, acceptance 2 (Lightning): the Lightning example on two ranks under real
torchrun (DDP on gloo, CPU): save, eval, save-stop; then resume from the commanded
checkpoint (``ckpt_path``) and abort."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.records import final_status
from support.torchrun import TIMEOUT, command, end_step, ended_lines, torchrun, wait_client, wait_step
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(600)  # real torchrun jobs on 2 cores shared with other test runs

SCRIPT = "lightning_trainer.py"


def test_lightning_two_ranks_save_eval_save_stop_then_resume_and_abort(jobs_dir: Path, procs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = torchrun(procs, SCRIPT, "--output-dir", str(out), "--job-id", "pl-a", "--step-time", "0.02", jobs_dir=jobs_dir)
    client = wait_client(jobs_dir, "pl-a", job)
    wait_step(client, 3)

    saved = command(client, "save")
    assert saved["state"] == "completed", saved
    ckpt = Path(saved["result"]["checkpoint"])
    assert ckpt.name == f"forgather-step={saved['step']}.ckpt" and ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == saved["step"] and state["state_dict"] and state["optimizer_states"]

    ev = command(client, "eval")
    assert ev["state"] == "completed" and isinstance(ev["result"]["metrics"].get("val_loss"), float), ev

    st = client.status()
    assert st["world_size"] == 2 and st["max_steps"] == 1_000_000 and "loss" in st["metrics"]
    assert st["last_checkpoint"] == str(ckpt)

    stop = command(client, "save-stop")
    assert stop["state"] == "completed", stop
    assert job.wait(TIMEOUT) == 0, job.output()[-3000:]
    lines = ended_lines(job)
    assert set(lines) == {0, 1}, job.output()[-3000:]
    assert end_step(lines[0]) == end_step(lines[1]) == stop["step"]
    assert Path(stop["result"]["checkpoint"]).is_file()
    assert final_status(jobs_dir, "pl-a")["state"] == "stopped"

    out2 = tmp_path / "out2"
    job2 = torchrun(
        procs,
        SCRIPT,
        "--output-dir",
        str(out2),
        "--job-id",
        "pl-b",
        "--step-time",
        "0.02",
        "--resume",
        str(ckpt),
        jobs_dir=jobs_dir,
        name="pl-resume",
    )
    client2 = wait_client(jobs_dir, "pl-b", job2)
    wait_step(client2, saved["step"] + 2)
    # A validation makes ModelCheckpoint save (it saves after validation in this setup).
    ev2 = command(client2, "eval")
    assert ev2["state"] == "completed", ev2
    kept = wait_for(lambda: sorted(p.name for p in (out2 / "checkpoints").glob("epoch=*.ckpt")), what="ModelCheckpoint's file")
    ab = command(client2, "abort")
    assert ab["state"] == "completed" and ab["step"] > saved["step"], ab
    assert job2.wait(TIMEOUT) == 0, job2.output()[-3000:]
    lines = ended_lines(job2)
    assert set(lines) == {0, 1} and all("aborted=True" in line for line in lines.values()), job2.output()[-3000:]
    assert end_step(lines[0]) == end_step(lines[1]) == ab["step"]
    assert final_status(jobs_dir, "pl-b")["state"] == "aborted"
    # Nothing saved at or after the abort; ModelCheckpoint kept its last epoch-end file.
    # Nothing saved at or after the abort, and ModelCheckpoint's earlier file was not
    # replaced (it would save after the stop's validation and delete the older one).
    files = sorted(p.name for p in (out2 / "checkpoints").iterdir())
    assert files == kept, (files, kept, ab)
