"""A Lightning Trainer under forgather control: a tiny regression model, synthetic data, CPU.

Runs alone (``python lightning_trainer.py``) or under torchrun
(``python -m torch.distributed.run --nproc-per-node 2 lightning_trainer.py``: DDP on
gloo). It trains until told to stop or ``--max-steps``; from another terminal::

    forgather control save <job> --wait     # <output-dir>/checkpoints/forgather-step=<n>.ckpt
    forgather control eval <job> --wait
    forgather control stop <job>

``--no-control-callback`` leaves the callback out (``forgather launch`` injects it).
``--resume PATH`` resumes from a .ckpt file. ``--package pytorch_lightning`` runs the same
job on the standalone ``pytorch_lightning`` package instead of ``lightning.pytorch``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-steps", type=int, default=1_000_000, help="stop after this many steps (default: effectively until told)")
    p.add_argument("--output-dir", default="out/lightning_trainer", help="default_root_dir: checkpoints and logs")
    p.add_argument("--job-id", default=None, help="job id (default: $FORGATHER_JOB_ID or generated)")
    p.add_argument("--jobs-dir", default=None, help="jobs directory (default: $FORGATHER_JOBS_DIR or ~/.forgather/jobs)")
    p.add_argument("--step-time", type=float, default=0.01, help="extra seconds per step, so a person can watch it")
    p.add_argument("--no-control-callback", action="store_true", help="do not add the callback (the launcher injects it)")
    p.add_argument("--grad-accum", type=int, default=1, help="accumulate_grad_batches")
    p.add_argument("--resume", default=None, help="checkpoint file to resume from")
    p.add_argument("--package", choices=("lightning.pytorch", "pytorch_lightning"), default="lightning.pytorch", help="which Lightning to train with")
    p.add_argument("--val-every", type=int, default=1_000_000, help="validate every N training batches (default: on command and at the end)")
    p.add_argument("--eval-time", type=float, default=0.0, help="make each validation take about this long (one-second batches)")
    p.add_argument("--first-batch-time", type=float, default=0.0, help="seconds the first training batch takes to load (a slow data loader start)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import importlib

    pl = importlib.import_module(args.package)  # `import lightning.pytorch as pl`, or the standalone one

    class Regressor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            if args.step_time:
                time.sleep(args.step_time)
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            if args.eval_time:
                if batch_idx == 0:
                    print(f"rank {self.global_rank} validating at step {self.global_step}", flush=True)
                time.sleep(1.0)
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class SlowStart(TensorDataset):
        """The first batch takes --first-batch-time seconds to load."""

        started = False

        def __getitem__(self, i):
            if not self.started:
                self.started = True
                print(f"rank {os.environ.get('RANK', '0')} loading the first batch", flush=True)
                time.sleep(args.first_batch_time)
            return super().__getitem__(i)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    vx = torch.randn(max(1, round(args.eval_time)) * 16 * world if args.eval_time else 64, 16, generator=g)  # one-second batches
    train = DataLoader((SlowStart if args.first_batch_time else TensorDataset)(x, x.sum(dim=1, keepdim=True)), batch_size=8)
    val = DataLoader(TensorDataset(vx, vx.sum(dim=1, keepdim=True)), batch_size=16)

    callbacks = []
    if not args.no_control_callback:
        from forgather_control.callback.lightning import control_callback_class

        callback_cls = control_callback_class(args.package)  # LightningControlCallback for lightning.pytorch
        callbacks.append(callback_cls(job_id=args.job_id, jobs_dir=args.jobs_dir))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        num_nodes=max(1, world // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))),
        strategy=pl.strategies.DDPStrategy(process_group_backend="gloo") if world > 1 else "auto",
        max_steps=args.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=args.grad_accum,
        default_root_dir=args.output_dir,
        callbacks=callbacks,
        check_val_every_n_epoch=None,
        val_check_interval=args.val_every,  # by default on command (and at the end), not on a schedule
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    module = Regressor()
    trainer.fit(module, train, val, ckpt_path=args.resume)
    rank = trainer.global_rank
    ctl = next((cb for cb in trainer.callbacks if type(cb).__name__ == "LightningControlCallback"), None)
    aborted = bool(ctl is not None and ctl.aborted)
    print(f"rank {rank} pid {os.getpid()} ended at step {trainer.global_step} aborted={aborted}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
