"""The started-then-resolved check on two real gloo ranks (torchrun): a command queued
while a check is in flight is not part of it; it is proposed at the next check and
applied where that one resolves, at the same step on both ranks; a signal raised on
rank 1 while a check is in flight is carried by the next one. Each resolution is the
agreed lag after its start, and nothing is applied twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.torchrun import rank_script

from forgather_control.callback.agreement import FIELDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a real torchrun job on 2 cores shared with other test runs

SCRIPT = r"""
import json, os, sys, time
import torch.distributed as dist
from forgather_control.callback import Controller

out, jobs = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
ctl = Controller(job_id="inflight", jobs_dir=jobs, signals=(), check_interval=0.05, poll_interval=0.05)
ctl.start()
ctl.begin()
events, actions, starts = [], [], []
queued = raised = None
for step in range(1, 100000):
    time.sleep(0.003)
    before = ctl._inflight
    act = ctl.step(step)
    if ctl._inflight is not None and ctl._inflight is not before:
        starts.append(step)  # a check started at this step (also where the last one resolved: pipelined)
    if act:
        actions.append([step, act.command.value])
    if act.stop:
        break
    if rank == 0 and queued is None and len(starts) >= 3 and ctl._inflight is not None:
        entry, _ = ctl.ledger.submit("save")  # while the check started at starts[-1] is in flight
        queued = [step, entry.id, starts[-1]]
    if act.save:
        open(f"{out}/ckpt-{step}", "w").close()
        ctl.checkpoint_saved(f"{out}/ckpt-{step}")
    if rank == 1 and raised is None and actions and ctl._inflight is not None:
        ctl.raise_signal_flag()  # rank 1 only, while a check is in flight
        raised = [step, starts[-1]]
trace = [list(t) for t in ctl.agreement_trace]
ctl.close()
json.dump({"actions": actions, "starts": starts, "queued": queued, "raised": raised, "trace": trace}, open(f"{out}/r{rank}.json", "w"))
dist.destroy_process_group()
"""


def test_a_command_queued_while_a_check_is_in_flight_applies_at_the_next_one_on_every_rank(jobs_dir: Path, procs, tmp_path: Path) -> None:
    r0, r1 = rank_script(procs, tmp_path, jobs_dir, SCRIPT, name="inflight")
    assert r0["trace"] == r1["trace"] and r0["actions"] == r1["actions"] and r0["starts"] == r1["starts"]
    [(saved_at, save), (stopped_at, stop)] = r0["actions"]
    assert (save, stop) == ("save_checkpoint", "save_and_stop"), r0["actions"]

    queued_at, _, in_flight = r0["queued"]
    # not part of the check in flight when it was queued: proposed at the next start, and
    # applied where that check resolved (after the in-flight one resolved without it)
    next_start = min(s for s in r0["starts"] if s > queued_at)
    assert in_flight <= queued_at < next_start < saved_at, (r0["queued"], r0["starts"], saved_at)
    i = r0["starts"].index(next_start)  # trace[i] is the exchange started at starts[i]
    lag = r0["trace"][i - 1][FIELDS.index("lag")]  # the lag agreed before it started
    assert saved_at == next_start + lag, (saved_at, next_start, lag)

    raised_at, flying = r1["raised"]
    assert flying <= raised_at < stopped_at  # the signal of rank 1 alone stops both, later
    assert [c for c in (row[1] for row in r0["trace"]) if c] == [1]  # one command agreed: the save, once
