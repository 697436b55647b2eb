"""A plain PyTorch training loop under forgather's Controller (CPU, synthetic data).

Runs alone (``python plain_loop.py``) or under torchrun with DDP
(``python -m torch.distributed.run --nproc-per-node 2 plain_loop.py``). It trains until
told to stop or ``--max-steps`` is reached; from another terminal::

    forgather control list
    forgather control save  <job> --wait
    forgather control stop  <job> --wait

Checkpoints (model, optimizer and scheduler state) go to ``--output-dir/checkpoint-<step>.pt``.

Its live knobs (``forgather control set <job> NAME=VALUE``, on every rank at one step):
``lr`` and ``lr_scale`` (``ctl.optimizer``: both parameter groups and the schedule's base
rates change in proportion), ``max_steps`` (the loop runs ``while step < max_steps.value``:
longer, shorter, or below the current step to end now) and ``temperature``, this loop's
own knob (``ctl.knob``), read each step as a plain value::

    forgather control set <job> lr_scale=0.5 max_steps=50000
    forgather control set <job> temperature=0.5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from forgather_control.callback import Controller, resume_from


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-steps", type=int, default=1_000_000, help="stop after this many steps (default: effectively until told)")
    p.add_argument("--output-dir", default="out/plain_loop", help="where checkpoints go")
    p.add_argument("--job-id", default=None, help="job id (default: $FORGATHER_JOB_ID or generated)")
    p.add_argument("--jobs-dir", default=None, help="jobs directory (default: $FORGATHER_JOBS_DIR or ~/.forgather/jobs)")
    p.add_argument("--step-time", type=float, default=0.01, help="extra seconds per step, so a person can watch it")
    p.add_argument("--no-http", action="store_true", help="file channel only (enable_http=False)")
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (0: only on command)")
    p.add_argument("--resume", default=None, help="checkpoint file to resume from (default: the one a relaunch names, if any)")
    p.add_argument("--save-delay", type=float, default=0.0, help="seconds each save takes before writing (a slow filesystem)")
    p.add_argument("--no-control-callback", action="store_true", help="train without a Controller (nothing to command)")
    p.add_argument("--slow-rank", type=int, default=None, help="this rank sleeps --slow-factor times --step-time a step: a straggler")
    p.add_argument("--slow-factor", type=float, default=1.5, help="how much longer --slow-rank sleeps each step (default 1.5)")
    p.add_argument("--lr", type=float, default=0.01, help="the first parameter group's learning rate (the second's is half)")
    p.add_argument("--lr-decay-steps", type=int, default=10_000, help="the schedule: the rate falls linearly to a tenth over this many steps")
    p.add_argument("--temperature", type=float, default=0.1, help="the label noise: targets get this times N(0, 1) (a live knob)")
    p.add_argument("--trace-steps", default=None, help="each rank appends a line a step (the values it trained with) to DIR/rank-R.jsonl")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    model: nn.Module = nn.parallel.DistributedDataParallel(net) if distributed else net
    # two parameter groups, two rates: a change to the rate moves both in proportion
    opt = torch.optim.SGD([{"params": net[0].parameters()}, {"params": net[2].parameters(), "lr": args.lr / 2}], lr=args.lr)
    decay = max(1, args.lr_decay_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.1, 1.0 - 0.9 * s / decay))
    start = 0
    resume = args.resume or resume_from()  # a relaunch of the same --job-id continues
    if resume:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        _bare(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            sched.load_state_dict(state["scheduler"])
        start = int(state["step"])
        print(f"resumed from {resume} at step {start}", flush=True)

    gen = torch.Generator().manual_seed(1 + rank)
    eval_x = torch.randn(64, 16, generator=torch.Generator().manual_seed(99))
    eval_y = eval_x.sum(dim=1, keepdim=True)

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            return {"eval_loss": float(nn.functional.mse_loss(model(eval_x), eval_y))}

    def save(step: int) -> str:
        path = os.path.join(args.output_dir, f"checkpoint-{step}.pt")
        if args.save_delay:
            time.sleep(args.save_delay)
        if rank == 0:
            os.makedirs(args.output_dir, exist_ok=True)
            tmp = path + ".tmp"
            torch.save({"model": _bare(model).state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step}, tmp)
            os.replace(tmp, path)
        if distributed:
            dist.barrier()
        return path

    ctl = (
        _NoControl()
        if args.no_control_callback
        # evaluates=True: this loop evaluates when told (act.evaluate), so a save evaluates first
        else Controller(job_id=args.job_id, jobs_dir=args.jobs_dir, max_steps=args.max_steps, enable_http=not args.no_http, evaluates=True)
    )
    last = start
    if distributed and isinstance(ctl, Controller):
        ctl.watch(model)  # the gradient all-reduce's waits are not a rank's own time: names a straggler
    trace = _Trace(args.trace_steps, rank)
    with ctl:
        if rank == 0 and isinstance(ctl, Controller):
            print(f"job {ctl.job_id} running; control it with `forgather control status {ctl.job_id}`", flush=True)
        # Live knobs, declared on every rank: lr and lr_scale for the optimizer and its
        # schedule, the run's length, and one of the loop's own. A relaunch starts them
        # at the job's last values.
        ctl.optimizer(opt, sched)
        max_steps = ctl.knob("max_steps", args.max_steps, min=1, help="the run's length; below the current step ends it now")
        temperature = ctl.knob("temperature", args.temperature, min=0.0, help="the label noise: targets get this times N(0, 1)")
        step = start
        while step < max_steps.value:
            step += 1
            noise = temperature.value  # a plain value, read each step
            x = torch.randn(32, 16, generator=gen)
            y = x.sum(dim=1, keepdim=True) + noise * torch.randn(32, 1, generator=gen)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            trace.write(step=step, lrs=[g["lr"] for g in opt.param_groups], temperature=noise)
            opt.step()
            sched.step()
            last = step
            if args.step_time:
                time.sleep(args.step_time * (args.slow_factor if rank == args.slow_rank else 1.0))
            act = ctl.step(step, {"loss": float(loss.detach()), "learning_rate": opt.param_groups[0]["lr"], "temperature": noise})
            if act.evaluate or (args.eval_every and step % args.eval_every == 0):
                ctl.evaluation_done(evaluate())
            if act.save:
                ctl.checkpoint_saved(save(step))
            if act.stop:
                if rank == 0:
                    print(f"stopping at step {step} ({act.command})", flush=True)
                break
    trace.close()
    print(f"rank {rank} pid {os.getpid()} ended at step {last} aborted={ctl.aborted}", flush=True)
    if distributed:
        dist.destroy_process_group()
    return 0


class _NoControl:
    """Stands in for the Controller with --no-control-callback."""

    aborted = False

    def __enter__(self) -> _NoControl:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def step(self, step: int, metrics: object = None):
        from forgather_control.callback import NO_ACTIONS

        return NO_ACTIONS

    def evaluation_done(self, metrics: object = None) -> None:
        return None

    def checkpoint_saved(self, path: str) -> None:
        return None

    def optimizer(self, optimizer: object, scheduler: object = None) -> None:
        return None

    def knob(self, name: str, default: float, **spec: object) -> _Fixed:
        return _Fixed(default)


class _Fixed:
    """A knob without a Controller: the script's value, for good."""

    def __init__(self, value: float) -> None:
        self.value = value


class _Trace:
    """--trace-steps: one JSON line a step, the values the step trained with (tests read it)."""

    def __init__(self, directory: str | None, rank: int) -> None:
        self._file = None
        if directory:
            os.makedirs(directory, exist_ok=True)
            self._file = open(os.path.join(directory, f"rank-{rank}.jsonl"), "a", buffering=1)

    def write(self, **facts: object) -> None:
        if self._file is not None:
            self._file.write(json.dumps(facts) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _bare(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


if __name__ == "__main__":
    sys.exit(main())
