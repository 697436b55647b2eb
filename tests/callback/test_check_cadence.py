"""The check interval follows the checks' measured cost, on two real gloo ranks
(torchrun): each check carries the slowest rank's mean time in control a check (each
rank's over its recent checks, through MAX); rank 0 spaces the checks by it
(``schedule.interval_for``). Here rank 1's control is made 1 ms slower a check (its
exchange start sleeps): both ranks agree on that cost, and rank 0's interval (its
status's ``check_interval``) moves from FASTEST to at least ``interval_for(1 ms)``. The checks have a gloo group of their
own (not the job's), and the job's group still works when the Controller has closed.
With steps longer than the interval, the next check starts where the last resolved."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from support.torchrun import rank_script

from forgather_control.callback.agreement import FIELDS
from forgather_control.callback.schedule import FASTEST, SLOWEST, interval_for

SLOW = 0.001

SCRIPT = r"""
import json, sys, time
import torch
import torch.distributed as dist
from forgather_control.callback import Controller

out, jobs, slow = sys.argv[1], sys.argv[2], float(sys.argv[3])
dist.init_process_group("gloo")
rank = dist.get_rank()
ctl = Controller(job_id="cadence", jobs_dir=jobs, signals=(), poll_interval=0.05)  # no check_interval: it follows the cost
ctl.start()
ctl.begin()
first = ctl.status().check_interval
step = 0
while ctl.checks_agreed < 8:        # every rank counts the same agreed checks
    step += 1
    time.sleep(0.002)
    if step == 1 and rank == 1:
        start = ctl._agreement.start
        def slowed(*a, **k):
            time.sleep(slow)        # rank 1's control is slow: the checks' cost is its
            return start(*a, **k)
        ctl._agreement.start = slowed
    ctl.step(step)
trace = [list(t) for t in ctl.agreement_trace]
interval = ctl.status().check_interval
shared = ctl._agreement.group is dist.distributed_c10d._get_default_group()
ctl.close()
after = torch.tensor([rank + 1])
dist.all_reduce(after)              # the job's group is the job's: close left it working
json.dump({"trace": trace, "first": first, "interval": interval, "shared": shared, "after": int(after)}, open(f"{out}/r{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow  # a real torchrun job on 2 cores shared with other test runs
@pytest.mark.timeout(600)
def test_the_slowest_ranks_cost_travels_in_every_check_and_rank_0_spaces_the_checks_by_it(jobs_dir: Path, procs, tmp_path: Path) -> None:
    r0, r1 = rank_script(procs, tmp_path, jobs_dir, SCRIPT, str(SLOW), name="cadence")
    assert r0["trace"] == r1["trace"]  # the same costs agreed on both ranks
    costs = [row[FIELDS.index("cost")] for row in r0["trace"]]
    # rank 1's mean, through MAX (rank 0's own is far less), once its slowed checks outweigh its first
    assert all(c >= SLOW * 1e6 for c in costs[-3:]) and costs[-1] > costs[1], costs
    assert r0["first"] == FASTEST  # before any check was measured
    assert interval_for(SLOW) <= r0["interval"] <= SLOWEST, (r0["interval"], costs)  # spaced by rank 1's cost
    # the checks have a gloo group of their own, and close leaves the job's group working
    assert not r0["shared"] and not r1["shared"] and r0["after"] == r1["after"] == 3


PIPELINED = r"""
import json, sys, time
import torch.distributed as dist
from forgather_control.callback import Controller

out, jobs = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
ctl = Controller(job_id="pipelined", jobs_dir=jobs, signals=(), check_interval=0.0, poll_interval=0.05)  # steps longer than the interval
ctl.start()
ctl.begin()
starts, resolved, actions = [], [], []
queued = None
for step in range(1, 60):
    time.sleep(0.002)
    before, seen = ctl._inflight, ctl.checks_agreed
    act = ctl.step(step)
    if ctl.checks_agreed > seen:
        resolved.append(step)
    if ctl._inflight is not None and ctl._inflight is not before:
        starts.append(step)
    if act:
        actions.append([step, act.command.value])
        if act.save:
            ctl.checkpoint_saved(f"{out}/ckpt-{step}")
    if rank == 0 and step == 30:
        entry, _ = ctl.ledger.submit("save")
        queued = step
trace = [list(t) for t in ctl.agreement_trace]
ctl.close()
json.dump({"starts": starts, "resolved": resolved, "actions": actions, "queued": queued, "trace": trace}, open(f"{out}/r{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow  # a real torchrun job
@pytest.mark.timeout(600)
def test_with_steps_longer_than_the_interval_the_next_check_starts_where_the_last_resolved(jobs_dir: Path, procs, tmp_path: Path) -> None:
    r0, r1 = rank_script(procs, tmp_path, jobs_dir, PIPELINED, name="pipelined")
    assert r0["trace"] == r1["trace"] and r0["starts"] == r1["starts"] and r0["actions"] == r1["actions"]
    lag = FIELDS.index("lag")
    # once started, a check starts at every resolution step (lag steps apart, not lag + 1),
    # but where the resolution applied a command: then at the next step
    acted = {step for step, _ in r0["actions"]}
    later = [s for s in r0["starts"] if s > 5]
    assert later and all(s in r0["resolved"] or s - 1 in acted for s in later), (r0["starts"], r0["resolved"], acted)
    # ... so each check starts at the step the one before it resolved: none in between
    for a, b in itertools.pairwise(later):
        resolution = min(r for r in r0["resolved"] if r > a)
        assert b == resolution or (b == resolution + 1 and resolution in acted), (a, b, r0["starts"], r0["resolved"])
    # a save queued at step 30 is proposed by the check started at the next step at most, and
    # applied lag steps later (the lag of that moment: rank 0 raises it while a collective is
    # slow, on a loaded machine, and lowers it again, so the last one is no bound)
    [(saved, command)] = r0["actions"]
    most = max(row[lag] for row in r0["trace"])
    assert command == "save_checkpoint" and saved <= r0["queued"] + 1 + 2 * most, (r0["actions"], r0["queued"], [row[lag] for row in r0["trace"]])
