"""A real HF Trainer in the test's process (one rank), driven by commands sent over the
real HTTP server at chosen steps: what tests/callback/test_hf_traps.py runs. Its own
module so that torch and transformers load when a test runs, not when pytest collects
(every xdist worker collects every module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from forgather_control.callback.hf import TrainerControlCallback
from forgather_control.client import JobHandle, find_job, probe_endpoint


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 0) -> None:
        self.data = torch.randint(0, 64, (n, 16), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[i], "labels": self.data[i]}


class Driver(TrainerCallback):
    """Placed before the control callback: sends commands over HTTP at chosen steps (or
    at train end) and counts what the Trainer does."""

    def __init__(self, jobs_dir: Path, job_id: str, at: dict[Any, str]) -> None:
        self.jobs_dir, self.job_id, self.at = jobs_dir, job_id, at
        self.sent: dict[Any, str] = {}
        self.saves: list[int] = []
        self.evals: list[int] = []
        self.logs = 0

    def _send(self, when: Any) -> None:
        if when in self.at:
            command, options = self.at[when] if isinstance(self.at[when], tuple) else (self.at[when], None)
            with JobHandle.from_info(find_job(self.jobs_dir, self.job_id, probe=probe_endpoint)) as c:
                self.sent[when] = c.send(command, options=options).id

    def on_step_end(self, args, state, control, **kw):
        self._send(state.global_step)

    def on_train_end(self, args, state, control, **kw):
        self._send("end")

    def on_save(self, args, state, control, **kw):
        self.saves.append(state.global_step)

    def on_evaluate(self, args, state, control, **kw):
        self.evals.append(state.global_step)

    def on_log(self, args, state, control, **kw):
        self.logs += 1


def run(tmp_path: Path, jobs_dir: Path, job_id: str, at: dict[Any, str], **targs: Any) -> tuple[Trainer, Driver, TrainerControlCallback]:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0))
    base = dict(
        output_dir=str(tmp_path / job_id),
        per_device_train_batch_size=2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
        save_strategy="no",
        max_steps=12,
    )
    base.update(targs)
    driver = Driver(jobs_dir, job_id, at)
    ctl = TrainerControlCallback(job_id=job_id, jobs_dir=jobs_dir, signals=(), poll_interval=0.05)
    trainer = Trainer(model=model, args=TrainingArguments(**base), train_dataset=Tokens(64), eval_dataset=Tokens(8, 1), callbacks=[driver, ctl])
    trainer.train()
    return trainer, driver, ctl
