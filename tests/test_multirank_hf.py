"""Issue 3, acceptance 1: the HF example on two ranks under real torchrun (gloo, CPU).

One job takes save, eval and save-stop; a second job resumes from the commanded
checkpoint (``resume_from_checkpoint``) and is aborted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.records import final_status
from support.torchrun import TIMEOUT, command, end_step, ended_lines, read_traces, torchrun, wait_client, wait_step

pytestmark = pytest.mark.timeout(600)  # real torchrun jobs on 2 cores shared with other test runs

SCRIPT = "hf_trainer.py"


def test_hf_two_ranks_save_eval_save_stop_then_resume_and_abort(jobs_dir: Path, procs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    traces = tmp_path / "traces"
    job = torchrun(
        procs,
        SCRIPT,
        "--output-dir",
        str(out),
        "--job-id",
        "hf-a",
        "--step-time",
        "0.02",
        jobs_dir=jobs_dir,
        env={"FORGATHER_TRACE_AGREEMENT": str(traces)},
    )
    client = wait_client(jobs_dir, "hf-a", job)
    wait_step(client, 3)

    saved = command(client, "save")
    assert saved["state"] == "completed", saved
    ckpt = Path(saved["result"]["checkpoint"])
    assert ckpt.name == f"checkpoint-{saved['step']}" and ckpt.parent == out
    names = {p.name for p in ckpt.iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= names, names
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= names, names  # both ranks wrote their part
    assert "eval_loss" in saved["result"]["metrics"]  # evaluation is set up: evaluated first

    ev = command(client, "eval")
    assert ev["state"] == "completed", ev
    assert isinstance(ev["result"]["metrics"].get("eval_loss"), float), ev

    st = client.status()
    assert st["world_size"] == 2 and st["max_steps"] == 1_000_000 and st["state"] == "running"
    assert st["last_checkpoint"] == str(ckpt)
    assert {"loss", "learning_rate"} <= set(st["metrics"]) and st["epoch"] is not None

    stop = command(client, "save-stop")
    assert stop["state"] == "completed", stop
    assert job.wait(TIMEOUT) == 0, job.output()[-3000:]
    lines = ended_lines(job)
    assert set(lines) == {0, 1}, job.output()[-3000:]
    assert end_step(lines[0]) == end_step(lines[1]) == stop["step"]
    assert (out / f"checkpoint-{stop['step']}" / "trainer_state.json").is_file()
    final = final_status(jobs_dir, "hf-a")
    assert final["state"] == "stopped" and not (jobs_dir / "hf-a" / "endpoint.json").exists()
    tr = read_traces(traces)
    assert set(tr) == {0, 1} and tr[0] == tr[1] and len(tr[0]) >= 4

    # The commanded checkpoint loads with resume_from_checkpoint; then abort.
    before = {p.name for p in out.iterdir()}
    job2 = torchrun(
        procs,
        SCRIPT,
        "--output-dir",
        str(out),
        "--job-id",
        "hf-b",
        "--step-time",
        "0.02",
        "--resume",
        str(ckpt),
        "--save-strategy",
        "epoch",
        jobs_dir=jobs_dir,
        name="hf-resume",
    )
    client2 = wait_client(jobs_dir, "hf-b", job2)
    wait_step(client2, saved["step"] + 2)
    ab = command(client2, "abort")
    assert ab["state"] == "completed", ab
    assert ab["step"] > saved["step"]  # resumed from the checkpoint's step, not from 0
    assert job2.wait(TIMEOUT) == 0, job2.output()[-3000:]
    lines = ended_lines(job2)
    assert set(lines) == {0, 1} and all("aborted=True" in line for line in lines.values()), job2.output()[-3000:]
    assert end_step(lines[0]) == end_step(lines[1]) == ab["step"]
    assert {p.name for p in out.iterdir()} == before  # nothing saved after the abort, not even at epoch end
    assert final_status(jobs_dir, "hf-b")["state"] == "aborted"
