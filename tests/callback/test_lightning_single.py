"""The Lightning callback in one process (no collective), with commands sent over the
real HTTP server at chosen optimizer steps: gradient accumulation (micro-batches are
not step ends), save once per command, eval metrics, abort that keeps ModelCheckpoint
from saving after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pl = pytest.importorskip("lightning.pytorch")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from forgather_control.callback.lightning import LightningControlCallback  # noqa: E402
from forgather_control.client import JobHandle, find_job, probe_endpoint  # noqa: E402
from forgather_control.core import read_json  # noqa: E402


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Driver(pl.Callback):
    """Before the control callback: sends commands at optimizer steps, counts saves."""

    def __init__(self, jobs_dir: Path, job_id: str, at: dict[int, str]) -> None:
        self.jobs_dir, self.job_id, self.at = jobs_dir, job_id, at
        self.sent: dict[int, str] = {}
        self.saves: list[int] = []
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1
        step = trainer.global_step
        if step in self.at and step not in self.sent:
            with JobHandle.from_info(find_job(self.jobs_dir, self.job_id, probe=probe_endpoint)) as c:
                self.sent[step] = c.send(self.at[step])["id"]

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.saves.append(trainer.global_step)


def fit(tmp_path: Path, jobs_dir: Path, job_id: str, at: dict[int, str], **kw: Any) -> tuple[Any, Driver, LightningControlCallback]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    driver = Driver(jobs_dir, job_id, at)
    ctl = LightningControlCallback(job_id=job_id, jobs_dir=jobs_dir, signals=(), poll_interval=0.05)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=kw.pop("max_steps", 12),
        default_root_dir=str(tmp_path / job_id),
        callbacks=[driver, ctl],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )
    trainer.fit(Module(), data, data)
    return trainer, driver, ctl


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
