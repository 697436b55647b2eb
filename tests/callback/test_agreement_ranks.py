"""The agreement across two real gloo ranks (torchrun), driven by a small script:

- torch.distributed initialised *after* the Controller started, without RANK and
  WORLD_SIZE in the environment (as with mp.spawn): every process first guesses it is
  rank 0 and serves; at train begin the real rank 1 stops serving and rank 0 owns the
  endpoint;
- ranks with different, jittery step times get the same actions at the same steps;
- exactly one all-reduce per check, at most one check per step, identical traces; each
  check started at an agreed step and resolved the agreed lag later.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from support.torchrun import rank_script

from forgather_control.callback.agreement import FIELDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a real torchrun job on 2 cores shared with other test runs

SCRIPT = r"""
import json, os, random, sys, time
import torch.distributed as dist
from forgather_control.callback import Controller
from forgather_control.core import read_json
from forgather_control.core.records import encode

out, jobs = sys.argv[1], sys.argv[2]
rank, world = int(os.environ.pop("RANK")), int(os.environ.pop("WORLD_SIZE"))
calls = {"all_reduce": 0}
def counted(cls):  # dist.all_reduce calls ProcessGroup's; the agreement, its own ProcessGroupGloo's
    original = cls.allreduce
    def counting(self, *a, **k):
        calls["all_reduce"] += 1
        return original(self, *a, **k)
    cls.allreduce = counting
counted(dist.ProcessGroup)
counted(dist.ProcessGroupGloo)

ctl = Controller(job_id="late", jobs_dir=jobs, signals=(), check_interval=0.05, poll_interval=0.05)
ctl.start()                       # no RANK in the environment: every process guesses rank 0
guessed = (ctl.rank, ctl.world_size)
dist.init_process_group("gloo", rank=rank, world_size=world)
ctl.begin()                       # train begin: the real ranks, and the agreement
served = ctl.serves_http
dist.barrier()
ep = read_json(ctl.paths.endpoint)
owner_ok = ep is not None and (ep["pid"] == os.getpid()) == (rank == 0)
dist.barrier()

plan = {5: "save", 40: "eval", 90: "save", 150: "stop"}
rng = random.Random(rank)
actions = []
checked = []  # the step of every check (the trace grew in its ctl.step)
for step in range(1, 100000):
    time.sleep(rng.random() * 0.004)
    if rank == 0 and step in plan:
        ctl.ledger.submit(plan[step])
    seen = len(ctl.agreement_trace)
    act = ctl.step(step)
    if len(ctl.agreement_trace) > seen:
        checked.append(step)
    if act:
        actions.append([step, act.command.value])
    if act.save:
        open(f"{out}/ckpt-{step}", "w").close()
        ctl.checkpoint_saved(f"{out}/ckpt-{step}")
    if act.evaluate:
        ctl.evaluation_done({"m": 1.0})
    if act.stop:
        break
trace = [list(t) for t in ctl.agreement_trace]
ctl.close()
json.dump({"guessed": guessed, "served": served, "owner_ok": owner_ok, "actions": actions, "trace": trace, "checked": checked,
           "all_reduce": calls["all_reduce"], "final": step,
           "ledger": [encode(r) for r in ctl.ledger.recent(20)] if rank == 0 else None}, open(f"{out}/r{rank}.json", "w"))
dist.destroy_process_group()
"""


def test_late_init_same_actions_same_steps_one_collective_per_check(jobs_dir: Path, procs, tmp_path: Path) -> None:
    r0, r1 = rank_script(procs, tmp_path, jobs_dir, SCRIPT, name="agree")

    assert r0["guessed"] == r1["guessed"] == [0, 1]  # both served on a guess at first
    assert r0["served"] and not r1["served"] and r0["owner_ok"] and r1["owner_ok"]

    assert r0["actions"] == r1["actions"]
    assert [a[1] for a in r0["actions"]] == ["save_checkpoint", "evaluate", "save_checkpoint", "graceful_stop"]
    assert r0["final"] == r1["final"] == r0["actions"][-1][0]
    for (step, _), planned in zip(r0["actions"], (5, 40, 90, 150), strict=True):
        assert step >= planned  # applied at the next agreed check after it was queued

    assert r0["trace"] == r1["trace"]
    assert r0["all_reduce"] == len(r0["trace"]) and r1["all_reduce"] == len(r1["trace"])  # one per check
    assert r0["checked"] == r1["checked"] and all(a < b for a, b in itertools.pairwise(r0["checked"]))  # at most one check per step
    # each check starts at the step the one before agreed on, or at the step right after a
    # save or an evaluation (check_next_step: a stop asked during it applies at once), and
    # is resolved (its answer read, acted on, traced) the agreed lag later on every rank
    after_action = {step + 1 for step, _ in r0["actions"]}
    start, lag = FIELDS.index("next_check"), FIELDS.index("lag")
    for row, (was, now) in zip(r0["trace"], itertools.pairwise(r0["checked"]), strict=False):
        assert row[lag] >= 1 and (now - row[lag] == row[start] or now - row[lag] in after_action), (was, now, row)
    assert len(r0["trace"]) < r0["final"]  # not every step: the cadence adapts

    states = {e["command"]: e["state"] for e in r0["ledger"]}
    assert set(states.values()) == {"completed"}, r0["ledger"]
