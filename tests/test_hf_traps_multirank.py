"""Issue 3, acceptance 5 under real torchrun (two ranks): save_strategy="best" with an
evaluation at every step, logging at every step and gradient accumulation, and a
learning rate of 0 so no evaluation after the first is a new best: a commanded save
still saves (both ranks at the same step) and nothing else does; the job then runs to
max_steps and finishes normally. (test_hf_traps.py counts on_save calls exactly.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_multirank_support import TIMEOUT, command, end_step, ended_lines, final_status, torchrun, wait_client, wait_step

pytestmark = pytest.mark.timeout(600)  # a real torchrun job on 2 cores shared with other test runs


def test_hf_best_strategy_two_ranks_commanded_save_once(jobs_dir: Path, procs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = torchrun(
        procs, "hf_trainer.py", "--output-dir", str(out), "--job-id", "hf-best", "--step-time", "0.02", "--max-steps", "120",
        "--save-strategy", "best", "--eval-steps", "1", "--logging-steps", "1", "--grad-accum", "2", "--learning-rate", "0",
        jobs_dir=jobs_dir,
    )
    client = wait_client(jobs_dir, "hf-best", job)
    wait_step(client, 3)
    saved = command(client, "save")
    assert saved["state"] == "completed", saved
    step = saved["step"]
    assert Path(saved["result"]["checkpoint"]) == out / f"checkpoint-{step}"
    assert job.wait(TIMEOUT) == 0, job.output()[-3000:]
    lines = ended_lines(job)
    assert set(lines) == {0, 1} and end_step(lines[0]) == end_step(lines[1]) == 120
    # HF's own "best" save at step 1 (the only new best), ours at the commanded step.
    assert sorted(p.name for p in out.iterdir()) == sorted({"checkpoint-1", f"checkpoint-{step}"})
    assert (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    final = final_status(jobs_dir, "hf-best")
    assert final["state"] == "finished" and final["step"] == 120
