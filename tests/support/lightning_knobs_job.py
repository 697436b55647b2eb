"""A Lightning job for the knob tests, run by torchrun (gloo, CPU): a tiny regression with
a linear schedule stepped every step (the rate falls from 0.01 by half over 2000 steps),
ModelCheckpoint every 1000 steps, validation every 1000 batches, clipping by norm at 1.0
and logging every 50 steps, so the callback declares every knob it has. Each rank
appends the rate each step trains with to ``--trace-dir/rank-R.jsonl``, and prints
``rank R pid P ended at step S aborted=...`` at its end, as the examples do."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from forgather_control.callback.lightning import LightningControlCallback


class Regressor(pl.LightningModule):
    def __init__(self, step_time: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
        self.step_time = step_time

    def training_step(self, batch, batch_idx):
        x, y = batch
        time.sleep(self.step_time)
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.5 * s / 2000)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Trace(pl.Callback):
    """The rate each step trains with, one JSON line a step."""

    def __init__(self, directory: str, rank: int) -> None:
        os.makedirs(directory, exist_ok=True)
        self.file = open(os.path.join(directory, f"rank-{rank}.jsonl"), "a", buffering=1)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.file.write(json.dumps({"step": trainer.global_step + 1, "lr": trainer.optimizers[0].param_groups[0]["lr"]}) + "\n")

    def on_train_end(self, trainer, pl_module):
        self.file.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--output-dir", required=True)
    p.add_argument("--trace-dir", required=True)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--step-time", type=float, default=0.01)
    args = p.parse_args()
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)
    control = LightningControlCallback()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=local,
        num_nodes=max(1, world // local),
        strategy=pl.strategies.DDPStrategy(process_group_backend="gloo") if world > 1 else "auto",
        max_steps=args.max_steps,
        max_epochs=-1,
        default_root_dir=args.output_dir,
        callbacks=[control, Trace(args.trace_dir, int(os.environ.get("RANK", "0"))), ModelCheckpoint(dirpath=args.output_dir, every_n_train_steps=1000)],
        check_val_every_n_epoch=None,
        val_check_interval=1000,
        gradient_clip_val=1.0,
        log_every_n_steps=50,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    trainer.fit(Regressor(args.step_time), data, data)
    print(f"rank {trainer.global_rank} pid {os.getpid()} ended at step {trainer.global_step} aborted={control.aborted}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
