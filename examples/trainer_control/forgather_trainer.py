"""A tiny model trained with the Forgather framework's own trainers, under control.

    forgather launch --nproc-per-node 2 examples/trainer_control/forgather_trainer.py --output-dir /tmp/fg-out

Nothing in this script is about control: ``forgather launch`` adds the control callback to
the framework's trainer as it is built (``Trainer``, ``AccelTrainer``; every trainer built on
its ``BaseTrainer``), hands a relaunch its resume point through
``args.resume_from_checkpoint``, and ends the worker at ``train()`` when the job was aborted.

Needs Python 3.12 and the framework (README: "With the Forgather framework's trainers").
On CPU with several ranks, the process group is made here with gloo before the framework's
``DistributedEnvironment`` (which would ask torch for an accelerator device id).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist


class Tiny(torch.nn.Module):
    """Regression on random data; returns logits, as the framework's trainers expect."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Samples(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 16, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True) * 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class Announce:
    """Says which step training starts from (a relaunch resumes past 0)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_begin(self, args, state, control, **kwargs):
        print(f"rank {self.rank}: training from step {state.global_step}", flush=True)
        return control


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True)
    p.add_argument("--trainer", choices=("trainer", "accel"), default="trainer")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--save-steps", type=int, default=0, help="the trainer's own periodic saves (0: none)")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds per step, to make a run last")
    p.add_argument("--after-train", default=None, help="a file written when train() returns (an export would go here)")
    args = p.parse_args()

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # on CPU, before the framework's DistributedEnvironment
    from forgather.ml.distributed import DistributedEnvironment

    env = DistributedEnvironment()
    common = {
        "output_dir": args.output_dir,
        "max_steps": args.max_steps,
        "num_train_epochs": 1_000_000,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "logging_steps": args.logging_steps,
        "save_strategy": "steps" if args.save_steps else "no",
        "save_steps": args.save_steps or 1000,
        "save_total_limit": 1000,
        "eval_strategy": "no",
        "max_eval_steps": 4,
        "use_cpu": True,
        "seed": 1,
        "dataloader_num_workers": 0,
        "learning_rate": 1e-3,
    }
    model = Tiny()
    if args.step_sleep:
        import time

        model.register_forward_pre_hook(lambda *_: time.sleep(args.step_sleep))
    data = {"model": model, "train_dataset": Samples(4096, 0), "eval_dataset": Samples(64, 1), "distributed_env": env}
    loss = torch.nn.functional.mse_loss
    if args.trainer == "accel":
        from accelerate import Accelerator
        from forgather.ml.trainer.accelerate.accel_trainer import AccelTrainer, AccelTrainingArguments

        trainer = AccelTrainer(args=AccelTrainingArguments(**common), accelerator=Accelerator(cpu=True), compute_loss_func=loss, **data)
    else:
        from forgather.ml.trainer import Trainer, TrainingArguments

        trainer = Trainer(args=TrainingArguments(**common), compute_loss_func=loss, **data)
    trainer.add_callback(Announce(env.rank))
    out = trainer.train()
    print(f"train() returned at step {out.global_step}", flush=True)
    if args.after_train and env.rank == 0:
        with open(args.after_train, "w") as f:
            f.write(f"{out.global_step}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
