"""The Lightning callback in one process (no collective), with commands sent over the
real HTTP server at chosen optimizer steps: gradient accumulation (micro-batches are
not step ends), save once per command, eval metrics, abort that keeps ModelCheckpoint
from saving after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from forgather_control.core import read_json

#: One worker runs these: torch and Lightning load in one worker only.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("trainers-in-process")]  # the real Lightning Trainer: slow (support.tiers)


def fit(tmp_path: Path, jobs_dir: Path, job_id: str, at: dict[int, str], **kw: Any) -> tuple[Any, Any, Any]:
    """``support.lightning_trainer.fit``, imported when a test first runs (not when pytest collects)."""
    pytest.importorskip("lightning.pytorch")
    from support.lightning_trainer import fit as fit_trainer

    return fit_trainer(tmp_path, jobs_dir, job_id, at, **kw)


def entries(jobs_dir: Path, job_id: str) -> dict[str, dict]:
    return {e["id"]: e for e in read_json(jobs_dir / job_id / "status.json")["commands"]}


def test_accumulation_save_once_eval_and_stop(tmp_path: Path, jobs_dir: Path) -> None:
    trainer, driver, _ = fit(
        tmp_path,
        jobs_dir,
        "acc",
        {3: "save", 5: "eval", 7: "stop"},
        accumulate_grad_batches=2,
        enable_checkpointing=False,
        val_check_interval=1000,
        check_val_every_n_epoch=None,
    )
    assert trainer.global_step == 7 and driver.batches == 14  # two micro-batches per step
    assert driver.saves == [3]
    e = entries(jobs_dir, "acc")
    save, ev, stop = (e[driver.sent[s]] for s in (3, 5, 7))
    assert save["state"] == "completed" and save["step"] == 3 and save["result"]["checkpoint"].endswith("forgather-step=3.ckpt")
    import torch

    assert torch.load(save["result"]["checkpoint"], weights_only=False)["global_step"] == 3
    assert ev["state"] == "completed" and ev["step"] == 5 and isinstance(ev["result"]["metrics"]["val_loss"], float)
    assert stop["state"] == "completed" and read_json(jobs_dir / "acc" / "status.json")["state"] == "stopped"
    # the evaluation's metrics reached the status and stayed through the steps after it
    metrics = read_json(jobs_dir / "acc" / "status.json")["metrics"]
    assert isinstance(metrics["val_loss"], float) and "loss" in metrics, metrics


def test_abort_blocks_model_checkpoint(tmp_path: Path, jobs_dir: Path) -> None:
    # ModelCheckpoint saves at every epoch end (16 steps); abort at step 20 must not save.
    trainer, driver, ctl = fit(tmp_path, jobs_dir, "ab", {20: "abort"}, max_steps=100)
    assert trainer.global_step == 20 and ctl.aborted
    assert driver.saves == [16]
    files = sorted(p.name for p in (tmp_path / "ab" / "checkpoints").iterdir())
    assert files == ["epoch=0-step=16.ckpt"], files
    assert read_json(jobs_dir / "ab" / "status.json")["state"] == "aborted"
