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
