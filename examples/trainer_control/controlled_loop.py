"""The smallest controlled job: a loop under a Controller, no torch, no model.

It starts in a fraction of a second (``plain_loop.py`` imports torch: seconds), so the
tests and ``benchmarks/bench_cli.py`` run it where a live job's process, records and
server are the point, not training. It saves a text file as its "checkpoint", evaluates
on command and runs until told to stop::

    python examples/trainer_control/controlled_loop.py JOB_ID OUTPUT_DIR
"""

import sys
import time
from pathlib import Path

from forgather_control.callback import Controller

job_id, out = sys.argv[1], Path(sys.argv[2])
with Controller(job_id=job_id) as ctl:
    print(f"job {ctl.job_id} running", flush=True)
    step = 0
    while True:
        step += 1
        time.sleep(0.01)
        act = ctl.step(step, {"loss": 1.0 / step})
        if act.evaluate:
            ctl.evaluation_done({"eval_loss": 1.0 / step})
        if act.save:
            out.mkdir(parents=True, exist_ok=True)
            ck = out / f"checkpoint-{step}"
            ck.write_text("saved")
            ctl.checkpoint_saved(str(ck))
        if act.stop:
            print("stopped at", step, act.command, flush=True)
            break
