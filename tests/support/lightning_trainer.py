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
from forgather_control.core import Command
from forgather_control.core.records import CommandOptions, KnobChange


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


class KnobModule(Module):
    """``Module`` with a linear schedule stepped every step (the rate falls from 0.01 by a
    tenth over 1000 steps), its loss logged, and a record of the clipping value the
    trainer passes each step."""

    def __init__(self) -> None:
        super().__init__()
        self.clipped: dict[int, float | None] = {}

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)  # to the logger every log_every_n_steps
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.1 * s / 1000)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clipped[self.trainer.global_step + 1] = gradient_clip_val  # the step being taken
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


class Driver(pl.Callback):
    """Before the control callback: sends commands at optimizer steps (a command's name, or
    a dict of knob changes: a set), counts saves, validations and each step's rate."""

    def __init__(self, jobs_dir: Path, job_id: str, at: dict[int, str | dict[str, object]]) -> None:
        self.jobs_dir, self.job_id, self.at = jobs_dir, job_id, at
        self.sent: dict[int, str] = {}
        self.saves: list[int] = []
        self.validations: list[int] = []
        self.rates: dict[int, float] = {}  # the rate each step trained with
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates[trainer.global_step + 1] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1
        step = trainer.global_step
        if step in self.at and step not in self.sent:
            what = self.at[step]
            with JobHandle.from_info(find_job(self.jobs_dir, self.job_id, probe=probe_endpoint)) as c:
                if isinstance(what, dict):
                    changes = [KnobChange(name=k, value=v) for k, v in what.items()]  # type: ignore[arg-type]
                    self.sent[step] = c.send(Command.SET, options=CommandOptions(changes=changes)).id
                else:
                    self.sent[step] = c.send(what).id

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validations.append(trainer.global_step)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.saves.append(trainer.global_step)


def fit(tmp_path: Path, jobs_dir: Path, job_id: str, at: dict[int, Any], **kw: Any) -> tuple[Any, Driver, LightningControlCallback]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    driver = Driver(jobs_dir, job_id, at)
    module = kw.pop("module", None) or Module()
    ctl = LightningControlCallback(job_id=job_id, jobs_dir=jobs_dir, signals=(), poll_interval=0.05)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=kw.pop("max_steps", 12),
        default_root_dir=str(tmp_path / job_id),
        callbacks=[driver, ctl, *kw.pop("callbacks", [])],
        logger=kw.pop("logger", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )
    trainer.fit(module, data, data)
    return trainer, driver, ctl
