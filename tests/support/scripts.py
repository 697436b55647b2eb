"""Small training scripts the tests run: under ``forgather launch``, or alone (``python -c``)."""

from __future__ import annotations

from support.paths import EXAMPLES

#: A plain loop whose Controller starts only once the test writes the file ``argv[1]``
#: ("loading a big model"); ``die`` in it makes the script exit 3 first. Checkpoints go
#: to ``argv[2]``.
LATE_CONTROLLER = """
import sys, time
from pathlib import Path
from forgather_control.callback import Controller

go, out = Path(sys.argv[1]), Path(sys.argv[2])
while not go.exists():  # "loading the model" until the test says go
    time.sleep(0.05)
if go.read_text() == "die":
    sys.exit(3)
with Controller(max_steps=1_000_000) as ctl:
    for step in range(1, 1_000_001):
        time.sleep(0.01)
        act = ctl.step(step)
        if act.save:
            out.mkdir(exist_ok=True)
            ck = out / f"ck-{step}"
            ck.write_text("saved")
            ctl.checkpoint_saved(str(ck))
        if act.stop:
            print("stopped at", step, act.command, flush=True)
            break
"""


#: A training loop under a Controller, without torch (the example
#: ``controlled_loop.py``): for a test about a live job's process, its records and its
#: server, not about training. Run ``[sys.executable, CONTROLLED_LOOP, job_id, out]``;
#: it runs until told to stop.
CONTROLLED_LOOP = str(EXAMPLES / "controlled_loop.py")


#: A plain DDP loop (gloo, CPU) for the guards: ``--nan-at K --nan-rank R`` makes rank R's
#: loss NaN from step K, before its backward (a real NaN: the gradient all-reduce carries
#: it to every rank); ``--spike-at K --spike-rank R`` multiplies the loss rank R reports
#: by ``--spike-factor`` from step K; ``--slowdown-at K`` makes every step from K take
#: ``--slowdown-time`` seconds. Saves go to ``--output-dir``; each rank prints
#: ``rank R pid P ended at step S aborted=...`` at its end, as the examples do.
GUARDED_LOOP = """
import argparse, os, sys, time
import torch, torch.distributed as dist
from torch import nn
from forgather_control.callback import Controller

p = argparse.ArgumentParser()
p.add_argument("--max-steps", type=int, default=1_000_000)
p.add_argument("--output-dir", required=True)
p.add_argument("--step-time", type=float, default=0.01)
p.add_argument("--nan-at", type=int, default=0)
p.add_argument("--nan-rank", type=int, default=1)
p.add_argument("--spike-at", type=int, default=0)
p.add_argument("--spike-rank", type=int, default=0)
p.add_argument("--spike-factor", type=float, default=100.0)
p.add_argument("--slowdown-at", type=int, default=0)
p.add_argument("--slowdown-time", type=float, default=0.2)
args = p.parse_args()
distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
if distributed:
    dist.init_process_group("gloo")
rank = dist.get_rank() if distributed else 0
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
if distributed:
    model = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
gen = torch.Generator().manual_seed(1 + rank)
last = 0
with Controller(max_steps=args.max_steps) as ctl:
    for step in range(1, args.max_steps + 1):
        x = torch.randn(32, 16, generator=gen)
        loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        if args.nan_at and step >= args.nan_at and rank == args.nan_rank:
            loss = loss * float("nan")
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = step
        slow = args.slowdown_at and step >= args.slowdown_at
        time.sleep(args.slowdown_time if slow else args.step_time)
        reported = loss.detach()
        if args.spike_at and step >= args.spike_at and rank == args.spike_rank:
            reported = reported * args.spike_factor
        act = ctl.step(step, {"loss": reported})  # a tensor: the Controller reads it at its checks only
        if act.save:
            os.makedirs(args.output_dir, exist_ok=True)
            path = os.path.join(args.output_dir, f"checkpoint-{step}.pt")
            if rank == 0:
                torch.save({"step": step}, path)
            if distributed:
                dist.barrier()
            ctl.checkpoint_saved(path)
        if act.stop:
            break
print(f"rank {rank} pid {os.getpid()} ended at step {last} aborted={ctl.aborted}", flush=True)
if distributed:
    dist.destroy_process_group()
"""

#: The HF example (``hf_trainer.py``) with GPT-2's loss made NaN on rank ``$GUARD_NAN_RANK``
#: from training step ``$GUARD_NAN_AT`` (a model wrapper: its forward's loss times NaN).
GUARDED_HF = """
import functools, os, runpy, sys
from transformers import GPT2LMHeadModel
at, on, rank = int(os.environ["GUARD_NAN_AT"]), int(os.environ["GUARD_NAN_RANK"]), int(os.environ.get("RANK", "0"))
forward, calls = GPT2LMHeadModel.forward, [0]

@functools.wraps(forward)  # HF keeps the dataset's columns the forward's signature names
def nan_forward(self, *args, **kwargs):
    out = forward(self, *args, **kwargs)
    if self.training:
        calls[0] += 1  # the forward of step N is the Nth (no gradient accumulation)
        if rank == on and calls[0] >= at and out.loss is not None:
            out.loss = out.loss * float("nan")
    return out

GPT2LMHeadModel.forward = nan_forward
sys.argv = [EXAMPLE, *sys.argv[1:]]
runpy.run_path(EXAMPLE, run_name="__main__")
""".replace("EXAMPLE", repr(str(EXAMPLES / "hf_trainer.py")))

#: The Lightning example (``lightning_trainer.py``) with its training loss made NaN on rank
#: ``$GUARD_NAN_RANK`` from step ``$GUARD_NAN_AT`` (``mse_loss`` wrapped; no validation runs).
GUARDED_LIGHTNING = """
import os, runpy, sys
import torch.nn.functional as F
at, on, rank = int(os.environ["GUARD_NAN_AT"]), int(os.environ["GUARD_NAN_RANK"]), int(os.environ.get("RANK", "0"))
mse, calls = F.mse_loss, [0]

def nan_mse(*args, **kwargs):
    loss = mse(*args, **kwargs)
    calls[0] += 1  # the loss of step N is the Nth (no validation is scheduled)
    return loss * float("nan") if rank == on and calls[0] >= at else loss

F.mse_loss = nan_mse
sys.argv = [EXAMPLE, *sys.argv[1:]]
runpy.run_path(EXAMPLE, run_name="__main__")
""".replace("EXAMPLE", repr(str(EXAMPLES / "lightning_trainer.py")))
