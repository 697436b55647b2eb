"""Issue 3, acceptance 5 under real torchrun (two ranks): save_strategy="best" with an
evaluation at every step, logging at every step and gradient accumulation, and a
learning rate of 0 so no evaluation after the first is a new best: a commanded save
still saves (both ranks at the same step) and nothing else does; the job then runs to
max_steps and finishes normally. (test_hf_traps.py counts on_save calls exactly.) A
command that reaches rank 0 after the last step is dropped with the reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.env import base_env
from support.records import final_status
from support.torchrun import TIMEOUT, command, end_step, ended_lines, torchrun, torchrun_argv, wait_client, wait_step

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a real torchrun job on 2 cores shared with other test runs


def test_hf_best_strategy_two_ranks_commanded_save_once(jobs_dir: Path, procs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = torchrun(
        procs,
        "hf_trainer.py",
        "--output-dir",
        str(out),
        "--job-id",
        "hf-best",
        "--step-time",
        "0.02",
        "--max-steps",
        "120",
        "--save-strategy",
        "best",
        "--eval-steps",
        "1",
        "--logging-steps",
        "1",
        "--grad-accum",
        "2",
        "--learning-rate",
        "0",
        jobs_dir=jobs_dir,
    )
    client = wait_client(jobs_dir, "hf-best", job)
    wait_step(client, 3)
    saved = command(client, "save")
    assert saved.state == "completed", saved
    step = saved.step
    assert Path(saved.result.checkpoint) == out / f"checkpoint-{step}"
    assert job.wait(TIMEOUT) == 0, job.output()[-3000:]
    lines = ended_lines(job)
    assert set(lines) == {0, 1} and end_step(lines[0]) == end_step(lines[1]) == 120
    # HF's own "best" save at step 1 (the only new best), ours at the commanded step.
    assert sorted(p.name for p in out.iterdir()) == sorted({"checkpoint-1", f"checkpoint-{step}"})
    assert (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    final = final_status(jobs_dir, "hf-best")
    assert final["state"] == "finished" and final["step"] == 120


_LATE = '''
import os, sys
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
from forgather_control.callback.hf import TrainerControlCallback
from forgather_control.client import JobHandle, find_job, probe_endpoint

jobs_dir, out = sys.argv[1], sys.argv[2]


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n):
        self.data = torch.randint(0, 64, (n, 16), generator=torch.Generator().manual_seed(0))
    def __len__(self):
        return len(self.data)
    def __getitem__(self, i):
        return {"input_ids": self.data[i], "labels": self.data[i]}


class Late(TrainerCallback):
    """Before the control callback: rank 0 sends a save once training has ended."""
    def on_train_end(self, args, state, control, **kw):
        if state.is_world_process_zero:
            with JobHandle.from_info(find_job(jobs_dir, "late", probe=probe_endpoint)) as c:
                print(f"sent <{c.send('save').id}>", flush=True)  # delimited: ranks share stdout


model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2))
targs = TrainingArguments(output_dir=out, max_steps=6, per_device_train_batch_size=2, save_strategy="no", report_to="none",
                          use_cpu=True, ddp_backend="gloo", disable_tqdm=True)
trainer = Trainer(model=model, args=targs, train_dataset=Tokens(64),
                  callbacks=[Late(), TrainerControlCallback(job_id="late", jobs_dir=jobs_dir)])
trainer.train()
print(f"rank {os.environ['RANK']} pid {os.getpid()} ended at step {trainer.state.global_step} aborted=False", flush=True)
'''


def test_command_after_the_last_step_is_dropped_on_two_ranks(jobs_dir: Path, procs, tmp_path: Path) -> None:
    """A save that reaches rank 0 at train end (server still up, no check left) gets a
    'dropped' receipt with the reason, on a real two-rank job; nothing is saved and both
    ranks end at max_steps."""
    script = tmp_path / "late.py"
    script.write_text(_LATE)
    out = tmp_path / "out"
    job = procs.start(torchrun_argv(script, str(jobs_dir), str(out)), env=base_env(jobs_dir), name="late")
    assert job.wait(TIMEOUT) == 0, job.output()[-4000:]
    sent = re.findall(r"sent <([^>]+)>", job.output())
    assert len(sent) == 1, job.output()[-4000:]
    lines = ended_lines(job)
    assert set(lines) == {0, 1} and end_step(lines[0]) == end_step(lines[1]) == 6
    final = final_status(jobs_dir, "late")
    entry = next(e for e in final["commands"] if e["id"] == sent[0])
    assert entry["state"] == "dropped" and "before the command could apply" in entry["reason"], entry
    assert final["state"] == "finished" and not any(out.glob("checkpoint-*"))
