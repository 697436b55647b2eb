"""A plain PyTorch loop written for ``forgather launch`` (CPU, synthetic data, DDP).

What it shows: a plain loop's Controller configures itself from the launcher's
environment (job id, jobs dir, control host and port), and on a requeued or restarted
run ``resume_from()`` names the checkpoint to continue from, so the same command line
survives SLURM preemption::

    forgather launch --nproc-per-node 2 examples/launch/plain_train.py --max-steps 500
    sbatch --nodes=2 slurm/train.sbatch examples/launch/plain_train.py --output-dir out

Checkpoints go to ``--output-dir/checkpoint-<step>.pt`` (model, optimizer, step).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from forgather_control.callback import Controller, resume_from


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-steps", type=int, default=1_000_000, help="stop after this many steps")
    p.add_argument("--output-dir", default="out/plain_train", help="where checkpoints go")
    p.add_argument("--step-time", type=float, default=0.01, help="extra seconds per step")
    p.add_argument("--crash-at", type=int, default=0, help="raise at this step on the last rank (tests)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1

    torch.manual_seed(0)
    model: nn.Module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    if distributed:
        model = nn.parallel.DistributedDataParallel(model)
    bare = model.module if distributed else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start = 0
    ckpt = resume_from()
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        bare.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        print(f"rank {rank}: resumed from {ckpt} at step {start}", flush=True)

    def save(step: int) -> str:
        path = os.path.abspath(os.path.join(args.output_dir, f"checkpoint-{step}.pt"))
        if rank == 0:
            os.makedirs(args.output_dir, exist_ok=True)
            torch.save({"model": bare.state_dict(), "optimizer": opt.state_dict(), "step": step}, path + ".tmp")
            os.replace(path + ".tmp", path)
        if distributed:
            dist.barrier()
        return path

    gen = torch.Generator().manual_seed(1 + rank)
    with Controller(max_steps=args.max_steps) as ctl:
        if rank == 0:
            print(f"job {ctl.job_id} running with {world} rank(s)", flush=True)
        for step in range(start + 1, args.max_steps + 1):
            if args.crash_at and step == args.crash_at and rank == world - 1:
                raise RuntimeError(f"rank {rank}: crashing at step {step} as asked (--crash-at)")
            x = torch.randn(32, 16, generator=gen)
            loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if args.step_time:
                time.sleep(args.step_time)
            act = ctl.step(step, {"loss": float(loss.detach())})
            if act.evaluate:
                ctl.evaluation_done({"eval_loss": float(loss.detach())})
            if act.save:
                ctl.checkpoint_saved(save(step))
            if act.stop:
                print(f"rank {rank}: stopping at step {step} ({act.command})", flush=True)
                break
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
