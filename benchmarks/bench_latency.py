"""How long a command takes to apply in a real HF Trainer job, at any logging interval.

Not a test: run ``python benchmarks/bench_latency.py`` (about two minutes). For each
``--logging-steps`` (default 10 and 500: the framework's control callback looks for
commands only when the trainer logs, so its latency grew with the interval, 10 s at 500),
it launches ``examples/trainer_control/hf_trainer.py`` under ``forgather launch`` on
``--nproc`` gloo ranks (the control callback injected, as a user runs it; no
``check_interval``: it follows the checks' measured cost), sends ``--commands`` saves
through the Python API one at a time at random moments, and times each from the
``save``'s reply (the 202) to ``on_save`` on the last rank (each rank writes the time its
``on_save`` ran; the clocks are one host's). Budget: median <= 0.25 s, max <= 0.5 s;
exits 1 over budget. It prints beside it the time to the step that saves (the
command's agreed step, on the last rank): the rest is the trainer writing its checkpoint.

The job evaluates only on command (``--eval-steps 0``), so a save is a save: ``save``
evaluates first when evaluation is configured (actions.evaluates_first), and an
evaluation's length is the trainer's, not control's.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_P50_S = 0.25
BUDGET_MAX_S = 0.5
START_TIMEOUT = 300.0

#: The job: the HF example with a callback that notes each on_save, per rank.
JOB = r"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("hf_trainer", sys.argv[1])
hf = importlib.util.module_from_spec(spec); spec.loader.exec_module(hf)
from transformers import TrainerCallback
out = sys.argv[2]
args = hf.parse_args(sys.argv[3:])

class SaveClock(TrainerCallback):
    decided = 0.0

    def on_step_end(self, a, state, control, **kw):
        if control.should_save:  # set by the control callback (before this one) at the agreed step
            self.decided = time.time()

    def on_save(self, a, state, control, **kw):
        with open(os.path.join(out, f"saves-{os.environ['RANK']}.txt"), "a") as f:
            f.write(f"{state.global_step} {self.decided} {time.time()}\n")

trainer = hf.build_trainer(args)
trainer.add_callback(SaveClock())
trainer.train()
"""


def saves(out: Path, rank: int) -> list[tuple[float, float]]:
    """(when the rank's step decided to save, when its on_save ran), one per save."""
    path = out / f"saves-{rank}.txt"
    if not path.exists():
        return []
    return [(float(d), float(s)) for _, d, s in (line.split() for line in path.read_text().splitlines() if line.count(" ") == 2)]


def run(logging_steps: int, *, nproc: int, commands: int, seed: int) -> tuple[list[tuple[float, float]], float | None]:
    """(reply -> the step that saves, on the last rank; reply -> on_save on the last rank),
    per save; and the check interval the job chose."""
    from forgather_control.client import JobHandle, find_job

    with tempfile.TemporaryDirectory() as tmp:
        jobs, out = Path(tmp) / "jobs", Path(tmp) / "out"
        out.mkdir()
        script = Path(tmp) / "job.py"
        script.write_text(JOB)
        job_id = f"latency-{logging_steps}"
        env = dict(os.environ, OMP_NUM_THREADS="1", FORGATHER_JOBS_DIR=str(jobs), PYTHONUNBUFFERED="1")
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "FORGATHER_CHECK_INTERVAL"):
            env.pop(k, None)
        argv = [
            sys.executable,
            "-m",
            "forgather_control.cli.main",
            "launch",
            "--jobs-dir",
            str(jobs),
            "--job-id",
            job_id,
            "--nproc-per-node",
            str(nproc),
            str(script),
        ]
        argv += [str(ROOT / "examples/trainer_control/hf_trainer.py"), str(out), "--output-dir", str(Path(tmp) / "ckpt"), "--logging-steps", str(logging_steps)]
        argv += ["--eval-steps", "0", "--step-time", "0.01", "--no-control-callback"]
        launcher = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if launcher.poll() is not None:
                    raise SystemExit(f"the job ended before it ran: {launcher.stderr.read()[-3000:] if launcher.stderr else ''}")
                try:
                    info = find_job(jobs, job_id, squeue=None)
                    st = info.current_status
                    if st is not None and st.state == "running" and (st.step or 0) >= 20 and info.endpoint is not None:
                        break
                except Exception:  # noqa: BLE001 - not there yet
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the job did not start in time")
                time.sleep(0.2)
            rng = random.Random(seed)
            latencies = []
            with JobHandle.from_info(find_job(jobs, job_id, squeue=None)) as job:
                for i in range(commands):
                    time.sleep(rng.uniform(0.1, 0.6))
                    job.send("save")
                    replied = time.time()
                    while min(len(saves(out, r)) for r in range(nproc)) <= i:  # a harness's poll: the times are the ranks' own
                        if launcher.poll() is not None:
                            raise SystemExit("the job ended during the measurement")
                        time.sleep(0.005)
                    latencies.append(tuple(max(saves(out, r)[i][k] for r in range(nproc)) - replied for k in (0, 1)))
                interval = job.status().check_interval
                job.send("abort")
            launcher.wait(timeout=120)
            return latencies, interval
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logging-steps", type=int, action="append", metavar="N", help="the Trainer's logging_steps (repeatable; default 10 and 500)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--commands", type=int, default=12)
    args = p.parse_args()
    ok = True
    head = f"{'logging_steps':>13}  {'p50 s':>7}  {'max s':>7}  {'n':>3}  {'to the step p50/max':>19}  {'interval':>8}"
    print(f"{head}  verdict (p50 <= {BUDGET_P50_S}, max <= {BUDGET_MAX_S})")
    for n in args.logging_steps or [10, 500]:
        rows, interval = run(n, nproc=args.nproc, commands=args.commands, seed=n)
        lat, step = [r[1] for r in rows], [r[0] for r in rows]
        med, worst = statistics.median(lat), max(lat)
        good = med <= BUDGET_P50_S and worst <= BUDGET_MAX_S
        ok &= good
        steps = f"{statistics.median(step):.3f}/{max(step):.3f}"
        print(f"{n:>13}  {med:>7.3f}  {worst:>7.3f}  {len(lat):>3}  {steps:>19}  {interval or 0:>8.3f}  {'ok' if good else 'OVER BUDGET'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
