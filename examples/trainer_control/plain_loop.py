"""A plain PyTorch training loop under forgather's Controller (CPU, synthetic data).

Runs alone (``python plain_loop.py``) or under torchrun with DDP
(``python -m torch.distributed.run --nproc-per-node 2 plain_loop.py``). It trains until
told to stop or ``--max-steps`` is reached; from another terminal::

    forgather control list
    forgather control save  <job> --wait
    forgather control stop  <job> --wait

Checkpoints (model + optimizer state) go to ``--output-dir/checkpoint-<step>.pt``.
"""

from __future__ import annotations

import argparse
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0

    torch.manual_seed(0)
    model: nn.Module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    if distributed:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start = 0
    resume = args.resume or resume_from()  # a relaunch of the same --job-id continues
    if resume:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        _bare(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
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
            torch.save({"model": _bare(model).state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
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
    with ctl:
        if rank == 0 and isinstance(ctl, Controller):
            print(f"job {ctl.job_id} running; control it with `forgather control status {ctl.job_id}`", flush=True)
        for step in range(start + 1, args.max_steps + 1):
            x = torch.randn(32, 16, generator=gen)
            loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
            last = step
            if args.step_time:
                time.sleep(args.step_time * (args.slow_factor if rank == args.slow_rank else 1.0))
            act = ctl.step(step, {"loss": float(loss.detach()), "learning_rate": opt.param_groups[0]["lr"]})
            if act.evaluate or (args.eval_every and step % args.eval_every == 0):
                ctl.evaluation_done(evaluate())
            if act.save:
                ctl.checkpoint_saved(save(step))
            if act.stop:
                if rank == 0:
                    print(f"stopping at step {step} ({act.command})", flush=True)
                break
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


def _bare(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


if __name__ == "__main__":
    sys.exit(main())
