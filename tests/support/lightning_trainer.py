"""A real Lightning Trainer in the test's process (one rank), driven by commands sent over
the real HTTP server at chosen optimizer steps: what tests/callback/test_lightning_single.py
runs. Its own module so that torch and Lightning load when a test runs, not when pytest
collects (every xdist worker collects every module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from forgather_control.callback.lightning import LightningControlCallback
from forgather_control.client import JobHandle, find_job, probe_endpoint


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
                self.sent[step] = c.send(self.at[step]).id

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
