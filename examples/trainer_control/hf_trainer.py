"""A HuggingFace Trainer under forgather control: a tiny GPT-2 on synthetic tokens, CPU.

Runs alone (``python hf_trainer.py``) or under torchrun
(``python -m torch.distributed.run --nproc-per-node 2 hf_trainer.py``, gloo). The model
is built from a config (no downloads). It trains until told to stop or ``--max-steps``;
from another terminal::

    forgather control list
    forgather control save  <job> --wait      # checkpoint-<step>/ in --output-dir
    forgather control eval  <job> --wait
    forgather control save-stop <job> --wait

``--no-control-callback`` leaves the callback out (``forgather launch`` injects it).
``--resume PATH`` resumes from a checkpoint folder (``resume_from_checkpoint``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch
from torch.utils.data import Dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-steps", type=int, default=1_000_000, help="stop after this many steps (default: effectively until told)")
    p.add_argument("--output-dir", default="out/hf_trainer", help="where checkpoint-<step>/ folders go")
    p.add_argument("--job-id", default=None, help="job id (default: $FORGATHER_JOB_ID or generated)")
    p.add_argument("--jobs-dir", default=None, help="jobs directory (default: $FORGATHER_JOBS_DIR or ~/.forgather/jobs)")
    p.add_argument("--step-time", type=float, default=0.01, help="extra seconds per step, so a person can watch it")
    p.add_argument("--no-control-callback", action="store_true", help="do not add the callback (the launcher injects it)")
    p.add_argument("--save-strategy", default="no", choices=["no", "steps", "epoch", "best"], help="the Trainer's own saving")
    p.add_argument("--save-steps", type=int, default=500)
    p.add_argument("--eval-steps", type=int, default=1_000_000, help="evaluate every N steps (default: only on command)")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--resume", default=None, help="checkpoint folder to resume from")
    p.add_argument("--load-time", type=float, default=0.0, help="seconds the model takes to load, before the Trainer exists")
    p.add_argument("--eval-time", type=float, default=0.0, help="make each evaluation take about this long (one-second batches)")
    p.add_argument("--save-time", type=float, default=0.0, help="extra seconds each checkpoint takes to write")
    return p.parse_args(argv)


class Tokens(Dataset):
    """Deterministic random token sequences; labels are the inputs (language modelling)."""

    def __init__(self, n: int, length: int = 16, vocab: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.data[i]
        return {"input_ids": ids, "labels": ids}


def build_trainer(args: argparse.Namespace):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    class StepTime(TrainerCallback):
        """Stretch each step so a person (or a test) can command the job mid-run."""

        def on_step_begin(self, a, state, control, **kwargs):
            time.sleep(args.step_time)

    class SlowEval(TrainerCallback):
        """A long evaluation: each batch takes a second more (--eval-time)."""

        at = -1

        def on_prediction_step(self, a, state, control, **kwargs):
            if self.at != state.global_step:
                self.at = state.global_step
                print(f"rank {os.environ.get('RANK', '0')} evaluating at step {state.global_step}", flush=True)
            time.sleep(1.0)

    class SlowSave(Trainer):
        """A checkpoint that takes --save-time seconds more to write."""

        def _save_checkpoint(self, model, trial):
            print(f"rank {os.environ.get('RANK', '0')} saving at step {self.state.global_step}", flush=True)
            time.sleep(args.save_time)
            return super()._save_checkpoint(model, trial)

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    eval_on = args.save_strategy == "best" or args.eval_steps > 0
    targs = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        logging_steps=args.logging_steps,
        save_strategy=args.save_strategy,
        save_steps=args.save_steps,
        eval_strategy="steps" if eval_on else "no",
        eval_steps=args.eval_steps if eval_on else None,
        metric_for_best_model="eval_loss" if args.save_strategy == "best" else None,
        report_to="none",
        use_cpu=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    callbacks = [StepTime()] if args.step_time > 0 else []
    eval_size = 32
    if args.eval_time > 0:
        callbacks.append(SlowEval())
        eval_size = max(1, round(args.eval_time)) * 8 * int(os.environ.get("WORLD_SIZE", "1"))  # one-second batches of 8 a rank
    cls = SlowSave if args.save_time > 0 else Trainer
    trainer = cls(model=model, args=targs, train_dataset=Tokens(4096), eval_dataset=Tokens(eval_size, seed=1), callbacks=callbacks)
    if not args.no_control_callback:
        from forgather_control.callback.hf import TrainerControlCallback

        trainer.add_callback(TrainerControlCallback(job_id=args.job_id, jobs_dir=args.jobs_dir, max_steps=args.max_steps, trainer=trainer))
    return trainer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    rank = int(os.environ.get("RANK", "0"))
    if args.load_time > 0:
        print(f"rank {rank} loading the model", flush=True)
        time.sleep(args.load_time)
    trainer = build_trainer(args)
    out = trainer.train(resume_from_checkpoint=args.resume)
    ctl = next((cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "TrainerControlCallback"), None)
    aborted = bool(ctl is not None and ctl.aborted)
    print(f"rank {rank} pid {os.getpid()} ended at step {out.global_step} aborted={aborted}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
