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

from forgather_control.core import read_json
from forgather_control.core.records import CommandOptions

#: One worker runs these: torch and transformers load in one worker only.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("trainers-in-process")]  # the real HF Trainer: slow (support.tiers)


def run(tmp_path: Path, jobs_dir: Path, job_id: str, at: dict[Any, str], **targs: Any) -> tuple[Any, Any, Any]:
    """``support.hf_trainer.run``, imported when a test first runs (not when pytest collects)."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from support.hf_trainer import run as run_trainer

    return run_trainer(tmp_path, jobs_dir, job_id, at, **targs)


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
    _, driver, _ = run(tmp_path, jobs_dir, "noeval", {3: "save", 6: ("save", CommandOptions(evaluate=False))}, eval_strategy="steps", eval_steps=100)
    assert driver.saves == [3, 6]
    assert driver.evals == [3, 12]  # the plain save evaluated first, the --no-eval one did not (12: HF at the last step)
    entries = ledger(jobs_dir, "noeval")
    plain, quick = entries[driver.sent[3]], entries[driver.sent[6]]
    assert plain["state"] == quick["state"] == "completed"
    assert "eval_loss" in plain["result"]["metrics"] and "metrics" not in quick["result"]
    assert quick["options"] == {"evaluate": False}


def test_an_eval_that_makes_best_save_names_that_checkpoint_in_its_receipt(tmp_path: Path, jobs_dir: Path) -> None:
    """save_strategy="best": the first commanded eval is a new best and HF saves after it;
    its receipt says so. The second (lr 0: no better) saves nothing and says nothing."""
    _, driver, _ = run(
        tmp_path,
        jobs_dir,
        "best-eval",
        {2: "eval", 4: "eval"},
        save_strategy="best",
        eval_strategy="steps",
        eval_steps=100,
        metric_for_best_model="eval_loss",
        learning_rate=0.0,
        max_steps=6,
    )
    assert driver.saves == [2] and driver.evals == [2, 4, 6]  # 6: HF at the last step
    entries = ledger(jobs_dir, "best-eval")
    first, second = entries[driver.sent[2]], entries[driver.sent[4]]
    assert first["state"] == "completed" and first["result"]["checkpoint"] == str(tmp_path / "best-eval" / "checkpoint-2"), first
    assert first["reason"] == "save_strategy 'best': HF saved this checkpoint after the evaluation (a new best)"
    assert "eval_loss" in first["result"]["metrics"]
    assert second["state"] == "completed" and "checkpoint" not in second["result"] and "reason" not in second, second
