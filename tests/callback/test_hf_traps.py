"""Issue 3, acceptance 5: the HF traps, with a real Trainer in this process (one rank,
so no collective) and commands sent over the real HTTP server at chosen steps.

- save_strategy="best" with an evaluation in the same step still saves on command;
- one save per command although on_log fires for the training log, for the evaluation
  and at train end (gradient accumulation on, so micro-steps are not step ends);
- a command that arrives after the last step is dropped, with the reason;
- abort holds should_save false through the epoch-end flow and records aborted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from forgather_control.callback.hf import TrainerControlCallback
from forgather_control.client import JobHandle, find_job, probe_endpoint
from forgather_control.core import read_json


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
                self.sent[when] = c.send(command, options=options)["id"]

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


def ledger(jobs_dir: Path, job_id: str) -> dict[str, dict]:
    return {e["id"]: e for e in read_json(jobs_dir / job_id / "status.json")["commands"]}


def test_best_strategy_eval_same_step_still_saves_once_and_late_command_is_dropped(tmp_path: Path, jobs_dir: Path) -> None:
    # lr 0: the eval loss never improves after the first evaluation, so "best" alone
    # would assign should_save = False at every later step.
    _, driver, _ = run(
        tmp_path,
        jobs_dir,
        "best",
        {5: "save", "end": "eval"},
        save_strategy="best",
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        learning_rate=0.0,
        gradient_accumulation_steps=2,
    )
    assert driver.saves == [1, 5]  # HF's own best save at step 1, ours at 5: once, not per on_log
    assert driver.evals == list(range(1, 13))  # one evaluation per optimizer step, none extra
    assert driver.logs >= 2 * 12  # training and evaluation logs (and train end) did not save
    assert (tmp_path / "best" / "checkpoint-5" / "trainer_state.json").is_file()
    entries = ledger(jobs_dir, "best")
    save = entries[driver.sent[5]]
    assert save["state"] == "completed" and save["step"] == 5 and save["result"]["checkpoint"].endswith("checkpoint-5")
    late = entries[driver.sent["end"]]
    assert late["state"] == "dropped" and "before the command could apply" in late["reason"] and "step 12" in late["reason"]
    assert read_json(jobs_dir / "best" / "status.json")["state"] == "finished"


def test_abort_saves_nothing_through_epoch_end_and_records_aborted(tmp_path: Path, jobs_dir: Path) -> None:
    trainer, driver, ctl = run(tmp_path, jobs_dir, "abort", {3: "abort"}, save_strategy="epoch", max_steps=100)
    assert trainer.state.global_step == 3 and driver.saves == [] and ctl.aborted
    assert not (tmp_path / "abort").exists() or not any((tmp_path / "abort").glob("checkpoint-*"))
    st = read_json(jobs_dir / "abort" / "status.json")
    assert st["state"] == "aborted" and ledger(jobs_dir, "abort")[driver.sent[3]]["state"] == "completed"


def test_eval_without_evaluation_set_up_fails_the_command_and_training_goes_on(tmp_path: Path, jobs_dir: Path) -> None:
    trainer, driver, _ = run(tmp_path, jobs_dir, "noeval", {2: "eval", 4: "stop"})
    entries = ledger(jobs_dir, "noeval")
    assert entries[driver.sent[2]]["state"] == "failed" and "evaluation is not set up" in entries[driver.sent[2]]["reason"]
    assert trainer.state.global_step == 4 and entries[driver.sent[4]]["state"] == "completed"


def test_save_without_eval_skips_the_evaluation_a_save_runs_first(tmp_path: Path, jobs_dir: Path) -> None:
    """`save --no-eval`: a long eval set must not make every commanded save wait for it."""
    _, driver, _ = run(tmp_path, jobs_dir, "noeval", {3: "save", 6: ("save", {"evaluate": False})}, eval_strategy="steps", eval_steps=100)
    assert driver.saves == [3, 6]
    assert driver.evals == [3, 12]  # the plain save evaluated first, the --no-eval one did not (12: HF at the last step)
    entries = ledger(jobs_dir, "noeval")
    plain, quick = entries[driver.sent[3]], entries[driver.sent[6]]
    assert plain["state"] == quick["state"] == "completed"
    assert "eval_loss" in plain["result"]["metrics"] and "metrics" not in quick["result"]
    assert quick["options"] == {"evaluate": False}
