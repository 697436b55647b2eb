"""A plain DDP-style loop that hangs on purpose: try ``forgather control stacks`` and ``abort``.

At ``--hang-at`` one rank (``--hang-rank``) gets stuck fetching its next batch, the way a
data loader waiting on a dead file system does, while every other rank waits for it in
the gradient all-reduce: the typical collective hang. The job keeps "running" while its
step stands still; ``list`` and ``status`` then call it ``stalled``::

    forgather launch --nproc-per-node 2 --stall-after 10 examples/launch/hang_train.py --hang-at 20
    forgather control list                  # STATE: stalled
    forgather control stacks <job>          # rank 1 in next_batch, rank 0 in all_reduce
    forgather control abort --yes <job>     # the ranks cannot agree: the launcher ends them

``--hang-how c`` sticks in a C call that holds the GIL instead (no Python code of that
process runs any more); ``--slow-rank R`` makes rank R slow but fine (not a stall).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from forgather_control.callback import Controller


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-steps", type=int, default=1_000_000)
    p.add_argument("--step-time", type=float, default=0.02, help="extra seconds per step")
    p.add_argument("--hang-at", type=int, default=0, help="the step at which --hang-rank gets stuck (0: never)")
    p.add_argument("--hang-rank", type=int, default=1)
    p.add_argument("--hang-how", choices=["sleep", "c"], default="sleep", help="stuck in Python's sleep, or in a C call holding the GIL")
    p.add_argument("--slow-rank", type=int, default=-1, help="this rank takes --slow-time more per step")
    p.add_argument("--slow-time", type=float, default=0.5)
    return p.parse_args(argv)


def next_batch(step: int, rank: int, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """Where a real job reads its data; here it is where the stuck rank stays."""
    if args.hang_at and step == args.hang_at and rank == args.hang_rank:
        print(f"rank {rank}: stuck at step {step} ({args.hang_how})", flush=True)
        while True:
            if args.hang_how == "c":
                ctypes.PyDLL(None).sleep(3600)  # PyDLL: the call keeps the GIL
            else:
                time.sleep(3600)
    if rank == args.slow_rank:
        time.sleep(args.slow_time)
    return torch.randn(32, 16, generator=gen)


def average_gradients(model: nn.Module, world: int) -> None:
    """Every rank waits here for every other: a stuck rank stops them all."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1 + rank)
    with Controller(max_steps=args.max_steps) as ctl:
        for step in range(1, args.max_steps + 1):
            x = next_batch(step, rank, args, gen)
            loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
            opt.zero_grad()
            loss.backward()
            if distributed:
                average_gradients(model, world)
            opt.step()
            time.sleep(args.step_time)
            act = ctl.step(step, {"loss": float(loss.detach())})
            if act.stop:
                print(f"rank {rank}: stopping at step {step} ({act.command})", flush=True)
                break
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
