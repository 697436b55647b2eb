"""A job of the Forgather framework's own control callback, for real: a tiny model trained by
the framework's ``forgather.ml.trainer.Trainer`` with ``callbacks=[TrainerControlCallback(...)]``,
one process on CPU, no ``forgather launch``. Run with the framework's Python 3.12; the
callback writes its endpoint under ``$HOME/.forgather/jobs``.

    python framework_callback_job.py --output-dir OUT --port PORT
"""

from __future__ import annotations

import argparse
import time

import torch
from forgather.ml.distributed import StaticDistributedEnvironment
from forgather.ml.trainer import Trainer, TrainingArguments
from forgather.ml.trainer.callbacks.control_callback import TrainerControlCallback


class Tiny(torch.nn.Module):
    def __init__(self, step_sleep: float) -> None:
        super().__init__()
        self.net = torch.nn.Linear(8, 1)
        self.step_sleep = step_sleep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.step_sleep)  # a run that lasts long enough to be commanded
        return self.net(x)


class Samples(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--output-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-steps", type=int, default=1_000_000)
    p.add_argument("--step-sleep", type=float, default=0.01)
    args = p.parse_args()
    control = TrainerControlCallback(port=args.port)
    training = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_train_epochs=1_000_000,
        logging_steps=5,  # the callback applies commands at each log
        save_strategy="steps",  # a checkpoint manager, so a commanded save can be written
        save_steps=10_000_000,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        dataloader_num_workers=0,
        use_cpu=True,
        seed=1,
    )
    trainer = Trainer(
        args=training,
        distributed_env=StaticDistributedEnvironment(),
        model=Tiny(args.step_sleep),
        train_dataset=Samples(4096),
        eval_dataset=Samples(16),
        compute_loss_func=torch.nn.functional.mse_loss,
        callbacks=[control],
    )
    print(f"job {control.job_id}", flush=True)
    out = trainer.train()
    print(f"train() returned at step {out.global_step}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
